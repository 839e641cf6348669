"""The job stores' common code, in SQLAlchemy Core over the one `jobs` table of `tables.py`.

Both backends share everything that reads jobs (get, list, counts, the keys in flight), the
admission counts, the fair order of claims and the life of a job (claimed, requeued, ended,
deleted, expired). What differs is put behind small hooks: how a transaction is opened (a lock
and `BEGIN IMMEDIATE` on SQLite, 503 for an unreachable Postgres), where payloads live (files
beside the SQLite database, rows in `job_payloads`), and the leases only the shared store keeps
(`PostgresJobStore` overrides the claim, the callback sweep and the fences of its writes).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, fields
from typing import Any

from sqlalchemy import Engine, Select, and_, case, delete, func, insert, or_, select, update
from sqlalchemy.engine import Connection, Row

from server.storage.job import Job, JobLimits, check_limits, is_job_id
from server.storage.tables import jobs

JOB_COLUMNS = [jobs.c[field.name] for field in fields(Job)]
"""The columns a `Job` holds: what both stores read (the lease columns are the shared store's)."""
IN_FLIGHT = ("queued", "running")
ENDED = ("done", "failed")


def job_of(row: Row) -> Job:
    """The `Job` of a row of `JOB_COLUMNS`."""
    values = dict(row._mapping)
    values["callback_delivered"] = bool(values["callback_delivered"])
    return Job(**{field.name: values[field.name] for field in fields(Job)})


def fair_next() -> Select:
    """The next queued job in fairness: of the token with the fewest jobs running, then the one
    served least recently (never served first), then the oldest; so tokens take turns, whatever
    they queued."""
    others = jobs.alias("others")
    running = (
        select(func.count())
        .where(others.c.owner == jobs.c.owner, others.c.status == "running")
        .scalar_subquery()
    )
    served = (
        select(func.max(others.c.started)).where(others.c.owner == jobs.c.owner).scalar_subquery()
    )
    return (
        select(*JOB_COLUMNS)
        .where(jobs.c.status == "queued")
        .order_by(running, served.asc().nulls_first(), jobs.c.created)
        .limit(1)
    )


class SqlJobStore:
    """Jobs in `tables.jobs` on `engine`; subclasses say where payloads live and how a
    transaction opens (`SqliteJobStore`, `PostgresJobStore`)."""

    shares_state = False
    """See `server.storage.protocols`; the Postgres store sets it."""

    def __init__(self, engine: Engine, max_attempts: int = 3) -> None:
        self.engine = engine
        self.max_attempts = max_attempts

    # Hooks: transactions and payloads.

    @contextmanager
    def _reading(self) -> Iterator[Connection]:
        """A connection to read with."""
        with self.engine.connect() as connection:
            yield connection

    @contextmanager
    def _writing(self) -> Iterator[Connection]:
        """A transaction to write in, committed when the block ends."""
        with self.engine.begin() as connection:
            yield connection

    def _put_payload(self, connection: Connection, job_id: str, kind: str, data: bytes) -> None:
        """Keep a job's `input` or `result` (transaction open)."""
        raise NotImplementedError

    def _drop_payloads(self, connection: Connection, job_id: str, *kinds: str) -> None:
        """Drop a job's payloads of these kinds (transaction open)."""
        raise NotImplementedError

    def _read_payload(self, job_id: str, kind: str) -> bytes:
        """A job's payload; FileNotFoundError when it is gone."""
        raise NotImplementedError

    def _unclaimed(self, job_id: str) -> None:
        """The job left this process's hands (finished, failed, requeued)."""

    def _held(self, job_id: str) -> Any:
        """The condition that the job is running under this process's claim."""
        return and_(jobs.c.job_id == job_id, jobs.c.status == "running")

    def _lease_cleared(self) -> dict[str, Any]:
        """Values that drop a claim's lease when the job goes back to the queue."""
        return {}

    def _still_held(self, connection: Connection, job_id: str) -> bool:
        """Whether this process may still end the job (transaction open)."""
        return True

    def _ended(self, connection: Connection) -> dict[str, Any]:
        """Values written with a job's end besides its outcome (transaction open)."""
        return {}

    def _admit(self, connection: Connection, limits: JobLimits, job: Job) -> None:
        """JobRefused when `job`, its row written in this transaction, passes a limit."""
        self._check(connection, limits, job.owner, job.job_id, job.input_bytes)

    # The store.

    def close(self) -> None:
        """Nothing to close here: an engine given to the store belongs to its caller."""

    def ping(self) -> None:
        """Raise when the database cannot be read."""
        with self._reading() as connection:
            connection.execute(select(1))

    def add(self, job: Job, payload: bytes, limits: JobLimits | None = None) -> Job:
        """Keep the input and record the job as queued in one transaction; only then is it
        accepted. `limits` are checked in that transaction (under the store's lock), so racing
        submissions cannot pass them together (JobRefused)."""
        job.input_bytes = len(payload)
        try:
            with self._writing() as connection:
                connection.execute(insert(jobs).values(**asdict(job)))
                self._put_payload(connection, job.job_id, "input", payload)
                if limits is not None:
                    self._admit(connection, limits, job)
        except BaseException:
            self._forget_payloads(job.job_id)
            raise
        return job

    def _forget_payloads(self, job_id: str) -> None:
        """After a failed `add`: drop what the rolled-back transaction did not."""

    @staticmethod
    def _check(
        connection: Connection, limits: JobLimits, owner: str | None, job_id: str, adding: int
    ) -> None:
        """JobRefused when the job would pass a limit (the job's own row, written in this
        transaction, is left out of the counts)."""
        in_flight = stored = 0
        others = jobs.c.job_id != job_id
        if owner is not None:
            mine = and_(jobs.c.owner == owner, others)
            in_flight = connection.execute(
                select(func.count()).where(mine, jobs.c.status.in_(IN_FLIGHT))
            ).scalar_one()
            kept = case(
                (jobs.c.status == "done", func.coalesce(jobs.c.result_bytes, 0)),
                (jobs.c.status.in_(IN_FLIGHT), jobs.c.input_bytes),
                else_=0,
            )
            stored = connection.execute(
                select(func.coalesce(func.sum(kept), 0)).where(
                    mine, or_(jobs.c.expires.is_(None), jobs.c.expires > time.time())
                )
            ).scalar_one()
        queued = connection.execute(
            select(func.count()).where(jobs.c.status == "queued", others)
        ).scalar_one()
        check_limits(limits, owner, int(in_flight), int(queued), int(stored), adding)

    def get(self, job_id: str) -> Job | None:
        """The job, or None when unknown, deleted or expired."""
        if not is_job_id(job_id):
            return None
        with self._reading() as connection:
            row = connection.execute(select(*JOB_COLUMNS).where(jobs.c.job_id == job_id)).first()
        if row is None or row.status == "deleted":
            return None
        if row.expires is not None and row.expires <= time.time():
            return None
        return job_of(row)

    def list(self, owner: str | None = None, limit: int = 100) -> list[Job]:
        """The newest jobs first, of one owner when given."""
        query = (
            select(*JOB_COLUMNS)
            .where(jobs.c.status != "deleted")
            .order_by(jobs.c.created.desc())
            .limit(limit)
        )
        if owner is not None:
            query = query.where(jobs.c.owner == owner)
        with self._reading() as connection:
            return [job_of(row) for row in connection.execute(query)]

    def count(self, *statuses: str, owner: str | None = None) -> int:
        """How many jobs are in any of `statuses` (of one owner when given)."""
        query = select(func.count()).select_from(jobs).where(jobs.c.status.in_(statuses))
        if owner is not None:
            query = query.where(jobs.c.owner == owner)
        with self._reading() as connection:
            return int(connection.execute(query).scalar_one())

    def counts_by_status(self) -> dict[str, int]:
        """How many jobs are in each status (expired ones not yet deleted included)."""
        query = select(jobs.c.status, func.count()).group_by(jobs.c.status)
        with self._reading() as connection:
            return {status: int(n) for status, n in connection.execute(query)}

    def key_ids_in_flight(self) -> set[str]:
        """Keys that queued and running jobs will need (pinned against eviction)."""
        query = (
            select(jobs.c.key_id)
            .distinct()
            .where(jobs.c.status.in_(IN_FLIGHT), jobs.c.key_id.is_not(None))
        )
        with self._reading() as connection:
            return {row[0] for row in connection.execute(query)}

    def delete(self, job_id: str) -> bool:
        """Delete a finished job's payloads and hide the job; False when it is not finished.

        The row stays, marked deleted, until it expires: it still says when its token was last
        served, so deleting results cannot buy a token an earlier turn."""
        with self._writing() as connection:
            gone = connection.execute(
                update(jobs)
                .where(jobs.c.job_id == job_id, jobs.c.status.in_(ENDED))
                .values(status="deleted")
            ).rowcount
            if gone:
                self._drop_payloads(connection, job_id, "input", "result")
        return bool(gone)

    def _claim(self, connection: Connection, row: Row, **values: Any) -> Job:
        """Mark the job of `row` running under this claim (transaction open)."""
        started = time.time()
        connection.execute(
            update(jobs)
            .where(jobs.c.job_id == row.job_id)
            .values(status="running", started=started, attempts=jobs.c.attempts + 1, **values)
        )
        job = job_of(row)
        job.status, job.started, job.attempts = "running", started, row.attempts + 1
        return job

    def claim_next(self) -> Job | None:
        """Mark the next queued job in fairness (`fair_next`) running and return it; None when
        nothing waits."""
        with self._writing() as connection:
            row = connection.execute(fair_next()).first()
            return None if row is None else self._claim(connection, row)

    def renew(self, job_ids: list[str]) -> None:
        """No leases here: this server alone runs its jobs."""

    def retry(self, job_id: str) -> None:
        """Put a running job back in the queue, counting the attempt it used."""
        with self._writing() as connection:
            connection.execute(
                update(jobs)
                .where(self._held(job_id))
                .values(status="queued", started=None, **self._lease_cleared())
            )
        self._unclaimed(job_id)

    def release(self, job_id: str) -> None:
        """Put a running job back in the queue without counting the attempt (no worker free)."""
        with self._writing() as connection:
            connection.execute(
                update(jobs)
                .where(self._held(job_id))
                .values(
                    status="queued",
                    started=None,
                    attempts=jobs.c.attempts - 1,
                    **self._lease_cleared(),
                )
            )
        self._unclaimed(job_id)

    def read_input(self, job_id: str) -> bytes:
        """The job's input; FileNotFoundError when it is gone."""
        return self._read_payload(job_id, "input")

    def read_result(self, job_id: str) -> bytes | None:
        """The done job's result, or None once it expired."""
        try:
            return self._read_payload(job_id, "result")
        except FileNotFoundError:
            return None

    def _end_row(self, connection: Connection, job_id: str, ttl: float, **values: Any) -> None:
        """Mark the job ended, to expire `ttl` seconds from now, and drop its input."""
        finished = time.time()
        connection.execute(
            update(jobs)
            .where(jobs.c.job_id == job_id)
            .values(finished=finished, expires=finished + ttl, **values)
        )
        self._drop_payloads(connection, job_id, "input")

    def _end(self, job_id: str, ttl: float, result: bytes | None, **values: Any) -> bool:
        """End the job with `values` (and keep `result`) if this process may still; whether
        it did."""
        with self._writing() as connection:
            if not self._still_held(connection, job_id):
                return False
            if result is not None:
                self._put_payload(connection, job_id, "result", result)
            self._end_row(connection, job_id, ttl, **values, **self._ended(connection))
        self._unclaimed(job_id)
        return True

    def finish(
        self, job_id: str, result: bytes, media_type: str, fhe_seconds: float | None, ttl: float
    ) -> bool:
        """Keep the result and mark the job done, its input dropped, in one transaction; False
        when another replica took the job over (and answers for it)."""
        return self._end(
            job_id,
            ttl,
            result,
            status="done",
            result_bytes=len(result),
            result_type=media_type,
            fhe_seconds=fhe_seconds,
        )

    def fail(self, job_id: str, status: int, code: str, message: str, ttl: float) -> bool:
        """Mark the job failed with the error a synchronous call would have answered; False
        when another replica took the job over."""
        return self._end(
            job_id,
            ttl,
            None,
            status="failed",
            error_status=status,
            error_code=code,
            error=message,
        )

    def record_callback(
        self,
        job_id: str,
        delivered: bool,
        error: str | None,
        final: bool = False,
        hold_seconds: float = 0.0,
    ) -> None:
        """Count one callback attempt and its outcome (`final` and `hold_seconds` matter only
        to the shared store, whose replicas sweep for undelivered callbacks)."""
        with self._writing() as connection:
            connection.execute(
                update(jobs)
                .where(jobs.c.job_id == job_id)
                .values(
                    callback_attempts=jobs.c.callback_attempts + 1,
                    callback_delivered=delivered,
                    callback_error=error,
                )
            )

    def undelivered_callbacks(self, max_attempts: int) -> list[Job]:
        """Finished jobs whose callback has not gone through and has attempts left."""
        with self._reading() as connection:
            rows = connection.execute(
                select(*JOB_COLUMNS).where(
                    jobs.c.status.in_(ENDED),
                    jobs.c.callback_url.is_not(None),
                    jobs.c.callback_delivered.is_(False),
                    jobs.c.callback_attempts < max_attempts,
                )
            ).all()
        return [job_of(row) for row in rows]

    def expire(self, now: float | None = None) -> int:
        """Delete finished jobs past their expiry, with their payloads; returns how many."""
        now = time.time() if now is None else now
        past = and_(jobs.c.expires.is_not(None), jobs.c.expires <= now)
        with self._writing() as connection:
            expired = [row[0] for row in connection.execute(select(jobs.c.job_id).where(past))]
            for job_id in expired:
                self._drop_payloads(connection, job_id, "input", "result")
            connection.execute(delete(jobs).where(past))
        return len(expired)
