"""Per-owner key records: when each owner uploaded a key and last used it.

Key bytes stay shared (content-addressed); an owner sees only its own times, and one owner's use
never moves another's. Existing owners get the key's own times.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("key_owners", sa.Column("created", sa.Float))
    op.add_column("key_owners", sa.Column("last_used", sa.Float))
    op.execute(
        "UPDATE key_owners SET created = keys.created, last_used = keys.created "
        "FROM keys WHERE keys.key_id = key_owners.key_id"
    )


def downgrade() -> None:
    op.drop_column("key_owners", "last_used")
    op.drop_column("key_owners", "created")
