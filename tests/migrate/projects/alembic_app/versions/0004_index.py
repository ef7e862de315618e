"""index calls.sid concurrently (outside a transaction)

Revision ID: 0004
Revises: 0003
"""

from alembic import op
from migration_hooks import record

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade():
    with op.get_context().autocommit_block():
        op.execute("CREATE INDEX CONCURRENTLY IF NOT EXISTS calls_sid ON calls (sid)")
    record(revision)


def downgrade():
    op.drop_index("calls_sid", table_name="calls")
