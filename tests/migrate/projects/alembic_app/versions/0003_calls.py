"""create calls

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op
from migration_hooks import record

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        "calls",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("lead_id", sa.Integer, sa.ForeignKey("leads.id"), nullable=False),
        sa.Column("sid", sa.Text, nullable=False),
    )
    op.execute("INSERT INTO calls (lead_id, sid) SELECT id, 'CA' || id FROM leads")
    record(revision)


def downgrade():
    op.drop_table("calls")
