"""Jobs in the shared database, so that any replica answers for any job and runs any queued one.

A replica claims the oldest queued job with `FOR UPDATE SKIP LOCKED` (two replicas never claim
the same row) and holds it under a lease it renews while the run goes on. A job whose replica
died is claimed again by another once its lease has passed, and runs once more at most per lost
lease, up to `max_attempts` runs. Only the claim that holds the lease (this replica's name and
the attempt it started) may finish, fail or requeue a job, so a run that lost its lease cannot
overwrite or undo the one that took the job over. Lease times are the database's clock.

A finished job's callback is leased too, from the moment the job ends, to the replica that ends
it; the others sweep up callbacks whose lease passed (their replica died before delivering).

The job's input and result live in `job_payloads` beside the row and are committed with it.
"""

from __future__ import annotations

import time
from dataclasses import asdict, fields
from typing import Any

from sqlalchemy import Engine, and_, case, delete, func, insert, or_, select, text, update
from sqlalchemy.engine import Connection, Row

from server.storage.database import JOB_LOCK, shared_state
from server.storage.jobs import Job, JobLimits, check_limits, is_job_id
from server.storage.tables import job_payloads, jobs

ADMISSION_WAIT = "10s"
"""Longest wait for the admission lock; past it the database errs and the caller gets 503."""
NEVER = 1e18
"""A callback lease that no sweep reaches: its deliveries are over."""


def _now(connection: Connection) -> float:
    """The database's clock, in Unix seconds."""
    return float(connection.execute(select(func.extract("epoch", func.now()))).scalar_one())


def _job(row: Row) -> Job:
    values = row._mapping
    return Job(**{field.name: values[field.name] for field in fields(Job)})


class PostgresJobStore:
    """The job store of many replicas (the same methods as the embedded `JobStore`)."""

    shared = True

    def __init__(
        self,
        engine: Engine,
        holder: str,
        max_attempts: int = 3,
        lease_seconds: float = 60.0,
        ttl_seconds: float = 86400.0,
    ) -> None:
        self.engine = engine
        self.holder = holder
        self.max_attempts = max_attempts
        self.lease_seconds = lease_seconds
        self.ttl_seconds = ttl_seconds
        self._claims: dict[str, int] = {}
        """The attempt each job this replica claimed is on: the fence of its later writes."""

    def close(self) -> None:
        """Nothing to close: the engine belongs to the application."""

    @shared_state
    def add(self, job: Job, payload: bytes, limits: JobLimits | None = None) -> Job:
        """Commit the row and its input together; only then is the job accepted. `limits` are
        checked in the same transaction under an advisory lock taken after the input is written
        (the lock is held for the counts and the commit only), so submissions racing on any
        replicas cannot pass them together (JobRefused)."""
        job.input_bytes = len(payload)
        with self.engine.begin() as connection:
            connection.execute(insert(jobs).values(**asdict(job)))
            connection.execute(
                insert(job_payloads).values(job_id=job.job_id, kind="input", data=payload)
            )
            if limits is not None:
                connection.execute(text(f"SET LOCAL lock_timeout = '{ADMISSION_WAIT}'"))
                connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": JOB_LOCK})
                self._check(connection, limits, job.owner, job.job_id, len(payload))
        return job

    @staticmethod
    def _check(
        connection: Connection, limits: JobLimits, owner: str | None, job_id: str, adding: int
    ) -> None:
        """JobRefused when the job would pass a limit (the admission lock held; the job's own
        row, written in this transaction, is left out of the counts)."""
        in_flight = stored = 0
        others = jobs.c.job_id != job_id
        if owner is not None:
            mine = and_(jobs.c.owner == owner, others)
            in_flight = connection.execute(
                select(func.count()).where(mine, jobs.c.status.in_(("queued", "running")))
            ).scalar_one()
            kept = case(
                (jobs.c.status == "done", func.coalesce(jobs.c.result_bytes, 0)),
                (jobs.c.status.in_(("queued", "running")), jobs.c.input_bytes),
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

    @shared_state
    def delete(self, job_id: str) -> bool:
        """Delete a finished job's payloads and hide the job; False when it is not finished
        here. The row stays, marked deleted, until it expires (as `JobStore.delete`)."""
        with self.engine.begin() as connection:
            gone = connection.execute(
                update(jobs)
                .where(jobs.c.job_id == job_id, jobs.c.status.in_(("done", "failed")))
                .values(status="deleted")
            )
            if gone.rowcount:
                connection.execute(delete(job_payloads).where(job_payloads.c.job_id == job_id))
        return bool(gone.rowcount)

    @shared_state
    def get(self, job_id: str) -> Job | None:
        """The job, or None when unknown or expired."""
        if not is_job_id(job_id):
            return None
        with self.engine.connect() as connection:
            row = connection.execute(select(jobs).where(jobs.c.job_id == job_id)).first()
        if row is None or row.status == "deleted":
            return None
        if row.expires is not None and row.expires <= time.time():
            return None
        return _job(row)

    @shared_state
    def list(self, owner: str | None = None, limit: int = 100) -> list[Job]:
        """The newest jobs first, of one owner when given."""
        query = (
            select(jobs)
            .where(jobs.c.status != "deleted")
            .order_by(jobs.c.created.desc())
            .limit(limit)
        )
        if owner is not None:
            query = query.where(jobs.c.owner == owner)
        with self.engine.connect() as connection:
            return [_job(row) for row in connection.execute(query)]

    @shared_state
    def count(self, *statuses: str, owner: str | None = None) -> int:
        """How many jobs are in any of `statuses` (of one owner when given)."""
        query = select(func.count()).select_from(jobs).where(jobs.c.status.in_(statuses))
        if owner is not None:
            query = query.where(jobs.c.owner == owner)
        with self.engine.connect() as connection:
            return int(connection.execute(query).scalar_one())

    @shared_state
    def counts_by_status(self) -> dict[str, int]:
        """How many jobs are in each status."""
        query = select(jobs.c.status, func.count()).group_by(jobs.c.status)
        with self.engine.connect() as connection:
            return {status: int(n) for status, n in connection.execute(query)}

    @shared_state
    def ping(self) -> None:
        """Raise when the database does not answer."""
        with self.engine.connect() as connection:
            connection.execute(select(1))

    @shared_state
    def key_ids_in_flight(self) -> set[str]:
        """Keys that queued and running jobs of every replica will need (pinned)."""
        query = (
            select(jobs.c.key_id)
            .distinct()
            .where(jobs.c.status.in_(("queued", "running")), jobs.c.key_id.is_not(None))
        )
        with self.engine.connect() as connection:
            return {row[0] for row in connection.execute(query)}

    @staticmethod
    def _fair_next() -> Any:
        """The next queued job in fairness: of the token with the fewest jobs running, then the
        one served least recently (never served first), then the oldest (as `jobs.FAIR_NEXT`)."""
        others = jobs.alias("others")
        running = (
            select(func.count())
            .where(others.c.owner == jobs.c.owner, others.c.status == "running")
            .scalar_subquery()
        )
        served = (
            select(func.max(others.c.started))
            .where(others.c.owner == jobs.c.owner)
            .scalar_subquery()
        )
        return (
            select(jobs)
            .where(jobs.c.status == "queued")
            .order_by(running, served.asc().nulls_first(), jobs.c.created)
            .limit(1)
            .with_for_update(of=jobs, skip_locked=True)
        )

    @shared_state
    def claim_next(self) -> Job | None:
        """Lease a running job whose lease has passed (its replica is gone), else the next
        queued job in fairness; a job that has used its attempts fails instead. None when
        nothing waits."""
        while True:
            with self.engine.begin() as connection:
                now = _now(connection)
                row = (
                    connection.execute(
                        select(jobs)
                        .where(jobs.c.status == "running", jobs.c.lease_until < now)
                        .order_by(jobs.c.created)
                        .limit(1)
                        .with_for_update(skip_locked=True)
                    ).first()
                    or connection.execute(self._fair_next()).first()
                )
                if row is None:
                    return None
                if row.status == "running" and row.attempts >= self.max_attempts:
                    self._finish_row(
                        connection,
                        row.job_id,
                        status="failed",
                        error_status=500,
                        error_code="interrupted",
                        error=f"the replica running this job stopped {row.attempts} times",
                        ttl=self.ttl_seconds,
                        callback_lease_until=None,
                    )
                    continue
                started = time.time()
                connection.execute(
                    update(jobs)
                    .where(jobs.c.job_id == row.job_id)
                    .values(
                        status="running",
                        started=started,
                        attempts=jobs.c.attempts + 1,
                        lease_holder=self.holder,
                        lease_until=now + self.lease_seconds,
                    )
                )
            job = _job(row)
            job.status, job.started, job.attempts = "running", started, row.attempts + 1
            self._claims[job.job_id] = job.attempts
            return job

    def _finish_row(self, connection: Connection, job_id: str, ttl: float, **values: Any) -> None:
        """Mark the job ended and drop its input (transaction open)."""
        finished = time.time()
        connection.execute(
            update(jobs)
            .where(jobs.c.job_id == job_id)
            .values(finished=finished, expires=finished + ttl, **values)
        )
        connection.execute(
            delete(job_payloads).where(
                job_payloads.c.job_id == job_id, job_payloads.c.kind == "input"
            )
        )

    def _held(self, job_id: str) -> Any:
        """The condition that this replica's claim of the job still holds its lease: running,
        under this replica's name, on the attempt this replica started."""
        return and_(
            jobs.c.job_id == job_id,
            jobs.c.status == "running",
            jobs.c.lease_holder == self.holder,
            jobs.c.attempts == self._claims.get(job_id, -1),
        )

    @shared_state
    def renew(self, job_ids: list[str]) -> None:
        """Extend the leases of the jobs this replica is running."""
        if not job_ids:
            return
        with self.engine.begin() as connection:
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

    @shared_state
    def retry(self, job_id: str) -> None:
        """Put a running job back in the queue, counting the attempt it used."""
        with self.engine.begin() as connection:
            connection.execute(
                update(jobs)
                .where(self._held(job_id))
                .values(status="queued", started=None, lease_holder=None, lease_until=None)
            )
        self._claims.pop(job_id, None)

    @shared_state
    def release(self, job_id: str) -> None:
        """Put a running job back in the queue without counting the attempt (no worker free)."""
        with self.engine.begin() as connection:
            connection.execute(
                update(jobs)
                .where(self._held(job_id))
                .values(
                    status="queued",
                    started=None,
                    attempts=jobs.c.attempts - 1,
                    lease_holder=None,
                    lease_until=None,
                )
            )
        self._claims.pop(job_id, None)

    @shared_state
    def finish(
        self, job_id: str, result: bytes, media_type: str, fhe_seconds: float | None, ttl: float
    ) -> bool:
        """Keep the result and mark the job done, in one transaction, if this replica's claim
        still holds it; False when another replica took it over (and answers for it)."""
        with self.engine.begin() as connection:
            held = connection.execute(
                select(jobs.c.job_id).where(self._held(job_id)).with_for_update()
            ).first()
            if held is None:
                return False
            connection.execute(
                insert(job_payloads).values(job_id=job_id, kind="result", data=result)
            )
            self._finish_row(
                connection,
                job_id,
                ttl,
                status="done",
                result_bytes=len(result),
                result_type=media_type,
                fhe_seconds=fhe_seconds,
                lease_until=None,
                callback_lease_until=_now(connection) + self.lease_seconds,
            )
        self._claims.pop(job_id, None)
        return True

    @shared_state
    def fail(self, job_id: str, status: int, code: str, message: str, ttl: float) -> bool:
        """Mark the job failed with the error a synchronous call would have answered, if this
        replica's claim still holds it; False when another replica took it over."""
        with self.engine.begin() as connection:
            held = connection.execute(
                select(jobs.c.job_id).where(self._held(job_id)).with_for_update()
            ).first()
            if held is None:
                return False
            self._finish_row(
                connection,
                job_id,
                ttl,
                status="failed",
                error_status=status,
                error_code=code,
                error=message,
                lease_until=None,
                callback_lease_until=_now(connection) + self.lease_seconds,
            )
        self._claims.pop(job_id, None)
        return True

    def requeue_interrupted(self, ttl: float) -> int:
        """Nothing to do at start-up: other replicas may be running their jobs, and a dead
        replica's jobs are claimed again when their leases pass."""
        return 0

    @shared_state
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
        with self.engine.begin() as connection:
            if delivered or final:
                values["callback_lease_until"] = NEVER
            else:
                values["callback_lease_until"] = (
                    _now(connection) + self.lease_seconds + hold_seconds
                )
            connection.execute(update(jobs).where(jobs.c.job_id == job_id).values(**values))

    @shared_state
    def undelivered_callbacks(self, max_attempts: int) -> list[Job]:
        """Claim finished jobs whose callback has not gone through and has attempts left, for
        this replica to deliver for a while (another replica takes over after that)."""
        with self.engine.begin() as connection:
            now = _now(connection)
            rows = connection.execute(
                select(jobs)
                .where(
                    jobs.c.status.in_(("done", "failed")),
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
        return [_job(row) for row in rows]

    @shared_state
    def expire(self, now: float | None = None) -> int:
        """Delete finished jobs past their expiry with their payloads; returns how many."""
        now = time.time() if now is None else now
        with self.engine.begin() as connection:
            removed = connection.execute(
                delete(jobs).where(jobs.c.expires.is_not(None), jobs.c.expires <= now)
            )
        return int(removed.rowcount or 0)

    @shared_state
    def read_input(self, job_id: str) -> bytes:
        """The job's input; FileNotFoundError when it is gone."""
        return self._payload(job_id, "input")

    @shared_state
    def read_result(self, job_id: str) -> bytes | None:
        """The done job's result, or None once it expired."""
        try:
            return self._payload(job_id, "result")
        except FileNotFoundError:
            return None

    def _payload(self, job_id: str, kind: str) -> bytes:
        with self.engine.connect() as connection:
            data = connection.execute(
                select(job_payloads.c.data).where(
                    job_payloads.c.job_id == job_id, job_payloads.c.kind == kind
                )
            ).scalar()
        if data is None:
            raise FileNotFoundError(f"the {kind} of job {job_id}")
        return bytes(data)
