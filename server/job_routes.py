"""Routes of the asynchronous jobs: submit (202), status, result and listing.

A job takes the same body and headers as the model's predict route and is checked the same way
before it is accepted, so a request that predict would refuse is refused here too, at once.
"""

from __future__ import annotations

import json
import time
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import FileResponse, JSONResponse

from server.access import owner_of
from server.body import read_body
from server.callbacks import AllowList, checked_callback_url
from server.clear_model import ClearModel, InvalidInputs
from server.clear_routes import parse_inputs, ready_clear, run_native
from server.errors import APIError
from server.fhe_call import (
    check_client_spec,
    evaluate,
    find_model,
    fitting_key,
    read_fhe_request,
    ready_fhe,
)
from server.jobs import Job, new_job_id
from server.settings import ServerSettings


def _parsed(payload: bytes) -> Any:
    try:
        return parse_inputs(payload)
    except InvalidInputs as error:
        raise APIError(400, "invalid_inputs", str(error)) from None


async def execute_job(state: Any, job: Job, payload: bytes) -> tuple[bytes, str, float | None]:
    """Run one job as its synchronous call would, checking again what may have changed."""
    model = find_model(state, job.model)
    if job.kind == "clear":
        if not isinstance(model, ClearModel):
            raise APIError(409, "model_changed", f"model {job.model!r} is no longer a clear model")
        answer = await run_native(model, _parsed(payload))
        return json.dumps(answer).encode(), "application/json", None
    fhe_model = ready_fhe(model)
    check_client_spec(fhe_model, job.client_spec)
    key = await fitting_key(state, job.key_id, fhe_model, job.owner)
    result, seconds = await evaluate(state, fhe_model, key, payload)
    return result, "application/octet-stream", seconds


def jobs_router(settings: ServerSettings) -> APIRouter:
    """The job routes; the store and runner live on `app.state`."""
    router = APIRouter()
    callback_allow = AllowList.parse(settings.callback_allow)

    def _job(request: Request, job_id: str) -> Job:
        job = request.app.state.jobs.get(job_id)
        owner = owner_of(request)
        if job is None or (owner is not None and job.owner != owner):
            raise APIError(
                404, "unknown_job", f"no job {job_id!r} here (unknown, or its result expired)"
            )
        return job

    @router.post("/v1/models/{name}/jobs", status_code=202)
    async def submit_job(
        request: Request,
        name: str,
        x_key_id: Annotated[str | None, Header()] = None,
        x_client_spec: Annotated[str | None, Header()] = None,
        x_callback_url: Annotated[str | None, Header()] = None,
    ) -> JSONResponse:
        """Queue a prediction: the same body and headers as predict, plus an optional
        `X-Callback-Url` notified when the job ends. Answers 202 with the job id and its URLs."""
        state = request.app.state
        owner = owner_of(request)
        model = find_model(state, name)
        if owner is not None:
            in_flight = state.jobs.count("queued", "running", owner=owner)
            if in_flight >= settings.token_max_jobs_in_flight:
                raise APIError(
                    429,
                    "too_many_jobs",
                    f"this token has {in_flight} jobs queued or running, its limit; wait for "
                    "some to finish",
                    headers={"Retry-After": "10"},
                )
        if state.jobs.count("queued") >= settings.max_queued_jobs:
            raise APIError(
                503,
                "busy",
                f"{settings.max_queued_jobs} jobs are already queued; try again later",
                headers={"Retry-After": "30"},
            )
        callback = await checked_callback_url(x_callback_url, callback_allow)
        if isinstance(model, ClearModel):
            ready_clear(model)
            payload = await read_body(request, settings.max_json_bytes, "the JSON body")
            _parsed(payload)
            kind, key_id = "clear", None
        else:
            key, payload = await read_fhe_request(
                request,
                ready_fhe(model),
                x_key_id,
                x_client_spec,
                settings.max_ciphertext_bytes,
                owner,
            )
            kind, key_id = "fhe", key.key_id
        job = Job(
            job_id=new_job_id(),
            model=name,
            kind=kind,
            status="queued",
            created=time.time(),
            base_url=settings.public_base_url(),
            key_id=key_id,
            client_spec=x_client_spec if kind == "fhe" else None,
            owner=owner,
            callback_url=callback,
        )
        state.jobs.add(job, payload)
        state.job_runner.wake()
        return JSONResponse(job.public(), status_code=202, headers={"Location": job.status_url})

    @router.get("/v1/jobs")
    async def list_jobs(
        request: Request, limit: Annotated[int, Query(ge=1, le=1000)] = 100
    ) -> dict[str, list[dict]]:
        """The caller's newest jobs first, with their status."""
        jobs = request.app.state.jobs.list(owner=owner_of(request), limit=limit)
        return {"jobs": [job.public() for job in jobs]}

    @router.get("/v1/jobs/{job_id}")
    async def job_status(request: Request, job_id: str) -> dict:
        """queued, running, done or failed, with timings, the error and callback delivery."""
        return _job(request, job_id).public()

    @router.get(
        "/v1/jobs/{job_id}/result",
        response_class=FileResponse,
        responses={200: {"content": {"application/octet-stream": {}, "application/json": {}}}},
    )
    async def job_result(request: Request, job_id: str) -> FileResponse:
        """The result of a finished job: ciphertext bytes (FHE) or `{"output", "warnings"}`."""
        job = _job(request, job_id)
        if job.status in ("queued", "running"):
            raise APIError(
                409,
                "job_not_finished",
                f"job {job_id} is {job.status}; poll {job.status_url}",
                headers={"Retry-After": "1"},
                job_status=job.status,
            )
        if job.status == "failed":
            raise APIError(
                409,
                "job_failed",
                f"job {job_id} failed: {job.error}",
                job_error=job.public()["error"],
            )
        path = request.app.state.jobs.result_path(job_id)
        if not path.is_file():
            raise APIError(404, "unknown_job", f"the result of job {job_id} has expired")
        headers = {"X-Job-Id": job.job_id}
        if job.fhe_seconds is not None:
            headers["X-FHE-Seconds"] = f"{job.fhe_seconds:.4f}"
        return FileResponse(
            path,
            media_type=job.result_type,
            headers=headers,
        )

    return router
