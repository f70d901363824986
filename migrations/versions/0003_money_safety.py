"""money safety: amounts, order sums, refund and notification status, attempts, transmissions

64-bit amounts, running order sums, refund and notification status, attempt limits,
payload redaction, the PayPal transmission log.

Revision ID: 0003_money_safety
Revises: 0002
Create Date: 2026-11-29 17:00:00

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '0003_money_safety'
down_revision = '0002'
branch_labels = None
depends_on = None

COUNTED_PAYMENTS = "('succeeded', 'underpaid', 'disputed')"


def upgrade():
    with op.batch_alter_table('orders', schema=None) as batch_op:
        batch_op.alter_column('total_cents', existing_type=sa.Integer(), type_=sa.BigInteger(),
                              existing_nullable=False)
        batch_op.add_column(sa.Column('paid_cents', sa.BigInteger(), server_default='0',
                                      nullable=False))
        batch_op.add_column(sa.Column('refunded_cents', sa.BigInteger(), server_default='0',
                                      nullable=False))

    with op.batch_alter_table('payments', schema=None) as batch_op:
        batch_op.alter_column('amount_cents', existing_type=sa.Integer(), type_=sa.BigInteger(),
                              existing_nullable=False)
        batch_op.alter_column('status', existing_type=sa.String(length=16),
                              type_=sa.String(length=24), existing_nullable=False)

    with op.batch_alter_table('refunds', schema=None) as batch_op:
        batch_op.alter_column('amount_cents', existing_type=sa.Integer(), type_=sa.BigInteger(),
                              existing_nullable=False)
        batch_op.add_column(sa.Column('status', sa.String(length=24), server_default='succeeded',
                                      nullable=False))
        batch_op.add_column(sa.Column('updated_at', sa.DateTime(), nullable=True))
        batch_op.create_index(batch_op.f('ix_refunds_provider_payment_id'),
                              ['provider_payment_id'], unique=False)

    with op.batch_alter_table('notifications', schema=None) as batch_op:
        # Rows written before this revision were committed after their send: sent.
        batch_op.add_column(sa.Column('status', sa.String(length=16), server_default='sent',
                                      nullable=False))
        batch_op.add_column(sa.Column('attempts', sa.Integer(), server_default='0',
                                      nullable=False))
        batch_op.add_column(sa.Column('claimed_until', sa.DateTime(), nullable=True))
        batch_op.add_column(sa.Column('sent_at', sa.DateTime(), nullable=True))
        batch_op.add_column(sa.Column('last_error', sa.String(length=255), nullable=True))

    with op.batch_alter_table('webhook_events', schema=None) as batch_op:
        batch_op.add_column(sa.Column('attempt_limit', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('redacted_at', sa.DateTime(), nullable=True))
        batch_op.create_index('ix_webhook_events_processed_at', ['processed_at'], unique=False)

    op.create_table('paypal_transmissions',
    sa.Column('transmission_id', sa.String(length=255), nullable=False),
    sa.Column('body_sha256', sa.String(length=64), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.PrimaryKeyConstraint('transmission_id', name=op.f('pk_paypal_transmissions'))
    )

    # The running sums start from the rows already recorded.
    op.execute(
        "UPDATE orders SET paid_cents = COALESCE((SELECT sum(p.amount_cents) FROM payments p"
        " WHERE p.order_id = orders.id AND p.currency = orders.currency"
        f" AND p.status IN {COUNTED_PAYMENTS}), 0),"
        " refunded_cents = COALESCE((SELECT sum(r.amount_cents) FROM refunds r"
        " WHERE r.order_id = orders.id AND r.currency = orders.currency"
        " AND r.status = 'succeeded'), 0)"
    )


def downgrade():
    op.drop_table('paypal_transmissions')
    with op.batch_alter_table('webhook_events', schema=None) as batch_op:
        batch_op.drop_index('ix_webhook_events_processed_at')
        batch_op.drop_column('redacted_at')
        batch_op.drop_column('attempt_limit')

    with op.batch_alter_table('notifications', schema=None) as batch_op:
        batch_op.drop_column('last_error')
        batch_op.drop_column('sent_at')
        batch_op.drop_column('claimed_until')
        batch_op.drop_column('attempts')
        batch_op.drop_column('status')

    with op.batch_alter_table('refunds', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_refunds_provider_payment_id'))
        batch_op.drop_column('updated_at')
        batch_op.drop_column('status')
        batch_op.alter_column('amount_cents', existing_type=sa.BigInteger(), type_=sa.Integer(),
                              existing_nullable=False)

    with op.batch_alter_table('payments', schema=None) as batch_op:
        batch_op.alter_column('status', existing_type=sa.String(length=24),
                              type_=sa.String(length=16), existing_nullable=False)
        batch_op.alter_column('amount_cents', existing_type=sa.BigInteger(), type_=sa.Integer(),
                              existing_nullable=False)

    with op.batch_alter_table('orders', schema=None) as batch_op:
        batch_op.drop_column('refunded_cents')
        batch_op.drop_column('paid_cents')
        batch_op.alter_column('total_cents', existing_type=sa.BigInteger(), type_=sa.Integer(),
                              existing_nullable=False)
