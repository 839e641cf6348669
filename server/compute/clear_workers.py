"""A pool of processes for clear (scikit-learn) predictions, apart from the FHE workers and from
the event loop's threads, entered through a fair share across tokens.

A request's body is parsed, bounded and predicted in a worker; a prediction that passes the time
limit has its worker stopped (pebble starts another), and one that crashes its worker fails alone.
"""

from __future__ import annotations

import asyncio
import multiprocessing
from concurrent.futures import CancelledError

from pebble import ProcessExpired, ProcessPool

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
        # Each worker loads the models as it starts, a replacement too (after a time-out or a
        # crash), so no request's time limit pays for loading scikit-learn and the model.
        self._pool = ProcessPool(
            max_workers=workers,
            context=multiprocessing.get_context("spawn"),
            initializer=clear_worker.warm,
            initargs=(sources,),
        )
        for _ in range(workers):  # start them now, not at the first request
            self._pool.schedule(clear_worker.warm, args=([],))

    async def _call(self, function: object, source: ClearSource, payload: bytes) -> Answer:
        future = self._pool.schedule(
            function, args=(source, payload, self.bounds), timeout=self.timeout_seconds
        )
        try:
            return await asyncio.wrap_future(future)
        except TimeoutError:
            raise PredictionTimedOut(
                f"the prediction took longer than {self.timeout_seconds:g} s, this server's "
                "limit (FHE_SERVER_CLEAR_TIMEOUT_SECONDS); send fewer rows"
            ) from None
        except ProcessExpired as expired:
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

    def close(self) -> None:
        """Stop the workers (a prediction lasts at most the time limit)."""
        self._pool.close()
        try:
            self._pool.join(timeout=self.timeout_seconds + 5)
        except TimeoutError:
            self._pool.stop()
            self._pool.join()
