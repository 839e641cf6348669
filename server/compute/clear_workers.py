"""A pool of processes for clear (scikit-learn) predictions, apart from the FHE workers and from
the event loop's threads, entered through a fair share across tokens.

A request's body is parsed, bounded and predicted in a worker; a prediction that passes the time
limit has its worker stopped (pebble starts another), and one that crashes its worker fails alone.
"""

from __future__ import annotations

import asyncio
import multiprocessing
from concurrent.futures import CancelledError
from concurrent.futures.process import BrokenProcessPool

from pebble import ProcessExpired, ProcessFuture, ProcessPool

from server.compute.fair_share import FairShare
from server.models import clear_worker
from server.models.clear_worker import Answer, ClearSource, InputBounds


class PredictionTimedOut(RuntimeError):
    """The prediction passed its time limit; its worker was stopped."""


class ClearWorkerCrashed(RuntimeError):
    """The worker process died during the prediction (only this request failed)."""


class ClearWorkers:
    """`workers` processes, at most one prediction each at a time, with a time limit each."""

    def __init__(
        self,
        workers: int,
        timeout_seconds: float,
        bounds: InputBounds,
        max_waiting: int,
        owner_max_waiting: int,
        sources: list[ClearSource],
    ) -> None:
        self.workers = workers
        self.timeout_seconds = timeout_seconds
        self.bounds = bounds
        self.share = FairShare(workers, max_waiting, owner_max_waiting, "clear predictions")
        self.sources = sources
        self._pool = self._start()

    def _start(self) -> ProcessPool:
        """A new pool whose workers load the models as they start, a replacement too (after a
        time-out or a crash), so no request's time limit pays for loading them."""
        pool = ProcessPool(
            max_workers=self.workers,
            context=multiprocessing.get_context("spawn"),
            initializer=clear_worker.warm,
            initargs=(self.sources,),
        )
        self._started = bool(self.sources)
        if self._started:  # start them now, not at the first request (none without models)
            for _ in range(self.workers):
                pool.schedule(clear_worker.warm, args=([],))
        return pool

    def _schedule(self, function: object, args: tuple) -> ProcessFuture:
        """Schedule on the pool; a pool that broke (a worker died outside any task, say killed
        while idle) is replaced first, rather than failing every request from then on."""
        self._renew()
        self._started = True
        return self._pool.schedule(function, args=args, timeout=self.timeout_seconds)

    def _renew(self) -> None:
        # Only a started pool is asked: pebble's `active` starts a pool that was not.
        if self._started and not self._pool.active:
            self._pool.stop()
            self._pool = self._start()

    async def _call(self, function: object, source: ClearSource, payload: bytes) -> Answer:
        future = self._schedule(function, (source, payload, self.bounds))
        try:
            return await asyncio.wrap_future(future)
        except TimeoutError:
            raise PredictionTimedOut(
                f"the prediction took longer than {self.timeout_seconds:g} s, this server's "
                "limit (FHE_SERVER_CLEAR_TIMEOUT_SECONDS); send fewer rows"
            ) from None
        except (ProcessExpired, BrokenProcessPool) as expired:
            raise ClearWorkerCrashed(f"the prediction stopped its worker ({expired})") from None
        except (asyncio.CancelledError, CancelledError):
            future.cancel()  # pebble stops the worker of a running task
            raise

    async def predict(
        self, source: ClearSource, payload: bytes, owner: str | None, bounded: bool = True
    ) -> Answer:
        """Parse, bound and predict `payload` in a worker, when the owner's turn comes."""
        async with self.share.turn(owner, bounded):
            return await self._call(clear_worker.predict_payload, source, payload)

    async def check(self, source: ClearSource, payload: bytes, owner: str | None) -> Answer:
        """Parse and bound `payload` in a worker without predicting (a job's admission)."""
        async with self.share.turn(owner):
            return await self._call(clear_worker.check_payload, source, payload)

    async def ping(self) -> str | None:
        """Readiness: a broken pool is replaced here too, so an idle replica recovers."""
        self._renew()
        return None

    def close(self) -> None:
        """Stop the workers (a prediction lasts at most the time limit)."""
        self._pool.close()
        try:
            self._pool.join(timeout=self.timeout_seconds + 5)
        except TimeoutError:
            self._pool.stop()
            self._pool.join()
