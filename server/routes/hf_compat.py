"""Hugging Face compatible routes for clear models: the api-inference-community contract.

`POST /models/{name}` and `POST /` (single-model mode) answer exactly as Hugging Face's sklearn
image does: any warning turns into a 400 whose `error` is a JSON string holding the output, errors
carry only `error`, and answers carry `x-compute-time` and `x-compute-type`.
"""

from __future__ import annotations

import json
import time
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from fhe.contract.wire import CompatError, CompatStatus
from server.deps import InferenceService, Owner, Registry, Settings
from server.inference import Inference
from server.models.clear import ClearModel
from server.models.clear_inputs import WARNINGS_MESSAGE
from server.routes.answers import BODY, STORES, error_responses
from server.routes.body import BodyTooLarge, read_body

router = APIRouter()

COMPATIBLE_ANSWERS: dict[int | str, dict[str, Any]] = {
    **error_responses(429, *BODY, *STORES),
    200: {"description": "the model's output, as the sklearn image gives it (any JSON)"},
    **{
        status: {"model": CompatError, "description": description}
        for status, description in (
            (400, "the inputs, the model or a warning, as the image says it: only `error`"),
            (404, "no such clear model, or single-model mode is off"),
            (413, "a body or input over its limit"),
        )
    },
}
"""The answers of the compatible routes: errors in the image's shape where it gives them, the
server's own error body for its bounds (fair share, stores, and the time limit: 422
prediction_timeout, as on every clear route)."""


@router.get("/", response_model=CompatStatus, responses=error_responses())
async def status() -> CompatStatus:
    """api-inference-community's status route."""
    return CompatStatus(ok="ok")


@router.post("/", response_model=Any, responses=COMPATIBLE_ANSWERS)
async def single_model(
    request: Request,
    registry: Registry,
    settings: Settings,
    inference: InferenceService,
    owner: Owner,
) -> JSONResponse:
    """Single-model mode (TASK and MODEL_ID), api-inference-community compatible."""
    name = request.app.state.single_model
    if name is None:
        message = "single-model mode is off: set TASK and MODEL_ID, or POST /models/{name}"
        return JSONResponse({"error": message}, status_code=404)
    return await compatible_answer(registry.get(name), request, settings, inference, owner)


@router.post("/models/{name:path}", response_model=Any, responses=COMPATIBLE_ANSWERS)
async def hosted_model(
    request: Request,
    name: str,
    registry: Registry,
    settings: Settings,
    inference: InferenceService,
    owner: Owner,
) -> JSONResponse:
    """A hosted clear model, Hugging Face inference API compatible."""
    model = registry.get(name)
    if not isinstance(model, ClearModel):
        return JSONResponse({"error": f"no clear model named {name!r}"}, status_code=404)
    return await compatible_answer(model, request, settings, inference, owner)


async def compatible_answer(
    model: ClearModel,
    request: Request,
    settings: Settings,
    inference: Inference,
    owner: str | None,
) -> JSONResponse:
    """Answer as api-inference-community's sklearn image would, with its compute headers."""
    started = time.perf_counter()
    status, body = await _compatible_body(model, request, settings.max_json_bytes, inference, owner)
    headers = {
        "x-compute-time": f"{time.perf_counter() - started:.3f}",
        "x-compute-type": settings.compute_type,
    }
    return JSONResponse(body, status_code=status, headers=headers)


async def _compatible_body(
    model: ClearModel, request: Request, limit: int, inference: Inference, owner: str | None
) -> tuple[int, Any]:
    """The status and JSON body the image gives for this request (parsed and predicted in a
    clear worker; the server's own bounds, time limit and fair share answer as elsewhere)."""
    inference.check_room(model, owner)
    try:
        payload = await read_body(request, limit, "the JSON body")
    except BodyTooLarge as error:
        return 413, {"error": str(error)}
    # The worker parses before it loads, as the image does: a body it cannot read is a 400
    # even for a model that cannot load.
    kind, value, extra = await inference.clear_answer(model, payload, owner)
    if kind == "too_large":
        return 413, {"error": value}
    if kind in ("invalid", "refused"):
        return 400, {"error": extra}
    if kind == "unloadable":
        reason = model.load_error or value
        return 400, {"error": f"An error occurred while loading the model: {reason}"}
    if kind == "failed":
        body: dict[str, Any] = {"error": value}
        if extra:
            body["warnings"] = sorted(set(extra))
        return 400, body
    output, warnings = value, extra
    if warnings:
        inner = {"error": WARNINGS_MESSAGE, "output": output, "warnings": warnings}
        return 400, {"error": json.dumps(inner), "warnings": sorted(set(warnings))}
    return 200, output
