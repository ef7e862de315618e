"""add leads.email

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op
from migration_hooks import record

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade():
    op.add_column("leads", sa.Column("email", sa.Text))
    op.execute("INSERT INTO leads (name, email) VALUES ('seed', 'seed@example.com')")
    record(revision)


def downgrade():
    op.drop_column("leads", "email")
