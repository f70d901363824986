"""Runbook runs: who ran which runbook with what, how it ended, where its notebook is

Revision ID: 0007_runbook_runs
Revises: 0006_erp_sync
Create Date: 2026-11-29 21:00:00

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '0007_runbook_runs'
down_revision = '0006_erp_sync'
branch_labels = None
depends_on = None


def upgrade():
    op.create_table('runbook_runs',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('runbook', sa.String(length=64), nullable=False),
    sa.Column('execute', sa.Boolean(), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('actor', sa.String(length=255), nullable=False),
    sa.Column('parameters', sa.Text(), nullable=False),
    sa.Column('summary', sa.Text(), nullable=True),
    sa.Column('output_path', sa.String(length=1024), nullable=True),
    sa.Column('html_path', sa.String(length=1024), nullable=True),
    sa.Column('error', sa.String(length=1000), nullable=True),
    sa.Column('started_at', sa.DateTime(), nullable=False),
    sa.Column('finished_at', sa.DateTime(), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_runbook_runs'))
    )
    with op.batch_alter_table('runbook_runs', schema=None) as batch_op:
        batch_op.create_index('ix_runbook_runs_runbook_started_at', ['runbook', 'started_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_runbook_runs_started_at'), ['started_at'], unique=False)


def downgrade():
    with op.batch_alter_table('runbook_runs', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_runbook_runs_started_at'))
        batch_op.drop_index('ix_runbook_runs_runbook_started_at')

    op.drop_table('runbook_runs')
