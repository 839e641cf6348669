"""Accepting jobs and answering for them: the per-token and global limits, the callback check,
the queued row (the 202's promise), and a job's status and result for its owner."""

from __future__ import annotations

import time

from server import errors
from server.allow_list import AllowList
from server.jobs.callbacks import checked_callback_url
from server.jobs.runner import JobRunner
from server.storage.calls import store_call
from server.storage.job import Job, JobLimits, JobRefused, new_job_id
from server.storage.protocols import JobStore


def refusal(refused: JobRefused) -> errors.ServiceError:
    """The caller's error for a limit that refused a job."""
    if refused.reason == "owner_in_flight":
        return errors.TooManyJobs(str(refused), headers={"Retry-After": "10"})
    if refused.reason == "owner_stored_bytes":
        return errors.StoredBytesExceeded(str(refused), headers={"Retry-After": "60"})
    return errors.Busy(str(refused), headers={"Retry-After": "30"})


class JobQueue:
    """The job service the routes call; the runner does the work in the background."""

    def __init__(
        self,
        store: JobStore,
        runner: JobRunner,
        callback_allow: AllowList,
        base_url: str,
        limits: JobLimits,
    ) -> None:
        self.store = store
        self.runner = runner
        self.callback_allow = callback_allow
        self.base_url = base_url
        self.limits = limits
        self.token_max_jobs_in_flight = limits.owner_max_in_flight
        self.max_queued_jobs = limits.max_queued

    async def check_room(self, owner: str | None) -> None:
        """429 when the token has its limit of jobs in flight, 503 when the queue is full: a
        cheap refusal before the body is read (`enqueue` checks again, atomically)."""
        if owner is not None:
            in_flight = await store_call(self.store.count, "queued", "running", owner=owner)
            if in_flight >= self.token_max_jobs_in_flight:
                raise errors.TooManyJobs(
                    f"this token has {in_flight} jobs queued or running, its limit; wait for "
                    "some to finish",
                    headers={"Retry-After": "10"},
                )
        if await store_call(self.store.count, "queued") >= self.max_queued_jobs:
            raise errors.Busy(
                f"{self.max_queued_jobs} jobs are already queued; try again later",
                headers={"Retry-After": "30"},
            )

    async def callback_url(self, url: str | None) -> str | None:
        """The callback URL when the operator's policy lets the server POST to it; 400 if not."""
        return await checked_callback_url(url, self.callback_allow)

    async def enqueue(
        self,
        model: str,
        kind: str,
        payload: bytes,
        owner: str | None,
        callback_url: str | None = None,
        key_id: str | None = None,
        client_spec: str | None = None,
    ) -> Job:
        """Keep the job (input synced, row committed, limits checked in the same transaction)
        and wake the runner: after this, a 202."""
        job = Job(
            job_id=new_job_id(),
            model=model,
            kind=kind,
            status="queued",
            created=time.time(),
            base_url=self.base_url,
            key_id=key_id,
            client_spec=client_spec,
            owner=owner,
            callback_url=callback_url,
        )
        try:
            await store_call(self.store.add, job, payload, self.limits)
        except JobRefused as refused:
            raise refusal(refused) from None
        self.runner.wake()
        return job

    async def delete(self, job_id: str, owner: str | None) -> None:
        """Delete the caller's finished job and its result; 409 while it is queued or
        running, 404 for unknown ones and other tokens'."""
        job = await self.owned(job_id, owner)
        if not await store_call(self.store.delete, job.job_id):
            raise errors.JobNotFinished(
                f"job {job_id} is {job.status}; delete it when it has finished",
                headers={"Retry-After": "1"},
                job_status=job.status,
            )

    async def owned(self, job_id: str, owner: str | None) -> Job:
        """The caller's job; 404 for unknown ones and other tokens' (not revealed)."""
        job = await store_call(self.store.get, job_id)
        if job is None or (owner is not None and job.owner != owner):
            raise errors.UnknownJob(f"no job {job_id!r} here (unknown, or its result expired)")
        return job

    async def list(self, owner: str | None, limit: int) -> list[Job]:
        """The caller's newest jobs first."""
        return await store_call(self.store.list, owner=owner, limit=limit)

    async def result(self, job_id: str, owner: str | None) -> tuple[Job, bytes]:
        """A finished job and its result; 409 while it runs or when it failed."""
        job = await self.owned(job_id, owner)
        if job.status in ("queued", "running"):
            raise errors.JobNotFinished(
                f"job {job_id} is {job.status}; poll {job.status_url}",
                headers={"Retry-After": "1"},
                job_status=job.status,
            )
        if job.status == "failed":
            raise errors.JobFailed(
                f"job {job_id} failed: {job.error}", job_error=job.public()["error"]
            )
        result = await store_call(self.store.read_result, job_id)
        if result is None:
            raise errors.UnknownJob(f"the result of job {job_id} has expired")
        return job, result
