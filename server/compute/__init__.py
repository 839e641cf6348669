"""Where circuits run: one backend protocol, this server's process pool or Celery workers.

`circuits` is what runs inside any worker process, in both modes. A backend raises the outcomes
below; the inference service turns them into the caller's errors.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from server.settings import ServerSettings
    from server.storage.protocols import KeyStore


class Busy(RuntimeError):
    """Every worker is busy and the queue is full."""


class BrokerLost(Busy):
    """The broker lost a run sent to it (Redis flushed, restarted empty, or unreachable past the
    grace): nothing will answer it, so it is run again (a job goes back to the queue)."""


class WorkerCrashed(RuntimeError):
    """The worker process died while handling the request (and only that request failed)."""


class TimedOut(RuntimeError):
    """No worker answered in time (Celery mode)."""


class RunRefused(RuntimeError):
    """A remote worker refused the run with a stable code (Celery mode): the API's domain error
    of that code says the status."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class InFlight:
    """A bound on FHE runs sent and not yet answered: past it, callers get Busy at once instead
    of an ever-growing queue."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.count = 0

    @contextmanager
    def slot(self) -> Iterator[None]:
        """Hold one place for the length of a run; Busy when none is free."""
        if self.count >= self.capacity:
            raise Busy(f"{self.count} FHE requests are running or queued; try again shortly")
        self.count += 1
        try:
            yield
        finally:
            self.count -= 1


class Compute(Protocol):
    """A backend that runs circuits: run one ciphertext, check keys deserialize, say whether it
    can be reached, follow the API's key store, warm up and close."""

    workers: int

    in_flight: InFlight

    async def run_circuit(
        self, bundle_dir: str, key_id: str, key_path: str, ciphertext: bytes
    ) -> tuple[bytes, float, bool]: ...

    async def check_keys(self, key_id: str, key_path: str) -> None: ...

    async def ping(self) -> str | None: ...

    def queued(self) -> int:
        """Runs sent to the workers that none has started yet (shared by every replica)."""
        ...

    def follow(self, keystore: KeyStore) -> None: ...

    def warm(self, bundle_dirs: list[str]) -> None: ...

    def close(self) -> None: ...


def make_compute(settings: ServerSettings) -> Compute:
    """This server's worker pool, or (backend celery) the Celery workers behind Redis."""
    if settings.backend == "celery":
        from server.compute.celery_api import CeleryExecutor
        from server.compute.celery_app import make_celery

        celery = make_celery(
            settings.redis_url, settings.celery_visibility_timeout, settings.celery_task_timeout
        )
        return CeleryExecutor(
            celery,
            settings.redis_url,
            settings.celery_max_in_flight,
            settings.celery_task_timeout,
            settings.celery_key_ttl_seconds,
            grace=settings.celery_broker_grace_seconds,
            high_water=settings.celery_redis_high_water,
        )
    from server.compute.local import FHEExecutor

    return FHEExecutor(
        settings.workers,
        settings.max_queue,
        settings.key_cache_entries,
        settings.threads_per_run(),
        settings.database(),
        settings.circuit_cache(),
    )
