"""The one place that picks the stores' backend: the shared database when one is configured,
else SQLite and files in the data directory (for the API's stores and the workers' key reader)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, NamedTuple

from sqlalchemy import Engine

from server.errors import ConfigurationError
from server.storage.database import engine_for, migrate
from server.storage.jobs import SqliteJobStore
from server.storage.keys import FileKeyStore
from server.storage.postgres_jobs import PostgresJobStore
from server.storage.postgres_keys import PostgresKeyReader, PostgresKeyStore
from server.storage.protocols import JobStore, KeyReader, KeyStore

if TYPE_CHECKING:
    from server.settings import ServerSettings

log = logging.getLogger("fhe_server")


class Stores(NamedTuple):
    """The job and key stores, and the shared database's engine to dispose (None embedded)."""

    jobs: JobStore
    keys: KeyStore
    engine: Engine | None


def open_stores(settings: ServerSettings) -> Stores:
    """The job and key stores: in the shared database when one is configured (migrated first,
    under its lock), else SQLite and files in the data directory."""
    url = settings.database()
    if url is None:
        job_store = SqliteJobStore(settings.data_dir / "jobs", settings.job_max_attempts)
        key_store = FileKeyStore(
            settings.data_dir / "keys",
            settings.keystore_max_bytes,
            pinned_by_jobs=job_store.key_ids_in_flight,
            max_receiving_bytes=settings.max_receiving_key_bytes,
        )
        return Stores(job_store, key_store, None)
    if not settings.callback_signing_key.get_secret_value():
        raise ConfigurationError(
            "with FHE_SERVER_DATABASE_URL, set FHE_SERVER_CALLBACK_SIGNING_KEY to the same secret "
            "on every replica, so that each signs callbacks as the secret its clients hold"
        )
    engine = engine_for(url)
    migrate(engine)
    shared_jobs = PostgresJobStore(
        engine, settings.replica_name, settings.job_max_attempts, settings.job_lease_seconds
    )
    shared_keys = PostgresKeyStore(
        engine,
        settings.data_dir / "uploads",
        settings.keystore_max_bytes,
        max_receiving_bytes=settings.max_receiving_key_bytes,
    )
    log.warning("shared state in the database as replica %s", settings.replica_name)
    return Stores(shared_jobs, shared_keys, engine)


def key_reader(database_url: str | None) -> KeyReader | None:
    """A worker process's reader of the stored keys: the shared database's when one is
    configured, else None (the embedded store's keys reach workers as files, by path or through
    the broker)."""
    return None if database_url is None else PostgresKeyReader(database_url)
