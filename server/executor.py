"""A bounded pool of worker processes for FHE work, so the event loop never blocks on a circuit.

At most `workers` runs execute at once (one per core by default) and at most `max_queue` more
wait; past that callers get `Busy` at once instead of an ever-growing queue. A worker that dies
is replaced and the pool keeps serving.
"""

from __future__ import annotations

import asyncio
import multiprocessing
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, TypeVar

from server import worker

T = TypeVar("T")


class Busy(RuntimeError):
    """Every worker is busy and the queue is full."""


class WorkerCrashed(RuntimeError):
    """The worker process died while handling the request."""


class FHEExecutor:
    """Runs worker functions in separate processes with a bound on work in flight."""

    def __init__(self, workers: int, max_queue: int, key_cache_entries: int) -> None:
        self.workers = workers
        self.capacity = workers + max_queue
        self.key_cache_entries = key_cache_entries
        self.in_flight = 0
        self._pool = self._new_pool()

    def _new_pool(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(
            max_workers=self.workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=worker.configure,
            initargs=(self.key_cache_entries,),
        )

    async def call(self, function: Callable[..., T], *args: Any) -> T:
        """Run `function(*args)` in a worker; raise Busy when the bound is reached."""
        if self.in_flight >= self.capacity:
            raise Busy(f"{self.in_flight} FHE requests are running or queued; try again shortly")
        self.in_flight += 1
        pool = self._pool
        try:
            return await asyncio.wrap_future(pool.submit(function, *args))
        except BrokenProcessPool:
            if self._pool is pool:
                pool.shutdown(wait=False, cancel_futures=True)
                self._pool = self._new_pool()
            raise WorkerCrashed("the FHE worker stopped while running this request") from None
        finally:
            self.in_flight -= 1

    async def run_circuit(
        self, bundle_dir: str, key_id: str, key_path: str, ciphertext: bytes
    ) -> tuple[bytes, float]:
        """Evaluate a bundle's circuit on one ciphertext; returns the result and FHE seconds."""
        return await self.call(worker.run_circuit, bundle_dir, key_id, key_path, ciphertext)

    async def check_keys(self, key_id: str, key_path: str) -> None:
        """Raise worker.BadInput unless the file holds deserializable evaluation keys."""
        await self.call(worker.check_keys, key_path)

    def warm(self, bundle_dirs: list[str]) -> None:
        """Start the workers and load circuits in the background."""
        for _ in range(self.workers):
            self._pool.submit(worker.warm, bundle_dirs)

    def close(self) -> None:
        """Stop the workers, letting a circuit that is running finish."""
        self._pool.shutdown(wait=True, cancel_futures=True)
