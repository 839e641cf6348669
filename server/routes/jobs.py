"""Routes of the asynchronous jobs: submit (202), status, result and listing.

A job takes the same body and headers as the model's predict route and is checked the same way
before it is accepted, so a request that predict would refuse is refused here too, at once.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import JSONResponse, Response

from fhe.contract.wire import ClearOutput, JobList, JobStatus
from server.deps import InferenceService, Owner, Queue, Settings
from server.models.clear import ClearModel
from server.routes.answers import BODY, STORES, binary, error_responses
from server.routes.body import read_clear_request, read_fhe_request

router = APIRouter()


@router.post(
    "/v1/models/{name}/jobs",
    status_code=202,
    response_model=JobStatus,
    responses=error_responses(400, 404, 409, 429, *BODY, *STORES),
)
async def submit_job(
    request: Request,
    name: str,
    inference: InferenceService,
    queue: Queue,
    settings: Settings,
    owner: Owner,
    x_key_id: Annotated[str | None, Header()] = None,
    x_client_spec: Annotated[str | None, Header()] = None,
    x_callback_url: Annotated[str | None, Header()] = None,
) -> JSONResponse:
    """Queue a prediction: the same body and headers as predict, plus an optional
    `X-Callback-Url` notified when the job ends. Answers 202 with the job id and its URLs."""
    model = inference.model(name)
    await queue.check_room(owner)
    callback = await queue.callback_url(x_callback_url)
    if isinstance(model, ClearModel):
        inference.ready_clear(model)
        payload = await read_clear_request(request, settings.max_json_bytes)
        await inference.check_clear(model, payload, owner)
        job = await queue.enqueue(name, "clear", payload, owner, callback)
    else:
        fhe_model, limit = inference.fhe_model(name), settings.max_ciphertext_bytes
        key, payload = await read_fhe_request(
            request, inference, fhe_model, x_key_id, x_client_spec, limit, owner
        )
        job = await queue.enqueue(name, "fhe", payload, owner, callback, key.key_id, x_client_spec)
    body = JobStatus.model_validate(job.public()).model_dump(mode="json")
    return JSONResponse(body, status_code=202, headers={"Location": job.status_url})


@router.get("/v1/jobs", response_model=JobList, responses=error_responses(*STORES))
async def list_jobs(
    queue: Queue, owner: Owner, limit: Annotated[int, Query(ge=1, le=1000)] = 100
) -> JobList:
    """The caller's newest jobs first, with their status."""
    jobs = [JobStatus.model_validate(job.public()) for job in await queue.list(owner, limit)]
    return JobList(jobs=jobs)


@router.get("/v1/jobs/{job_id}", response_model=JobStatus, responses=error_responses(404, *STORES))
async def job_status(job_id: str, queue: Queue, owner: Owner) -> JobStatus:
    """queued, running, done or failed, with timings, the error and callback delivery."""
    return JobStatus.model_validate((await queue.owned(job_id, owner)).public())


@router.delete(
    "/v1/jobs/{job_id}",
    status_code=204,
    response_class=Response,
    responses=error_responses(404, 409, *STORES),
)
async def delete_job(job_id: str, queue: Queue, owner: Owner) -> Response:
    """Delete your finished job and its result now (they expire on their own otherwise),
    freeing the bytes it counts toward your stored-bytes limit. 409 while it runs."""
    await queue.delete(job_id, owner)
    return Response(status_code=204)


@router.get(
    "/v1/jobs/{job_id}/result",
    response_class=Response,
    responses={
        200: {
            "model": ClearOutput,
            **binary("application/octet-stream", "the encrypted result (FHE), or (clear) JSON"),
        },
        **error_responses(404, 409, *STORES),
    },
)
async def job_result(job_id: str, queue: Queue, owner: Owner) -> Response:
    """The result of a finished job: ciphertext bytes (FHE) or `{"output", "warnings"}`."""
    job, result = await queue.result(job_id, owner)
    headers = {"X-Job-Id": job.job_id}
    if job.fhe_seconds is not None:
        headers["X-FHE-Seconds"] = f"{job.fhe_seconds:.4f}"
    return Response(result, media_type=job.result_type, headers=headers)
