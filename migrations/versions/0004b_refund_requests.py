"""refund requests: operator refunds reserved before the provider call

Revision ID: 0004b_refund_requests
Revises: 0004a_users_audit
Create Date: 2026-12-01 12:00:00

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '0004b_refund_requests'
down_revision = '0004a_users_audit'
branch_labels = None
depends_on = None

BIGID = sa.BigInteger().with_variant(sa.Integer(), 'sqlite')


def upgrade():
    op.create_table('refund_requests',
    sa.Column('id', BIGID, nullable=False),
    sa.Column('order_id', BIGID, nullable=False),
    sa.Column('idempotency_key', sa.String(length=255), nullable=False),
    sa.Column('fingerprint', sa.String(length=64), nullable=False),
    sa.Column('amount_cents', sa.BigInteger(), nullable=False),
    sa.Column('currency', sa.String(length=3), nullable=False),
    sa.Column('reason', sa.String(length=500), nullable=False),
    sa.Column('provider', sa.String(length=16), nullable=False),
    sa.Column('provider_payment_id', sa.String(length=255), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('provider_refund_id', sa.String(length=255), nullable=True),
    sa.Column('error', sa.String(length=500), nullable=True),
    sa.Column('actor', sa.String(length=255), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.Column('updated_at', sa.DateTime(), nullable=False),
    sa.ForeignKeyConstraint(['order_id'], ['orders.id'], name=op.f('fk_refund_requests_order_id_orders')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_refund_requests')),
    sa.UniqueConstraint('idempotency_key', name=op.f('uq_refund_requests_idempotency_key'))
    )
    with op.batch_alter_table('refund_requests', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_refund_requests_order_id'), ['order_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_refund_requests_status'), ['status'], unique=False)


def downgrade():
    with op.batch_alter_table('refund_requests', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_refund_requests_status'))
        batch_op.drop_index(batch_op.f('ix_refund_requests_order_id'))
    op.drop_table('refund_requests')
