"""What the services ask of a job store and of a key store, whatever holds them.

Two backends implement each: the embedded ones (`SqliteJobStore`: SQLite and files in the data
directory; `FileKeyStore`: files) for one server, and the Postgres ones (`PostgresJobStore`,
`PostgresKeyStore`) for many replicas on one database. Code above `server.storage` annotates with
these protocols and gets its stores from `server.storage.stores.open_stores` (and a worker process
its `KeyReader` from `server.storage.stores.key_reader`); it never names a backend (an
import-linter contract in pyproject.toml holds it to that). tests/test_store_contract.py runs
every method against both.

`shares_state` is the one difference the services act on:

- False: one process owns the state on local disk. Calls answer at once and run inline on the
  event loop (`calls.store_call`), which keeps a key's check and the job row that pins it
  together; jobs need no leases; a restart queues again the jobs that were running.
- True: other replicas read and write the same state over the network. Calls run in a thread
  under a time bound (503 past it); the job runner renews the leases of its running jobs, hands
  them back when it stops, and sweeps up callbacks that a dead replica left undelivered.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Protocol

from server.storage.job import Job, JobLimits
from server.storage.key import StoredKey, Upload


class JobStore(Protocol):
    """Asynchronous jobs: accepted, claimed, run and ended, with their inputs and results."""

    shares_state: bool
    """True when other replicas share this state (see the module's docstring)."""
    max_attempts: int
    """Runs a job may start before an interruption fails it."""

    def close(self) -> None:
        """Release what the store holds open (not an engine it was given)."""

    def ping(self) -> None:
        """Raise when the store cannot be read."""

    def add(self, job: Job, payload: bytes, limits: JobLimits | None = None) -> Job:
        """Keep the input and record the job as queued, `limits` checked in the same step
        (JobRefused); only then is the job accepted."""

    def get(self, job_id: str) -> Job | None:
        """The job, or None when unknown, deleted or expired."""

    def list(self, owner: str | None = None, limit: int = 100) -> list[Job]:
        """The newest jobs first, of one owner when given."""

    def count(self, *statuses: str, owner: str | None = None) -> int:
        """How many jobs are in any of `statuses` (of one owner when given)."""

    def counts_by_status(self) -> dict[str, int]:
        """How many jobs are in each status."""

    def key_ids_in_flight(self) -> set[str]:
        """Keys that queued and running jobs need (pinned against eviction)."""

    def delete(self, job_id: str) -> bool:
        """Drop a finished job's payloads and hide it; False when it is not finished."""

    def claim_next(self) -> Job | None:
        """Mark the next job in fairness running and return it; None when nothing waits."""

    def renew(self, job_ids: list[str]) -> None:
        """Extend the leases of the jobs this process runs (nothing without leases)."""

    def retry(self, job_id: str) -> None:
        """Put a running job back in the queue, counting the attempt it used."""

    def release(self, job_id: str) -> None:
        """Put a running job back in the queue without counting the attempt."""

    def read_input(self, job_id: str) -> bytes:
        """The job's input; FileNotFoundError when it is gone."""

    def read_result(self, job_id: str) -> bytes | None:
        """The done job's result, or None once it is gone."""

    def finish(
        self, job_id: str, result: bytes, media_type: str, fhe_seconds: float | None, ttl: float
    ) -> bool:
        """Keep the result and mark the job done; False when another replica took it over."""

    def fail(self, job_id: str, status: int, code: str, message: str, ttl: float) -> bool:
        """Mark the job failed with this error; False when another replica took it over."""

    def requeue_interrupted(self, ttl: float) -> int:
        """At start-up: queue again the jobs a stop interrupted; how many (0 with leases)."""

    def record_callback(
        self,
        job_id: str,
        delivered: bool,
        error: str | None,
        final: bool = False,
        hold_seconds: float = 0.0,
    ) -> None:
        """Count one callback attempt and its outcome."""

    def undelivered_callbacks(self, max_attempts: int) -> list[Job]:
        """Finished jobs whose callback has not gone through and has attempts left."""

    def expire(self, now: float | None = None) -> int:
        """Delete finished jobs past their expiry with their payloads; how many."""


class KeyStore(Protocol):
    """Evaluation keys: content-addressed, owned per token, bounded in bytes with LRU eviction
    that never takes a key that work in flight needs."""

    shares_state: bool
    """True when other replicas share this state (see the module's docstring)."""
    max_bytes: int
    """The store's bound before least recently used keys are evicted."""
    evicted: list[Callable[[str], None]]
    """Listeners told each key id that leaves the store (the Celery executor's Redis copy)."""

    @property
    def total_bytes(self) -> int:
        """Bytes of all stored keys."""

    @property
    def receiving_bytes(self) -> int:
        """Bytes of uploads being received here and not yet added or discarded."""

    def __len__(self) -> int: ...

    def ping(self) -> None:
        """Raise when the store cannot be read."""

    def totals(self) -> tuple[int, int, int]:
        """Keys stored, their bytes, and the bound."""

    def owner_usage(self, owner: str) -> tuple[int, int]:
        """How many keys `owner` holds and their bytes (what its quotas count)."""

    def in_use(self, key_id: str) -> AbstractContextManager[None]:
        """Pin a key against eviction while a run uses it."""

    async def receive(self, chunks: AsyncIterator[bytes], limit: int) -> Upload:
        """Spool an upload to a local file while hashing it, under its bounds."""

    def discard(self, upload: Upload) -> None:
        """Drop a received upload that will not be stored (idempotent)."""

    def add(
        self,
        upload: Upload,
        client_spec: str | None,
        owner: str | None = None,
        owner_quota: int | None = None,
        owner_max_keys: int | None = None,
    ) -> tuple[StoredKey, bool]:
        """Store a checked upload for `owner`; the key as `owner` sees it, and whether new."""

    def add_spec(self, key_id: str, client_spec: str) -> None:
        """Record that the stored key has been checked against `client_spec`'s key set."""

    def get(self, key_id: str, owner: str | None = None) -> StoredKey | None:
        """The stored key, marked used now by `owner`; None when unknown or not `owner`'s."""

    def status(self, key_id: str, owner: str | None = None) -> StoredKey | None:
        """The stored key as `owner` sees it, without marking it used."""

    def key_file(self, key_id: str) -> AbstractContextManager[Path]:
        """A stored key's bytes as a local file; FileNotFoundError when it is gone."""

    def delete(self, key_id: str, owner: str | None) -> bool:
        """Take `owner`'s claim on a key away (KeyPinned while work needs it); False when the
        owner holds no such key."""


class KeyReader(Protocol):
    """A worker process's read-only access to the stored keys by id, on a connection of its own
    (the shared store's only: an embedded store hands its workers a key's file by path)."""

    def exists(self, key_id: str) -> bool:
        """Whether the store still holds the key."""

    def read(self, key_id: str) -> bytes:
        """The key's bytes; FileNotFoundError when the store does not hold it."""

    def copy_to(self, key_id: str, path: Path) -> None:
        """Write the key's bytes to `path`; FileNotFoundError when the store does not hold it."""
