"""Asynchronous jobs kept on local disk: the `jobs` table in SQLite, each job's input and result
as files beside it.

A job's input is written and synced, and its row committed, before the API answers 202, so nothing
accepted is lost. After a restart, jobs that were queued or running are queued again; a job that
keeps being interrupted fails after `max_attempts`. Finished jobs are deleted once they expire.

The schema is `tables.jobs`, the same SQLAlchemy table the Postgres store reads, created here with
`metadata.create_all` rather than Alembic: this database is one server's private file, created by
that server on first start, and Alembic's revisions are written for Postgres (arrays, advisory
locks, `UPDATE ... FROM`). The store reads and writes only the columns of `Job`, so a database an
earlier version created (before the table gained the shared store's lease columns, which this
store leaves empty) opens as it is; a later change to `Job`'s columns needs a revision here too.

SQLite is opened in WAL mode with `synchronous=FULL` and a 5 s busy timeout, as before; within a
process one lock serializes the store's calls, and a write transaction opens with `BEGIN
IMMEDIATE`, so that a limit's count and the row it admits, or a claim's read and its update, are
one step for other processes on the same file too.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, event, select
from sqlalchemy.engine import Connection

from fhe.contract.atomic import write_atomic
from server.storage.sql_jobs import SqlJobStore
from server.storage.tables import jobs, metadata

BUSY_TIMEOUT_SECONDS = 5.0
"""How long a write waits for another connection's lock on the file before it errs."""
IMMEDIATE = "fhe_immediate"
"""The execution option that opens a connection's transaction with `BEGIN IMMEDIATE`."""


def _on_connect(dbapi_connection: Any, _record: Any) -> None:
    """WAL and full syncs on every connection; transactions begun by `_on_begin` alone."""
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.close()


def _on_begin(connection: Connection) -> None:
    """`BEGIN IMMEDIATE` (the write lock at once) for writes, a deferred `BEGIN` for reads."""
    immediate = connection.get_execution_options().get(IMMEDIATE, False)
    connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


class SqliteJobStore(SqlJobStore):
    """Jobs in `<root>/jobs.sqlite`, inputs and results in `<root>/<id>.input|.result`.

    One server owns them: its own restart queues its running jobs again (`requeue_interrupted`),
    so it needs no leases (`renew` does nothing).
    """

    def __init__(self, root: Path, max_attempts: int = 3) -> None:
        root.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            f"sqlite:///{root / 'jobs.sqlite'}",
            connect_args={"check_same_thread": False, "timeout": BUSY_TIMEOUT_SECONDS},
        )
        event.listen(engine, "connect", _on_connect)
        event.listen(engine, "begin", _on_begin)
        super().__init__(engine, max_attempts)
        self.root = root
        self._lock = threading.Lock()
        with self._writing() as connection:
            metadata.create_all(connection, tables=[jobs])
            for index in jobs.indexes:  # a database from before an index was added gets it
                index.create(connection, checkfirst=True)
        for partial in root.glob("*.partial"):
            partial.unlink(missing_ok=True)

    def close(self) -> None:
        """Close the database's connections."""
        with self._lock:
            self.engine.dispose()

    @contextmanager
    def _reading(self) -> Iterator[Connection]:
        with self._lock, self.engine.connect() as connection:
            yield connection

    @contextmanager
    def _writing(self) -> Iterator[Connection]:
        with self._lock, self.engine.connect() as connection:
            connection.execution_options(**{IMMEDIATE: True})
            with connection.begin():
                yield connection

    def input_path(self, job_id: str) -> Path:
        return self.root / f"{job_id}.input"

    def result_path(self, job_id: str) -> Path:
        return self.root / f"{job_id}.result"

    def _path(self, job_id: str, kind: str) -> Path:
        return self.input_path(job_id) if kind == "input" else self.result_path(job_id)

    def _put_payload(self, connection: Connection, job_id: str, kind: str, data: bytes) -> None:
        write_atomic(self._path(job_id, kind), data)

    def _drop_payloads(self, connection: Connection, job_id: str, *kinds: str) -> None:
        for kind in kinds:
            self._path(job_id, kind).unlink(missing_ok=True)

    def _forget_payloads(self, job_id: str) -> None:
        self.input_path(job_id).unlink(missing_ok=True)

    def _read_payload(self, job_id: str, kind: str) -> bytes:
        return self._path(job_id, kind).read_bytes()

    def requeue_interrupted(self, ttl: float) -> int:
        """After a restart: running jobs go back to the queue, or fail past `max_attempts`."""
        with self._reading() as connection:
            rows = connection.execute(
                select(jobs.c.job_id, jobs.c.attempts).where(jobs.c.status == "running")
            ).all()
        for job_id, attempts in rows:
            if attempts >= self.max_attempts:
                self.fail(
                    job_id,
                    500,
                    "interrupted",
                    f"the server stopped while running this job {attempts} times",
                    ttl,
                )
            else:
                self.retry(job_id)
        return len(rows)
