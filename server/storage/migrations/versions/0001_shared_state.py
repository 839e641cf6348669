"""Shared state: jobs with leases and their payloads, evaluation keys with owners and chunks.

Revision ID: 0001
Revises:
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import ARRAY

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "jobs",
        sa.Column("job_id", sa.String(32), primary_key=True),
        sa.Column("model", sa.Text, nullable=False),
        sa.Column("kind", sa.Text, nullable=False),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("created", sa.Float, nullable=False),
        sa.Column("base_url", sa.Text, nullable=False),
        sa.Column("owner", sa.Text),
        sa.Column("key_id", sa.String(64)),
        sa.Column("client_spec", sa.Text),
        sa.Column("callback_url", sa.Text),
        sa.Column("started", sa.Float),
        sa.Column("finished", sa.Float),
        sa.Column("expires", sa.Float),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("input_bytes", sa.Integer, nullable=False, server_default="0"),
        sa.Column("result_bytes", sa.Integer),
        sa.Column("result_type", sa.Text),
        sa.Column("fhe_seconds", sa.Float),
        sa.Column("error_status", sa.Integer),
        sa.Column("error_code", sa.Text),
        sa.Column("error", sa.Text),
        sa.Column("callback_attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("callback_delivered", sa.Boolean, nullable=False, server_default="false"),
        sa.Column("callback_error", sa.Text),
        sa.Column("lease_holder", sa.Text),
        sa.Column("lease_until", sa.Float),
        sa.Column("callback_lease_until", sa.Float),
    )
    op.create_index("jobs_by_status", "jobs", ["status", "created"])
    op.create_index("jobs_by_owner", "jobs", ["owner", "created"])
    op.create_index("jobs_by_expiry", "jobs", ["expires"])
    op.create_table(
        "job_payloads",
        sa.Column(
            "job_id",
            sa.String(32),
            sa.ForeignKey("jobs.job_id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("kind", sa.String(8), primary_key=True),
        sa.Column("data", sa.LargeBinary, nullable=False),
    )
    op.create_table(
        "keys",
        sa.Column("key_id", sa.String(64), primary_key=True),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("created", sa.Float, nullable=False),
        sa.Column("last_used", sa.Float, nullable=False),
        sa.Column("checked_specs", ARRAY(sa.Text), nullable=False, server_default="{}"),
    )
    op.create_index("keys_by_last_use", "keys", ["last_used"])
    op.create_table(
        "key_owners",
        sa.Column(
            "key_id",
            sa.String(64),
            sa.ForeignKey("keys.key_id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("owner", sa.Text, primary_key=True),
    )
    op.create_index("key_owners_by_owner", "key_owners", ["owner"])
    op.create_table(
        "key_chunks",
        sa.Column(
            "key_id",
            sa.String(64),
            sa.ForeignKey("keys.key_id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("seq", sa.Integer, primary_key=True),
        sa.Column("data", sa.LargeBinary, nullable=False),
    )
    # Key bytes are already compressed by Concrete: keep TOAST from trying again.
    op.execute("ALTER TABLE key_chunks ALTER COLUMN data SET STORAGE EXTERNAL")


def downgrade() -> None:
    for table in ("key_chunks", "key_owners", "keys", "job_payloads", "jobs"):
        op.drop_table(table)
