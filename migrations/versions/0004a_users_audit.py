"""users, API tokens, the audit trail (append-only, monthly partitions on PostgreSQL),
its archive register, and the stock adjustment ledger

Revision ID: 0004a_users_audit
Revises: 0003_money_safety
Create Date: 2026-12-01 09:00:00

"""
from datetime import datetime, timezone

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '0004a_users_audit'
down_revision = '0003_money_safety'
branch_labels = None
depends_on = None

BIGID = sa.BigInteger().with_variant(sa.Integer(), 'sqlite')
# Partitions made here; the beat task `audit.create_partitions` keeps more ready.
PARTITIONS_AHEAD = 3

AUDIT_COLUMNS = """
    id BIGINT NOT NULL,
    created_at {timestamp} NOT NULL,
    action VARCHAR(64) NOT NULL,
    entity_type VARCHAR(64) NOT NULL,
    entity_id VARCHAR(64) NOT NULL,
    user_id BIGINT,
    actor VARCHAR(255) NOT NULL,
    token_prefix VARCHAR(16),
    ip_address VARCHAR(45),
    user_agent VARCHAR(512),
    request_id VARCHAR(64),
    reason TEXT,
    metadata TEXT NOT NULL,
    prev_hash VARCHAR(64) NOT NULL,
    hash VARCHAR(64) NOT NULL,
    CONSTRAINT pk_audit_logs PRIMARY KEY (id, created_at)
"""


def _months(count):
    now = datetime.now(timezone.utc)
    index = now.year * 12 + now.month - 1
    for offset in range(count + 1):
        year, month = divmod(index + offset, 12)
        nxt_year, nxt_month = divmod(index + offset + 1, 12)
        yield (f"audit_logs_y{year:04d}m{month + 1:02d}", f"{year:04d}-{month + 1:02d}-01",
               f"{nxt_year:04d}-{nxt_month + 1:02d}-01")


def upgrade():
    op.create_table('users',
    sa.Column('id', BIGID, nullable=False),
    sa.Column('email', sa.String(length=255), nullable=False),
    sa.Column('name', sa.String(length=255), nullable=False),
    sa.Column('role', sa.String(length=16), nullable=False),
    sa.Column('active', sa.Boolean(), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.Column('deactivated_at', sa.DateTime(), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_users')),
    sa.UniqueConstraint('email', name=op.f('uq_users_email'))
    )
    op.create_table('api_tokens',
    sa.Column('id', BIGID, nullable=False),
    sa.Column('user_id', BIGID, nullable=False),
    sa.Column('name', sa.String(length=100), nullable=False),
    sa.Column('prefix', sa.String(length=16), nullable=False),
    sa.Column('token_hash', sa.String(length=64), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.Column('expires_at', sa.DateTime(), nullable=True),
    sa.Column('last_used_at', sa.DateTime(), nullable=True),
    sa.Column('revoked_at', sa.DateTime(), nullable=True),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], name=op.f('fk_api_tokens_user_id_users')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_api_tokens')),
    sa.UniqueConstraint('token_hash', name=op.f('uq_api_tokens_token_hash'))
    )
    with op.batch_alter_table('api_tokens', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_api_tokens_prefix'), ['prefix'], unique=False)
        batch_op.create_index(batch_op.f('ix_api_tokens_user_id'), ['user_id'], unique=False)

    op.create_table('stock_adjustments',
    sa.Column('id', BIGID, nullable=False),
    sa.Column('product_id', BIGID, nullable=False),
    sa.Column('delta', sa.Integer(), nullable=False),
    sa.Column('stock_before', sa.Integer(), nullable=False),
    sa.Column('stock_after', sa.Integer(), nullable=False),
    sa.Column('reason', sa.String(length=500), nullable=False),
    sa.Column('actor', sa.String(length=255), nullable=False),
    sa.Column('idempotency_key', sa.String(length=255), nullable=True),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.ForeignKeyConstraint(['product_id'], ['products.id'], name=op.f('fk_stock_adjustments_product_id_products')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_stock_adjustments')),
    sa.UniqueConstraint('idempotency_key', name=op.f('uq_stock_adjustments_idempotency_key'))
    )
    with op.batch_alter_table('stock_adjustments', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_stock_adjustments_product_id'), ['product_id'], unique=False)

    op.create_table('audit_archives',
    sa.Column('id', BIGID, nullable=False),
    sa.Column('month', sa.String(length=7), nullable=False),
    sa.Column('path', sa.String(length=1024), nullable=False),
    sa.Column('file_sha256', sa.String(length=64), nullable=False),
    sa.Column('row_count', sa.Integer(), nullable=False),
    sa.Column('first_id', sa.BigInteger(), nullable=True),
    sa.Column('last_id', sa.BigInteger(), nullable=True),
    sa.Column('first_prev_hash', sa.String(length=64), nullable=True),
    sa.Column('last_hash', sa.String(length=64), nullable=True),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_audit_archives')),
    sa.UniqueConstraint('month', name=op.f('uq_audit_archives_month'))
    )

    if op.get_bind().dialect.name == 'postgresql':
        _upgrade_audit_postgresql()
    else:
        _upgrade_audit_sqlite()
    # Plain CREATE INDEX (no batch): a batch rebuild on SQLite would drop the triggers.
    op.create_index('ix_audit_logs_entity_type_entity_id', 'audit_logs', ['entity_type', 'entity_id'])
    op.create_index('ix_audit_logs_created_at', 'audit_logs', ['created_at'])
    op.create_index('ix_audit_logs_actor', 'audit_logs', ['actor'])


def _upgrade_audit_postgresql():
    columns = AUDIT_COLUMNS.format(timestamp="TIMESTAMP WITHOUT TIME ZONE")
    op.execute(f"CREATE TABLE audit_logs ({columns}) PARTITION BY RANGE (created_at)")
    op.execute("""
        CREATE FUNCTION audit_logs_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            RAISE EXCEPTION '% is append-only: % refused', TG_TABLE_NAME, TG_OP
                USING ERRCODE = 'insufficient_privilege';
        END $$""")
    for table in ('audit_logs', 'audit_archives'):
        op.execute(f"CREATE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE ON {table}"
                   " FOR EACH ROW EXECUTE FUNCTION audit_logs_refuse_change()")
        op.execute(f"CREATE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON {table}"
                   " FOR EACH STATEMENT EXECUTE FUNCTION audit_logs_refuse_change()")
    for name, start, end in _months(PARTITIONS_AHEAD):
        op.execute(f"CREATE TABLE {name} PARTITION OF audit_logs"
                   f" FOR VALUES FROM ('{start}') TO ('{end}')")
        op.execute(f"CREATE TRIGGER audit_logs_no_truncate BEFORE TRUNCATE ON {name}"
                   " FOR EACH STATEMENT EXECUTE FUNCTION audit_logs_refuse_change()")


def _upgrade_audit_sqlite():
    op.execute(f"CREATE TABLE audit_logs ({AUDIT_COLUMNS.format(timestamp='DATETIME')})")
    for table in ('audit_logs', 'audit_archives'):
        for operation in ('UPDATE', 'DELETE'):
            op.execute(f"CREATE TRIGGER {table}_no_{operation.lower()} BEFORE {operation} ON {table}"
                       f" BEGIN SELECT RAISE(ABORT, '{table} is append-only: {operation} refused'); END")


def downgrade():
    # Dropping the tables drops their partitions and triggers too.
    op.drop_table('audit_logs')
    op.drop_table('audit_archives')
    if op.get_bind().dialect.name == 'postgresql':
        op.execute("DROP FUNCTION IF EXISTS audit_logs_refuse_change()")
    with op.batch_alter_table('stock_adjustments', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_stock_adjustments_product_id'))
    op.drop_table('stock_adjustments')
    with op.batch_alter_table('api_tokens', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_api_tokens_user_id'))
        batch_op.drop_index(batch_op.f('ix_api_tokens_prefix'))
    op.drop_table('api_tokens')
    op.drop_table('users')
