"""Runs queued jobs on the server's worker pool, notifies callbacks and deletes expired jobs.

At most `concurrency` jobs run at once, so synchronous predictions keep the rest of the pool's
queue. Stopping leaves running jobs marked running; with the embedded store the next start queues
them again, with a shared store their leases pass and any replica claims them, so a job runs at
least once and its result is kept once. With a shared store the runner also renews the leases of
the jobs it runs and sweeps for callbacks that a replica which died did not deliver.

A database that stops answering stops the claims for a while, never the loops: they log and try
again, and a finished run keeps trying to record its result (for up to `settle_seconds`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_delay, wait_exponential

from server import errors
from server.executors import OPERATIONS, run_in
from server.jobs.callbacks import CallbackSender, Delivery
from server.storage.job import Job
from server.storage.protocols import JobStore

log = logging.getLogger("fhe_server.jobs")

CRASH_ATTEMPTS = 2
"""Runs of a job whose run killed its worker before it fails: the crash may have had another
cause (a worker killed from outside), so it gets one more run, and no more."""

STOP_SECONDS = 10.0
"""How long `stop` waits for the loops to end after cancelling them."""


async def operations(function: Callable[..., Any], *args: Any) -> Any:
    """A blocking store call on the operations pool, which tenants' requests never fill."""
    return await run_in(OPERATIONS, function, *args)


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
    lease_seconds: float = 60.0
    settle_seconds: float = 300.0


class JobRunner:
    """The background tasks of the jobs: dispatch, callbacks and expiry."""

    def __init__(
        self,
        store: JobStore,
        execute: Execute,
        policy: JobPolicy,
        callbacks: CallbackSender,
    ) -> None:
        self.store = store
        self.execute = execute
        self.policy = policy
        self.callbacks = callbacks
        self.running = 0
        self._running_ids: Counter[str] = Counter()
        self._notifying: set[str] = set()
        self._wakeup = asyncio.Event()
        self.draining = False
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
        await self._resume_callbacks()
        self._spawn(self._dispatch())
        self._spawn(self._expire())
        if self.store.shares_state:
            self._spawn(self._renew_leases())

    async def _resume_callbacks(self) -> None:
        """Deliver the callbacks that have attempts left and that nobody is delivering."""
        jobs = await operations(self.store.undelivered_callbacks, self.policy.callback_attempts)
        for job in jobs:
            if job.job_id not in self._notifying:
                self._spawn(self._notify(job.job_id))

    @property
    def tasks_left(self) -> int:
        """Loops, runs and deliveries not yet ended (none once `stop` has returned)."""
        return sum(1 for task in self._tasks if not task.done())

    def drain(self) -> None:
        """Claim no more jobs (the server was asked to stop): what is queued stays queued for
        the next start or another replica, instead of starting runs the stop would cut short.
        Safe to call from a signal handler (it only sets a flag)."""
        self.draining = True

    def wake(self) -> None:
        """A job was queued or a slot freed: look at the queue now."""
        self._wakeup.set()

    async def stop(self) -> None:
        """Cancel the loops and the waits on running jobs. With the embedded store they stay
        marked running (the next start queues them again); with a shared store they go back to
        the queue at once, without counting the attempt, for any replica to take."""
        running = list(self._running_ids)
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            # Bounded: a task that swallowed its cancellation must not hold the shutdown.
            _, stuck = await asyncio.wait(tasks, timeout=STOP_SECONDS)
            for task in stuck:
                log.warning("a job task did not stop within %g s; left behind", STOP_SECONDS)
                task.cancel()
        if self.store.shares_state:
            for job_id in running:
                try:
                    async with asyncio.timeout(STOP_SECONDS):
                        await operations(self.store.release, job_id)
                except Exception:  # an unreachable or hung database: the lease hands it on
                    log.warning("job %s left to its lease at shutdown", job_id)

    async def _dispatch(self) -> None:
        while True:
            try:
                while not self.draining and self.running < self.policy.concurrency:
                    job = await operations(self.store.claim_next)
                    if job is None:
                        break
                    self.running += 1
                    self._running_ids[job.job_id] += 1
                    self._spawn(self._run(job))
            except errors.StateUnavailable:
                log.warning("cannot claim jobs: the database does not answer; trying again")
            except Exception:  # the loop must outlive any one failure
                log.exception("claiming jobs failed; trying again")
            self._wakeup.clear()
            # asyncio.timeout, not wait_for: in Python 3.11 wait_for can swallow a cancellation
            # that arrives as the event is set (runs set it as they end), and stop would hang.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    await self._wakeup.wait()

    async def _renew_leases(self) -> None:
        """Keep the leases of this replica's running jobs from passing."""
        while True:
            await asyncio.sleep(self.policy.lease_seconds / 3)
            try:
                await operations(self.store.renew, sorted(self._running_ids))
            except errors.StateUnavailable:
                log.warning("cannot renew job leases: the database does not answer")
            except Exception:  # the loop must outlive any one failure
                log.exception("renewing job leases failed; trying again")

    async def _settle(self, record: Callable[..., bool | None], *args: object) -> bool:
        """Record a job's end (or its return to the queue), trying again while the database does
        not answer; past `settle_seconds` the job stays running and its lease hands it to
        another replica. False when the store says another replica took the job over."""
        async for attempt in AsyncRetrying(
            retry=retry_if_exception_type(errors.StateUnavailable),
            stop=stop_after_delay(self.policy.settle_seconds),
            wait=wait_exponential(multiplier=0.5, max=5),
            reraise=True,
        ):
            with attempt:
                recorded = await operations(record, *args)
        return recorded is not False

    async def _run(self, job: Job) -> None:
        ttl = self.policy.ttl_seconds
        finished = True
        try:
            try:
                payload = await operations(self.store.read_input, job.job_id)
                result, media_type, fhe_seconds = await self.execute(job, payload)
                finished = await self._settle(
                    self.store.finish, job.job_id, result, media_type, fhe_seconds, ttl
                )
            except errors.StateUnavailable:
                # The run could not read its input or keys: back to the queue, this attempt
                # not counted, once the database answers again.
                finished = False
                log.warning("job %s waits for the database to answer again", job.job_id)
                await self._settle(self.store.release, job.job_id)
                await asyncio.sleep(1.0)
            except errors.ServiceError as error:
                if isinstance(error, errors.Busy):
                    finished = False
                    await self._settle(self.store.release, job.job_id)
                    await asyncio.sleep(1.0)
                elif (
                    isinstance(error, errors.UnprocessableCiphertext)
                    and job.attempts < CRASH_ATTEMPTS
                ):
                    finished = False
                    log.warning("job %s crashed its worker; running it once more", job.job_id)
                    await self._settle(self.store.retry, job.job_id)
                else:
                    finished = await self._settle(
                        self.store.fail, job.job_id, error.status, error.code, error.message, ttl
                    )
            except FileNotFoundError:
                finished = await self._settle(
                    self.store.fail, job.job_id, 500, "input_lost", "the job's input is gone", ttl
                )
            except Exception as error:  # a job must end failed, never stay running forever
                log.exception("job %s failed unexpectedly", job.job_id)
                finished = await self._settle(
                    self.store.fail, job.job_id, 500, "internal_error", type(error).__name__, ttl
                )
        except errors.StateUnavailable:
            finished = False
            log.error("job %s: its end could not be recorded; its lease passes it on", job.job_id)
        finally:
            self.running -= 1
            self._running_ids[job.job_id] -= 1
            if self._running_ids[job.job_id] <= 0:
                del self._running_ids[job.job_id]
            self.wake()
        if finished and job.callback_url:
            self._spawn(self._notify(job.job_id))

    async def _notify(self, job_id: str) -> None:
        """POST the job's signed status to its callback URL, retrying with doubling pauses.

        Each attempt checks the URL again; whatever goes wrong is recorded as a failed delivery
        of this job, so one bad URL never stops the notifier.
        """
        self._notifying.add(job_id)
        try:
            await self._deliver(job_id)
        except errors.StateUnavailable:
            log.warning("callback of job %s paused: the database does not answer", job_id)
        finally:
            self._notifying.discard(job_id)

    async def _deliver(self, job_id: str) -> None:
        job = await operations(self.store.get, job_id)
        if job is None or not job.callback_url or job.status not in ("done", "failed"):
            return
        body = {
            "delivery_id": f"{job.job_id}.{job.status}",
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
            final = not delivery.retry or attempt + 1 >= self.policy.callback_attempts
            pause = self.policy.callback_backoff_seconds * 2**attempt
            await operations(
                self.store.record_callback,
                job.job_id,
                delivery.delivered,
                delivery.error,
                final,
                pause + self.callbacks.timeout_seconds,
            )
            if delivery.delivered or not delivery.retry:
                return
            await asyncio.sleep(self.policy.callback_backoff_seconds * 2**attempt)

    async def _expire(self) -> None:
        """Delete expired jobs; with a shared store, also take over callbacks that a replica
        which died left undelivered."""
        while True:
            try:
                removed = await operations(self.store.expire)
                if removed:
                    log.info("%d expired jobs deleted", removed)
                if self.store.shares_state:
                    await self._resume_callbacks()
            except errors.StateUnavailable:
                log.warning("cannot expire jobs: the database does not answer")
            except Exception:  # the loop must outlive any one failure
                log.exception("expiring jobs failed; trying again")
            await asyncio.sleep(self.policy.expiry_interval_seconds)
