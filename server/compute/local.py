"""A bounded, crash-isolated pool of worker processes for FHE work, so the event loop never
blocks on a circuit and one caller's bytes cannot take other callers' work down.

At most `workers` runs execute at once, each on at most `threads` cores (so that runs x threads
stays within the host's cores), and at most `max_queue` more wait; past that callers get `Busy` at
once instead of an ever-growing queue. The pool is pebble's `ProcessPool`: a worker that dies
(Concrete aborts the process on some malformed inputs) fails only the task it was running, with
`WorkerCrashed`, and pebble starts a fresh worker in its place while every other task in flight or
queued goes on.
"""

from __future__ import annotations

import asyncio
import multiprocessing
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from pebble import ProcessExpired, ProcessPool

from server.compute import InFlight, WorkerCrashed, circuits

T = TypeVar("T")


class FHEExecutor:
    """Runs worker functions in separate processes with a bound on work in flight."""

    def __init__(
        self,
        workers: int,
        max_queue: int,
        key_cache_entries: int,
        threads: int | None = None,
        database_url: str | None = None,
        cache_dir: Path | None = None,
    ) -> None:
        self.workers = workers
        self.threads = threads
        self.in_flight = InFlight(workers + max_queue)
        self._pool = ProcessPool(
            max_workers=workers,
            initializer=circuits.prepare,
            initargs=(key_cache_entries, threads, database_url, cache_dir),
            context=multiprocessing.get_context("spawn"),
        )
        for _ in range(workers):  # start the workers now, while the circuits are compiled
            self._pool.schedule(circuits.load_compiler)

    async def call(self, function: Callable[..., T], *args: Any) -> T:
        """Run `function(*args)` in a worker; raise Busy when the bound is reached and
        WorkerCrashed when the process running it died."""
        with self.in_flight.slot():
            try:
                return await asyncio.wrap_future(self._pool.schedule(function, args=args))
            except ProcessExpired as expired:
                raise WorkerCrashed(
                    f"the FHE worker running this request stopped ({expired})"
                ) from None

    async def run_circuit(
        self, bundle_dir: str, key_id: str, key_path: str, ciphertext: bytes
    ) -> tuple[bytes, float, bool]:
        """Evaluate a bundle's circuit on one ciphertext; returns the result, the FHE seconds and
        whether the worker had the keys deserialized already."""
        return await self.call(circuits.run_circuit, bundle_dir, key_id, key_path, ciphertext)

    async def check_keys(self, key_id: str, key_path: str) -> None:
        """Raise circuits.BadInput unless the file holds deserializable evaluation keys."""
        await self.call(circuits.check_keys, key_path)

    async def ping(self) -> str | None:
        """The pool is this process's own: ready while it is not closed."""
        return None if self._pool.active else "the FHE worker pool is stopped"

    def follow(self, keystore: Any) -> None:
        """Workers read keys from the API's own store, so there is no copy to keep in step."""

    def queued(self) -> int:
        """None: the API sends this pool no more runs than it has workers (its fair share
        keeps the rest waiting, counted there)."""
        return 0

    def warm(self, bundle_dirs: list[str]) -> None:
        """Start the workers and load circuits (compiled at start-up) in the background."""
        for _ in range(self.workers):
            self._pool.schedule(circuits.warm, args=(bundle_dirs,))

    def close(self) -> None:
        """Stop the workers, letting circuits that are running finish (for at most 30 s)."""
        self._pool.close()
        try:
            self._pool.join(timeout=30)
        except TimeoutError:
            self._pool.stop()
            self._pool.join()
