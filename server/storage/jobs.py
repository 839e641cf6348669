"""Asynchronous jobs kept on local disk: a SQLite table, with each job's input and result as files.

A job's input is written and synced, and its row committed, before the API answers 202, so nothing
accepted is lost. After a restart, jobs that were queued or running are queued again; a job that
keeps being interrupted fails after `max_attempts`. Finished jobs are deleted once they expire.
"""

from __future__ import annotations

import sqlite3
import threading
import time
import uuid
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from fhe.contract.atomic import write_atomic

JOB_ID_LENGTH = 32

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    job_id TEXT PRIMARY KEY,
    model TEXT NOT NULL,
    kind TEXT NOT NULL,
    status TEXT NOT NULL,
    created REAL NOT NULL,
    base_url TEXT NOT NULL,
    owner TEXT,
    key_id TEXT,
    client_spec TEXT,
    callback_url TEXT,
    started REAL,
    finished REAL,
    expires REAL,
    attempts INTEGER NOT NULL DEFAULT 0,
    input_bytes INTEGER NOT NULL DEFAULT 0,
    result_bytes INTEGER,
    result_type TEXT,
    fhe_seconds REAL,
    error_status INTEGER,
    error_code TEXT,
    error TEXT,
    callback_attempts INTEGER NOT NULL DEFAULT 0,
    callback_delivered INTEGER NOT NULL DEFAULT 0,
    callback_error TEXT
);
CREATE INDEX IF NOT EXISTS jobs_by_status ON jobs (status, created);
CREATE INDEX IF NOT EXISTS jobs_by_owner_status ON jobs (owner, status);
CREATE INDEX IF NOT EXISTS jobs_by_owner_started ON jobs (owner, started);
"""

FAIR_NEXT = """
SELECT * FROM jobs AS j WHERE status = 'queued'
ORDER BY
    (SELECT COUNT(*) FROM jobs AS r WHERE r.owner = j.owner AND r.status = 'running'),
    (SELECT MAX(s.started) FROM jobs AS s WHERE s.owner = j.owner),
    created
LIMIT 1
"""
"""The next job in fairness: of the token with the fewest jobs running, then the one served least
recently (never served first), then the oldest; so tokens take turns, whatever they queued."""

STORED = """
SELECT COALESCE(SUM(CASE WHEN status = 'done' THEN COALESCE(result_bytes, 0)
                         WHEN status IN ('queued', 'running') THEN input_bytes
                         ELSE 0 END), 0)
FROM jobs WHERE owner = ? AND (expires IS NULL OR expires > ?)
"""
"""Bytes a token keeps stored: the inputs of its jobs in flight and its unexpired results."""


@dataclass
class Job:
    """One job as stored: what to run, where it stands, and how it ended."""

    job_id: str
    model: str
    kind: str
    status: str
    created: float
    base_url: str
    owner: str | None = None
    key_id: str | None = None
    client_spec: str | None = None
    callback_url: str | None = None
    started: float | None = None
    finished: float | None = None
    expires: float | None = None
    attempts: int = 0
    input_bytes: int = 0
    result_bytes: int | None = None
    result_type: str | None = None
    fhe_seconds: float | None = None
    error_status: int | None = None
    error_code: str | None = None
    error: str | None = None
    callback_attempts: int = 0
    callback_delivered: bool = False
    callback_error: str | None = None

    @property
    def status_url(self) -> str:
        return f"{self.base_url}v1/jobs/{self.job_id}"

    @property
    def result_url(self) -> str:
        return f"{self.status_url}/result"

    def public(self) -> dict[str, Any]:
        """What `GET /v1/jobs/{id}` shows: status, timings, error and callback delivery."""
        now = time.time()
        queued_until = self.started or (self.finished if self.status == "failed" else None) or now
        run_until = self.finished or now
        return {
            "job_id": self.job_id,
            "model": self.model,
            "kind": self.kind,
            "status": self.status,
            "created": self.created,
            "started": self.started,
            "finished": self.finished,
            "expires": self.expires,
            "seconds": {
                "queued": max(0.0, queued_until - self.created),
                "running": max(0.0, run_until - self.started) if self.started else None,
                "fhe": self.fhe_seconds,
            },
            "attempts": self.attempts,
            "result_bytes": self.result_bytes,
            "error": (
                {"status": self.error_status, "code": self.error_code, "message": self.error}
                if self.status == "failed"
                else None
            ),
            "callback": (
                {
                    "url": self.callback_url,
                    "attempts": self.callback_attempts,
                    "delivered": self.callback_delivered,
                    "last_error": self.callback_error,
                }
                if self.callback_url
                else None
            ),
            "status_url": self.status_url,
            "result_url": self.result_url,
        }


@dataclass(frozen=True)
class JobLimits:
    """What a token may have at once, checked in the same transaction as the job's row."""

    owner_max_in_flight: int
    max_queued: int
    owner_max_stored_bytes: int


class JobRefused(RuntimeError):
    """A limit refused the job: `reason` is owner_in_flight, queue_full or owner_stored_bytes."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def check_limits(
    limits: JobLimits, owner: str | None, in_flight: int, queued: int, stored: int, adding: int
) -> None:
    """JobRefused when one more job of `adding` input bytes would pass a limit."""
    if owner is not None and in_flight >= limits.owner_max_in_flight:
        raise JobRefused(
            "owner_in_flight",
            f"this token has {in_flight} jobs queued or running, its limit; wait for some to "
            "finish",
        )
    if queued >= limits.max_queued:
        raise JobRefused(
            "queue_full", f"{limits.max_queued} jobs are already queued; try again later"
        )
    if owner is not None and stored + adding > limits.owner_max_stored_bytes:
        raise JobRefused(
            "owner_stored_bytes",
            f"this token keeps {stored} bytes of job inputs and results; {adding} more would "
            f"pass its limit of {limits.owner_max_stored_bytes}: fetch and delete results "
            "(DELETE /v1/jobs/{id}) or wait for them to expire",
        )


def new_job_id() -> str:
    """A random, unguessable job id (hex, safe as a file name)."""
    return uuid.uuid4().hex


def is_job_id(text: str) -> bool:
    """True when `text` has the shape of a job id."""
    return len(text) == JOB_ID_LENGTH and all(c in "0123456789abcdef" for c in text)


class JobStore:
    """Jobs in `<root>/jobs.sqlite`, inputs and results in `<root>/<id>.input|.result`.

    One server owns them: its own restart queues its running jobs again (`requeue_interrupted`),
    so it needs no leases (`renew` does nothing). `PostgresJobStore` has the same methods for
    many replicas.
    """

    shared = False

    def __init__(self, root: Path, max_attempts: int = 3) -> None:
        self.root = root
        self.max_attempts = max_attempts
        root.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(root / "jobs.sqlite", check_same_thread=False)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(SCHEMA)
        for partial in root.glob("*.partial"):
            partial.unlink(missing_ok=True)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def input_path(self, job_id: str) -> Path:
        return self.root / f"{job_id}.input"

    def result_path(self, job_id: str) -> Path:
        return self.root / f"{job_id}.result"

    def read_input(self, job_id: str) -> bytes:
        """The job's input; FileNotFoundError when it is gone."""
        return self.input_path(job_id).read_bytes()

    def read_result(self, job_id: str) -> bytes | None:
        """The done job's result, or None once it expired."""
        try:
            return self.result_path(job_id).read_bytes()
        except FileNotFoundError:
            return None

    def renew(self, job_ids: list[str]) -> None:
        """No leases here: this server alone runs its jobs."""

    def _update(self, job_id: str, **values: Any) -> None:
        assignments = ", ".join(f"{name} = ?" for name in values)
        with self._lock, self._db:
            self._db.execute(
                f"UPDATE jobs SET {assignments} WHERE job_id = ?", [*values.values(), job_id]
            )

    @staticmethod
    def _job(row: sqlite3.Row) -> Job:
        values = {field.name: row[field.name] for field in fields(Job)}
        values["callback_delivered"] = bool(values["callback_delivered"])
        return Job(**values)

    def add(self, job: Job, payload: bytes, limits: JobLimits | None = None) -> Job:
        """Keep the input on disk, then record the job as queued; only then is it accepted.

        `limits` are checked under the same lock as the insert, so racing submissions cannot
        pass them together (JobRefused)."""
        write_atomic(self.input_path(job.job_id), payload)
        job.input_bytes = len(payload)
        row = asdict(job)
        columns = ", ".join(row)
        marks = ", ".join("?" for _ in row)
        try:
            with self._lock, self._db:
                if limits is not None:
                    self._check(limits, job.owner, len(payload))
                self._db.execute(
                    f"INSERT INTO jobs ({columns}) VALUES ({marks})", list(row.values())
                )
        except BaseException:
            self.input_path(job.job_id).unlink(missing_ok=True)
            raise
        return job

    def _check(self, limits: JobLimits, owner: str | None, adding: int) -> None:
        """JobRefused when the job would pass a limit (lock held)."""
        one = self._db.execute
        flight = "SELECT COUNT(*) FROM jobs WHERE status IN ('queued', 'running') AND owner = ?"
        in_flight = int(one(flight, (owner,)).fetchone()[0]) if owner is not None else 0
        queued = int(one("SELECT COUNT(*) FROM jobs WHERE status = 'queued'").fetchone()[0])
        stored = int(one(STORED, (owner, time.time())).fetchone()[0]) if owner is not None else 0
        check_limits(limits, owner, in_flight, queued, stored, adding)

    def delete(self, job_id: str) -> bool:
        """Delete a finished job's result and hide the job; False when it is not finished here.

        The row stays, marked deleted, until it expires: it still says when its token was last
        served, so deleting results cannot buy a token an earlier turn."""
        with self._lock, self._db:
            gone = self._db.execute(
                "UPDATE jobs SET status = 'deleted' "
                "WHERE job_id = ? AND status IN ('done', 'failed')",
                (job_id,),
            ).rowcount
        if gone:
            self.result_path(job_id).unlink(missing_ok=True)
            self.input_path(job_id).unlink(missing_ok=True)
        return bool(gone)

    def get(self, job_id: str) -> Job | None:
        """The job, or None when unknown or expired."""
        if not is_job_id(job_id):
            return None
        with self._lock:
            row = self._db.execute("SELECT * FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
        if row is None or row["status"] == "deleted":
            return None
        if row["expires"] is not None and row["expires"] <= time.time():
            return None
        return self._job(row)

    def list(self, owner: str | None = None, limit: int = 100) -> list[Job]:
        """The newest jobs first, of one owner when given."""
        query, args = "SELECT * FROM jobs WHERE status != 'deleted'", []
        if owner is not None:
            query, args = query + " AND owner = ?", [owner]
        with self._lock:
            rows = self._db.execute(f"{query} ORDER BY created DESC LIMIT ?", [*args, limit])
            return [self._job(row) for row in rows.fetchall()]

    def count(self, *statuses: str, owner: str | None = None) -> int:
        """How many jobs are in any of `statuses` (of one owner when given)."""
        marks = ", ".join("?" for _ in statuses)
        query, args = f"SELECT COUNT(*) FROM jobs WHERE status IN ({marks})", list(statuses)
        if owner is not None:
            query, args = query + " AND owner = ?", [*args, owner]
        with self._lock:
            return int(self._db.execute(query, args).fetchone()[0])

    def counts_by_status(self) -> dict[str, int]:
        """How many jobs are in each status (expired ones not yet deleted included)."""
        with self._lock:
            rows = self._db.execute("SELECT status, COUNT(*) FROM jobs GROUP BY status").fetchall()
        return {row[0]: int(row[1]) for row in rows}

    def ping(self) -> None:
        """Raise when the database cannot be read."""
        with self._lock:
            self._db.execute("SELECT 1").fetchone()

    def key_ids_in_flight(self) -> set[str]:
        """Keys that queued and running jobs will need (pinned against eviction)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT DISTINCT key_id FROM jobs "
                "WHERE status IN ('queued', 'running') AND key_id IS NOT NULL"
            ).fetchall()
        return {row[0] for row in rows}

    def claim_next(self) -> Job | None:
        """Mark the next queued job in fairness (`FAIR_NEXT`) running and return it; None when
        nothing waits."""
        with self._lock, self._db:
            row = self._db.execute(FAIR_NEXT).fetchone()
            if row is None:
                return None
            started = time.time()
            self._db.execute(
                "UPDATE jobs SET status = 'running', started = ?, attempts = attempts + 1 "
                "WHERE job_id = ?",
                (started, row["job_id"]),
            )
        job = self._job(row)
        job.status, job.started, job.attempts = "running", started, job.attempts + 1
        return job

    def retry(self, job_id: str) -> None:
        """Put a running job back in the queue, counting the attempt it used."""
        with self._lock, self._db:
            self._db.execute(
                "UPDATE jobs SET status = 'queued', started = NULL "
                "WHERE job_id = ? AND status = 'running'",
                (job_id,),
            )

    def release(self, job_id: str) -> None:
        """Put a running job back in the queue without counting the attempt (no worker free)."""
        with self._lock, self._db:
            self._db.execute(
                "UPDATE jobs SET status = 'queued', started = NULL, attempts = attempts - 1 "
                "WHERE job_id = ? AND status = 'running'",
                (job_id,),
            )

    def finish(
        self, job_id: str, result: bytes, media_type: str, fhe_seconds: float | None, ttl: float
    ) -> bool:
        """Keep the result, then mark the job done; its input is no longer needed. True: the
        end is recorded (always, here; a shared store may have handed the job on)."""
        write_atomic(self.result_path(job_id), result)
        finished = time.time()
        self._update(
            job_id,
            status="done",
            finished=finished,
            expires=finished + ttl,
            result_bytes=len(result),
            result_type=media_type,
            fhe_seconds=fhe_seconds,
        )
        self.input_path(job_id).unlink(missing_ok=True)
        return True

    def fail(self, job_id: str, status: int, code: str, message: str, ttl: float) -> bool:
        """Mark the job failed with the error a synchronous call would have answered; True."""
        finished = time.time()
        self._update(
            job_id,
            status="failed",
            finished=finished,
            expires=finished + ttl,
            error_status=status,
            error_code=code,
            error=message,
        )
        self.input_path(job_id).unlink(missing_ok=True)
        return True

    def requeue_interrupted(self, ttl: float) -> int:
        """After a restart: running jobs go back to the queue, or fail past `max_attempts`."""
        with self._lock:
            rows = self._db.execute(
                "SELECT job_id, attempts FROM jobs WHERE status = 'running'"
            ).fetchall()
        for row in rows:
            if row["attempts"] >= self.max_attempts:
                self.fail(
                    row["job_id"],
                    500,
                    "interrupted",
                    f"the server stopped while running this job {row['attempts']} times",
                    ttl,
                )
            else:
                self._update(row["job_id"], status="queued", started=None)
        return len(rows)

    def record_callback(
        self,
        job_id: str,
        delivered: bool,
        error: str | None,
        final: bool = False,
        hold_seconds: float = 0.0,
    ) -> None:
        """Count one callback attempt and its outcome (`final` and `hold_seconds` matter only
        to shared stores, whose replicas sweep for undelivered callbacks)."""
        with self._lock, self._db:
            self._db.execute(
                "UPDATE jobs SET callback_attempts = callback_attempts + 1, "
                "callback_delivered = ?, callback_error = ? WHERE job_id = ?",
                (int(delivered), error, job_id),
            )

    def undelivered_callbacks(self, max_attempts: int) -> list[Job]:
        """Finished jobs whose callback has not gone through and has attempts left."""
        with self._lock:
            rows = self._db.execute(
                "SELECT * FROM jobs WHERE status IN ('done', 'failed') "
                "AND callback_url IS NOT NULL AND callback_delivered = 0 "
                "AND callback_attempts < ?",
                (max_attempts,),
            ).fetchall()
        return [self._job(row) for row in rows]

    def expire(self, now: float | None = None) -> int:
        """Delete finished jobs past their expiry, with their files; returns how many."""
        now = time.time() if now is None else now
        with self._lock:
            rows = self._db.execute(
                "SELECT job_id FROM jobs WHERE expires IS NOT NULL AND expires <= ?", (now,)
            ).fetchall()
        for row in rows:
            self.result_path(row["job_id"]).unlink(missing_ok=True)
            self.input_path(row["job_id"]).unlink(missing_ok=True)
            with self._lock, self._db:
                self._db.execute("DELETE FROM jobs WHERE job_id = ?", (row["job_id"],))
        return len(rows)
