"""Indexes for fair job claims: each owner's jobs running, and when it was last served.

The claim orders queued jobs by their owner's running count and latest start; these keep both a
lookup per owner rather than a scan of its history.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-07
"""

from __future__ import annotations

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("jobs_by_owner_status", "jobs", ["owner", "status"])
    op.create_index("jobs_by_owner_started", "jobs", ["owner", "started"])


def downgrade() -> None:
    op.drop_index("jobs_by_owner_started", table_name="jobs")
    op.drop_index("jobs_by_owner_status", table_name="jobs")
