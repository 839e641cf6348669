"""Jobs in the shared database, so that any replica answers for any job and runs any queued one.

A replica claims the next queued job in fairness with `FOR UPDATE SKIP LOCKED` (two replicas
never claim the same row) and holds it under a lease it renews while the run goes on. A job
whose replica died is claimed again by another once its lease has passed, and runs once more at
most per lost lease, up to `max_attempts` runs. Only the claim that holds the lease (this
replica's name and the attempt it started) may finish, fail or requeue a job, so a run that lost
its lease cannot overwrite or undo the one that took the job over. Lease times are the
database's clock.

A finished job's callback is leased too, from the moment the job ends, to the replica that ends
it; the others sweep up callbacks whose lease passed (their replica died before delivering).

The job's input and result live in `job_payloads` beside the row and are committed with it.
These are the overrides of `SqlJobStore` (sql_jobs.py), whose code the embedded store shares.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Engine, and_, delete, func, insert, or_, select, text, update
from sqlalchemy.engine import Connection

from server.storage.database import JOB_LOCK, UNREACHABLE, unavailable
from server.storage.job import Job, JobLimits
from server.storage.sql_jobs import ENDED, JOB_COLUMNS, SqlJobStore, fair_next, job_of
from server.storage.tables import job_payloads, jobs

log = logging.getLogger("fhe_server.database")

ADMISSION_WAIT = "10s"
"""Longest wait for the admission lock; past it the database errs and the caller gets 503."""
NEVER = 1e18
"""A callback lease that no sweep reaches: its deliveries are over."""


def _now(connection: Connection) -> float:
    """The database's clock, in Unix seconds."""
    return float(connection.execute(select(func.extract("epoch", func.now()))).scalar_one())


class PostgresJobStore(SqlJobStore):
    """The job store of many replicas: `SqlJobStore` with payload rows, leases and fences."""

    shares_state = True

    def __init__(
        self,
        engine: Engine,
        holder: str,
        max_attempts: int = 3,
        lease_seconds: float = 60.0,
        ttl_seconds: float = 86400.0,
    ) -> None:
        super().__init__(engine, max_attempts)
        self.holder = holder
        self.lease_seconds = lease_seconds
        self.ttl_seconds = ttl_seconds
        self._claims: dict[str, int] = {}
        """The attempt each job this replica claimed is on: the fence of its later writes."""

    @contextmanager
    def _reading(self) -> Iterator[Connection]:
        """A connection; an unreachable database becomes 503 (`database.unavailable`)."""
        try:
            with self.engine.connect() as connection:
                yield connection
        except UNREACHABLE as error:
            log.warning("database unreachable: %s", error)
            raise unavailable() from None

    @contextmanager
    def _writing(self) -> Iterator[Connection]:
        """A transaction; an unreachable database becomes 503 (`database.unavailable`)."""
        try:
            with self.engine.begin() as connection:
                yield connection
        except UNREACHABLE as error:
            log.warning("database unreachable: %s", error)
            raise unavailable() from None

    def _put_payload(self, connection: Connection, job_id: str, kind: str, data: bytes) -> None:
        connection.execute(insert(job_payloads).values(job_id=job_id, kind=kind, data=data))

    def _drop_payloads(self, connection: Connection, job_id: str, *kinds: str) -> None:
        connection.execute(
            delete(job_payloads).where(
                job_payloads.c.job_id == job_id, job_payloads.c.kind.in_(kinds)
            )
        )

    def _read_payload(self, job_id: str, kind: str) -> bytes:
        with self._reading() as connection:
            data = connection.execute(
                select(job_payloads.c.data).where(
                    job_payloads.c.job_id == job_id, job_payloads.c.kind == kind
                )
            ).scalar()
        if data is None:
            raise FileNotFoundError(f"the {kind} of job {job_id}")
        return bytes(data)

    def _admit(self, connection: Connection, limits: JobLimits, job: Job) -> None:
        """Check the limits under an advisory lock taken after the row and input are written
        (held for the counts and the commit only), so submissions racing on any replicas cannot
        pass them together (JobRefused)."""
        connection.execute(text(f"SET LOCAL lock_timeout = '{ADMISSION_WAIT}'"))
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": JOB_LOCK})
        super()._admit(connection, limits, job)

    def _held(self, job_id: str) -> Any:
        """The condition that this replica's claim of the job still holds its lease: running,
        under this replica's name, on the attempt this replica started."""
        return and_(
            jobs.c.job_id == job_id,
            jobs.c.status == "running",
            jobs.c.lease_holder == self.holder,
            jobs.c.attempts == self._claims.get(job_id, -1),
        )

    def _lease_cleared(self) -> dict[str, Any]:
        return {"lease_holder": None, "lease_until": None}

    def _unclaimed(self, job_id: str) -> None:
        self._claims.pop(job_id, None)

    def _still_held(self, connection: Connection, job_id: str) -> bool:
        """Whether this replica's claim still holds the job (its row locked until commit)."""
        held = connection.execute(
            select(jobs.c.job_id).where(self._held(job_id)).with_for_update()
        ).first()
        return held is not None

    def _ended(self, connection: Connection) -> dict[str, Any]:
        """The lease ends; the callback's begins, for this replica to deliver it."""
        return {"lease_until": None, "callback_lease_until": _now(connection) + self.lease_seconds}

    def claim_next(self) -> Job | None:
        """Lease a running job whose lease has passed (its replica is gone), else the next
        queued job in fairness (`fair_next`, rows others hold skipped); a job that has used its
        attempts fails instead. None when nothing waits."""
        while True:
            with self._writing() as connection:
                now = _now(connection)
                row = (
                    connection.execute(
                        select(*JOB_COLUMNS)
                        .where(jobs.c.status == "running", jobs.c.lease_until < now)
                        .order_by(jobs.c.created)
                        .limit(1)
                        .with_for_update(skip_locked=True)
                    ).first()
                    or connection.execute(
                        fair_next().with_for_update(of=jobs, skip_locked=True)
                    ).first()
                )
                if row is None:
                    return None
                if row.status == "running" and row.attempts >= self.max_attempts:
                    self._end_row(
                        connection,
                        row.job_id,
                        self.ttl_seconds,
                        status="failed",
                        error_status=500,
                        error_code="interrupted",
                        error=f"the replica running this job stopped {row.attempts} times",
                        callback_lease_until=None,
                    )
                    continue
                job = self._claim(
                    connection, row, lease_holder=self.holder, lease_until=now + self.lease_seconds
                )
            self._claims[job.job_id] = job.attempts
            return job

    def renew(self, job_ids: list[str]) -> None:
        """Extend the leases of the jobs this replica is running."""
        if not job_ids:
            return
        with self._writing() as connection:
            until = _now(connection) + self.lease_seconds
            connection.execute(
                update(jobs)
                .where(
                    jobs.c.job_id.in_(job_ids),
                    jobs.c.status == "running",
                    jobs.c.lease_holder == self.holder,
                )
                .values(lease_until=until)
            )

    def requeue_interrupted(self, ttl: float) -> int:
        """Nothing to do at start-up: other replicas may be running their jobs, and a dead
        replica's jobs are claimed again when their leases pass."""
        return 0

    def record_callback(
        self,
        job_id: str,
        delivered: bool,
        error: str | None,
        final: bool = False,
        hold_seconds: float = 0.0,
    ) -> None:
        """Count one callback attempt and its outcome; a `final` one ends the deliveries, and
        otherwise this replica keeps the callback's lease for `hold_seconds` more (its pause
        before the next attempt, and that attempt)."""
        values: dict[str, Any] = {
            "callback_attempts": jobs.c.callback_attempts + 1,
            "callback_delivered": delivered,
            "callback_error": error,
        }
        with self._writing() as connection:
            if delivered or final:
                values["callback_lease_until"] = NEVER
            else:
                values["callback_lease_until"] = (
                    _now(connection) + self.lease_seconds + hold_seconds
                )
            connection.execute(update(jobs).where(jobs.c.job_id == job_id).values(**values))

    def undelivered_callbacks(self, max_attempts: int) -> list[Job]:
        """Claim finished jobs whose callback has not gone through and has attempts left, for
        this replica to deliver for a while (another replica takes over after that)."""
        with self._writing() as connection:
            now = _now(connection)
            rows = connection.execute(
                select(*JOB_COLUMNS)
                .where(
                    jobs.c.status.in_(ENDED),
                    jobs.c.callback_url.is_not(None),
                    jobs.c.callback_delivered.is_(False),
                    jobs.c.callback_attempts < max_attempts,
                    or_(jobs.c.callback_lease_until.is_(None), jobs.c.callback_lease_until < now),
                )
                .limit(100)
                .with_for_update(skip_locked=True)
            ).all()
            if rows:
                connection.execute(
                    update(jobs)
                    .where(jobs.c.job_id.in_([row.job_id for row in rows]))
                    .values(callback_lease_until=now + self.lease_seconds)
                )
        return [job_of(row) for row in rows]

    def expire(self, now: float | None = None) -> int:
        """Delete finished jobs past their expiry; their payloads go with them (cascade)."""
        now = time.time() if now is None else now
        with self._writing() as connection:
            removed = connection.execute(
                delete(jobs).where(jobs.c.expires.is_not(None), jobs.c.expires <= now)
            )
        return int(removed.rowcount or 0)
