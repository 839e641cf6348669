"""The stores' tables in SQLAlchemy Core: the one schema of jobs, read and written by both job
stores, and the shared database's job payloads and keys (owners, bytes in chunks).

Postgres: Alembic's revisions in `migrations/` create these (a revision is frozen history, so it
spells its own columns; tests/test_store_contract.py checks that the newest revision and this
module agree). SQLite (the embedded job store): `jobs` is created from this metadata; see
`server.storage.jobs`. The lease columns are the Postgres store's; the embedded one leaves them
empty.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    false,
)
from sqlalchemy.dialects.postgresql import ARRAY

metadata = MetaData()

jobs = Table(
    "jobs",
    metadata,
    Column("job_id", String(32), primary_key=True),
    Column("model", Text, nullable=False),
    Column("kind", Text, nullable=False),
    Column("status", Text, nullable=False),
    Column("created", Float, nullable=False),
    Column("base_url", Text, nullable=False),
    Column("owner", Text),
    Column("key_id", String(64)),
    Column("client_spec", Text),
    Column("callback_url", Text),
    Column("started", Float),
    Column("finished", Float),
    Column("expires", Float),
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("input_bytes", Integer, nullable=False, server_default="0"),
    Column("result_bytes", Integer),
    Column("result_type", Text),
    Column("fhe_seconds", Float),
    Column("error_status", Integer),
    Column("error_code", Text),
    Column("error", Text),
    Column("callback_attempts", Integer, nullable=False, server_default="0"),
    Column("callback_delivered", Boolean, nullable=False, server_default=false()),
    Column("callback_error", Text),
    Column("lease_holder", Text),
    Column("lease_until", Float),
    Column("callback_lease_until", Float),
    Index("jobs_by_status", "status", "created"),
    Index("jobs_by_owner", "owner", "created"),
    Index("jobs_by_owner_status", "owner", "status"),
    Index("jobs_by_owner_started", "owner", "started"),
    Index("jobs_by_expiry", "expires"),
)

job_payloads = Table(
    "job_payloads",
    metadata,
    Column("job_id", String(32), ForeignKey("jobs.job_id", ondelete="CASCADE"), primary_key=True),
    Column("kind", String(8), primary_key=True),
    Column("data", LargeBinary, nullable=False),
)

keys = Table(
    "keys",
    metadata,
    Column("key_id", String(64), primary_key=True),
    Column("size", BigInteger, nullable=False),
    Column("created", Float, nullable=False),
    Column("last_used", Float, nullable=False),
    Column("checked_specs", ARRAY(Text), nullable=False, server_default="{}"),
    Index("keys_by_last_use", "last_used"),
)

key_owners = Table(
    "key_owners",
    metadata,
    Column("key_id", String(64), ForeignKey("keys.key_id", ondelete="CASCADE"), primary_key=True),
    Column("owner", Text, primary_key=True),
    Column("created", Float),
    Column("last_used", Float),
    Index("key_owners_by_owner", "owner"),
)

key_chunks = Table(
    "key_chunks",
    metadata,
    Column("key_id", String(64), ForeignKey("keys.key_id", ondelete="CASCADE"), primary_key=True),
    Column("seq", Integer, primary_key=True),
    Column("data", LargeBinary, nullable=False),
)
