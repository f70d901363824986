"""the audit chain-head witness: one row with the id and hash of the newest audit row,
which only moves forward, so rows deleted from the end of the chain show

Revision ID: 0008_audit_chain_head
Revises: 0007_runbook_runs
Create Date: 2026-12-02 09:00:00

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '0008_audit_chain_head'
down_revision = '0007_runbook_runs'
branch_labels = None
depends_on = None

GENESIS_HASH = '0' * 64
REFUSED = 'audit_chain_head only moves forward'


def upgrade():
    op.create_table('audit_chain_head',
    sa.Column('id', sa.Integer(), autoincrement=False, nullable=False),
    sa.Column('last_id', sa.BigInteger(), nullable=False),
    sa.Column('last_hash', sa.String(length=64), nullable=False),
    sa.Column('last_created_at', sa.DateTime(), nullable=True),
    sa.CheckConstraint('id = 1', name=op.f('ck_audit_chain_head_one_row')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_audit_chain_head'))
    )
    # Start from the chain as it stands: its newest row, else the newest archive's end.
    op.execute(f"""
        INSERT INTO audit_chain_head (id, last_id, last_hash, last_created_at)
        SELECT 1, last_id, last_hash, last_created_at FROM (
            SELECT id AS last_id, hash AS last_hash, created_at AS last_created_at, 1 AS pick
              FROM audit_logs WHERE id = (SELECT max(id) FROM audit_logs)
            UNION ALL
            SELECT last_id, last_hash, NULL, 2 FROM audit_archives
             WHERE last_id = (SELECT max(last_id) FROM audit_archives)
            UNION ALL
            SELECT 0, '{GENESIS_HASH}', NULL, 3
        ) AS candidates ORDER BY pick LIMIT 1""")
    if op.get_bind().dialect.name == 'postgresql':
        op.execute(f"""
            CREATE FUNCTION audit_chain_head_forward_only() RETURNS trigger
            LANGUAGE plpgsql AS $$
            BEGIN
                -- Nested: NEW and OLD are not set for the statement-level TRUNCATE.
                IF TG_OP = 'UPDATE' THEN
                    IF NEW.id = OLD.id AND NEW.last_id > OLD.last_id THEN
                        RETURN NEW;
                    END IF;
                END IF;
                RAISE EXCEPTION '{REFUSED}: % refused', TG_OP
                    USING ERRCODE = 'insufficient_privilege';
            END $$""")
        op.execute("CREATE TRIGGER audit_chain_head_forward_only BEFORE UPDATE OR DELETE"
                   " ON audit_chain_head FOR EACH ROW"
                   " EXECUTE FUNCTION audit_chain_head_forward_only()")
        op.execute("CREATE TRIGGER audit_chain_head_no_truncate BEFORE TRUNCATE"
                   " ON audit_chain_head FOR EACH STATEMENT"
                   " EXECUTE FUNCTION audit_chain_head_forward_only()")
    else:
        op.execute("CREATE TRIGGER audit_chain_head_no_delete BEFORE DELETE ON audit_chain_head"
                   f" BEGIN SELECT RAISE(ABORT, '{REFUSED}: DELETE refused'); END")
        op.execute("CREATE TRIGGER audit_chain_head_no_rewind BEFORE UPDATE ON audit_chain_head"
                   " WHEN NEW.id != OLD.id OR NEW.last_id <= OLD.last_id"
                   f" BEGIN SELECT RAISE(ABORT, '{REFUSED}: UPDATE refused'); END")


def downgrade():
    # Dropping the table drops its triggers too.
    op.drop_table('audit_chain_head')
    if op.get_bind().dialect.name == 'postgresql':
        op.execute("DROP FUNCTION IF EXISTS audit_chain_head_forward_only()")
