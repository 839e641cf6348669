"""Runs queued jobs on the server's worker pool, notifies callbacks and deletes expired jobs.

At most `concurrency` jobs run at once, so synchronous predictions keep the rest of the pool's
queue. Stopping leaves running jobs marked running; the next start queues them again, so a job
runs at least once and its result is kept once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from server import errors, metrics
from server.jobs.callbacks import CallbackSender, Delivery
from server.storage.jobs import Job, JobStore

log = logging.getLogger("fhe_server.jobs")

CRASH_ATTEMPTS = 2
"""Runs of a job whose run killed its worker before it fails: the crash may have had another
cause (a worker killed from outside), so it gets one more run, and no more."""

Execute = Callable[[Job, bytes], Awaitable[tuple[bytes, str, float | None]]]
"""Runs one job on its input: returns the result bytes, their media type and the FHE seconds."""


@dataclass(frozen=True)
class JobPolicy:
    """How jobs run and how long their results stay."""

    concurrency: int
    ttl_seconds: float
    callback_attempts: int
    callback_backoff_seconds: float
    expiry_interval_seconds: float = 30.0


class JobRunner:
    """The background tasks of the jobs: dispatch, callbacks and expiry."""

    def __init__(
        self, store: JobStore, execute: Execute, policy: JobPolicy, callbacks: CallbackSender
    ) -> None:
        self.store = store
        self.execute = execute
        self.policy = policy
        self.callbacks = callbacks
        self.running = 0
        self._wakeup = asyncio.Event()
        self._tasks: set[asyncio.Task] = set()

    def _spawn(self, coroutine: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def start(self) -> None:
        """Queue interrupted jobs again, resume undelivered callbacks, start the loops."""
        requeued = self.store.requeue_interrupted(self.policy.ttl_seconds)
        if requeued:
            log.warning("%d interrupted jobs queued again", requeued)
        for job in self.store.undelivered_callbacks(self.policy.callback_attempts):
            self._spawn(self._notify(job.job_id))
        self._spawn(self._dispatch())
        self._spawn(self._expire())

    def wake(self) -> None:
        """A job was queued or a slot freed: look at the queue now."""
        self._wakeup.set()

    async def stop(self) -> None:
        """Cancel the loops and the waits on running jobs (they stay marked running)."""
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def _dispatch(self) -> None:
        while True:
            while self.running < self.policy.concurrency:
                job = self.store.claim_next()
                if job is None:
                    break
                self.running += 1
                if job.attempts == 1 and job.started is not None:
                    metrics.QUEUE_WAIT.observe(max(0.0, job.started - job.created))
                self._spawn(self._run(job))
            self._wakeup.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), timeout=1.0)

    async def _run(self, job: Job) -> None:
        ttl = self.policy.ttl_seconds
        finished = True
        try:
            payload = await asyncio.to_thread(self.store.input_path(job.job_id).read_bytes)
            result, media_type, fhe_seconds = await self.execute(job, payload)
            await asyncio.to_thread(
                self.store.finish, job.job_id, result, media_type, fhe_seconds, ttl
            )
        except errors.ServiceError as error:
            if isinstance(error, errors.Busy):
                finished = False
                self.store.release(job.job_id)
                await asyncio.sleep(1.0)
            elif (
                isinstance(error, errors.UnprocessableCiphertext) and job.attempts < CRASH_ATTEMPTS
            ):
                finished = False
                log.warning("job %s crashed its worker; running it once more", job.job_id)
                self.store.retry(job.job_id)
            else:
                self.store.fail(job.job_id, error.status, error.code, error.message, ttl)
        except FileNotFoundError:
            self.store.fail(job.job_id, 500, "input_lost", "the job's input is gone", ttl)
        except Exception as error:  # a job must end failed, never stay running forever
            log.exception("job %s failed unexpectedly", job.job_id)
            self.store.fail(job.job_id, 500, "internal_error", f"{type(error).__name__}", ttl)
        finally:
            self.running -= 1
            self.wake()
        if finished and job.callback_url:
            self._spawn(self._notify(job.job_id))

    async def _notify(self, job_id: str) -> None:
        """POST the job's signed status to its callback URL, retrying with doubling pauses.

        Each attempt checks the URL again; whatever goes wrong is recorded as a failed delivery
        of this job, so one bad URL never stops the notifier.
        """
        job = self.store.get(job_id)
        if job is None or not job.callback_url:
            return
        body = {
            "job_id": job.job_id,
            "model": job.model,
            "status": job.status,
            "status_url": job.status_url,
            "result_url": job.result_url,
            "error": job.public()["error"],
        }
        for attempt in range(job.callback_attempts, self.policy.callback_attempts):
            try:
                delivery = await self.callbacks.deliver(job.callback_url, job.owner, body)
            except Exception as error:  # a bad stored URL must fail its job's callback only
                log.exception("callback of job %s failed unexpectedly", job.job_id)
                delivery = Delivery(False, f"internal_error: {type(error).__name__}", retry=False)
            self.store.record_callback(job.job_id, delivery.delivered, delivery.error)
            if delivery.delivered or not delivery.retry:
                return
            await asyncio.sleep(self.policy.callback_backoff_seconds * 2**attempt)

    async def _expire(self) -> None:
        while True:
            removed = await asyncio.to_thread(self.store.expire)
            if removed:
                log.info("%d expired jobs deleted", removed)
            await asyncio.sleep(self.policy.expiry_interval_seconds)
