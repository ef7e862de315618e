"""create leads

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op
from migration_hooks import record

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        "leads",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.Text, nullable=False),
    )
    record(revision)


def downgrade():
    op.drop_table("leads")
