"""One job as the stores keep it, the limits checked when it is added, and job ids.

Both job stores (`SqliteJobStore`, `PostgresJobStore`) keep and answer these; the services above
storage read them without knowing which store holds them.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any

JOB_ID_LENGTH = 32


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
