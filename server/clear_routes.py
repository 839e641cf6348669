"""Routes for clear scikit-learn models: the api-inference-community contract and the native one.

The compatible routes (`POST /models/{name}`, `POST /` in single-model mode) answer exactly as
Hugging Face's sklearn image does: any warning turns into a 400 whose `error` is a JSON string
holding the output. The native route answers 200 with the output and the warnings beside it.
"""

from __future__ import annotations

import json
import os
import re
import sys
import threading
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from server.body import BodyTooLarge, read_body
from server.clear_model import (
    TASKS,
    ClearModel,
    InvalidInputs,
    PredictionFailed,
    load_clear_model,
)
from server.errors import APIError
from server.settings import ServerSettings

WARNINGS_MESSAGE = "There were warnings while running the model."
TOO_DEEP = "the body nests arrays or objects too deeply"
NOT_JSON_OUTPUT = (
    "the model's output holds NaN or infinity, which JSON cannot carry; the inputs are probably "
    "far outside the range the model was trained on"
)

_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
"""A `\\uD800`-`\\uDFFF` escape: only bodies holding one can decode to a lone surrogate."""

# warnings.catch_warnings changes process-wide state, so predictions that record warnings
# run one at a time.
_predict_lock = threading.Lock()


def _predict_locked(model: ClearModel, inputs: Any) -> tuple[Any, list[str]]:
    """Predict under the lock; PredictionFailed when the output cannot leave as strict JSON."""
    with _predict_lock:
        output, warnings = model.predict(inputs)
    try:
        # Responses refuse NaN and infinity, which a regression can reach on extreme inputs.
        json.dumps(output, allow_nan=False)
    except ValueError:
        raise PredictionFailed(NOT_JSON_OUTPUT, warnings) from None
    return output, warnings


def _check_unicode(payload: Any) -> None:
    """InvalidInputs for a lone UTF-16 surrogate: it is not text, and answers quoting it fail."""
    # JSON lets `\\ud800` stand alone; Python decodes it to a str that UTF-8 cannot encode.
    try:
        json.dumps(payload, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidInputs(
            "the body holds a lone UTF-16 surrogate escape (\\ud800-\\udfff without its pair), "
            "which is not a character"
        ) from None
    except RecursionError:
        raise InvalidInputs(TOO_DEEP) from None


def parse_inputs(body: bytes) -> Any:
    """The `inputs` of a JSON body; InvalidInputs (a 400, not a 500) for any body it cannot take."""
    # Bad UTF-8, bad syntax, nesting past the recursion limit, integers longer than int() reads
    # and lone surrogate escapes: each is the client's error, answered with a message.
    try:
        payload = json.loads(body.decode("utf-8"))
    except UnicodeDecodeError:
        raise InvalidInputs("the body is not valid UTF-8") from None
    except json.JSONDecodeError as error:
        raise InvalidInputs(f"the body is not valid JSON: {error}") from None
    except RecursionError:
        raise InvalidInputs(TOO_DEEP) from None
    except ValueError:
        # json.loads turns integer literals into int, which refuses more digits than the limit.
        raise InvalidInputs(
            f"the body holds an integer of more than {sys.get_int_max_str_digits()} digits"
        ) from None
    if _SURROGATE_ESCAPE.search(body):
        _check_unicode(payload)
    if (
        isinstance(payload, dict)
        and "inputs" not in payload
        and isinstance(payload.get("table"), dict)
    ):
        # huggingface_hub's InferenceClient sends tabular rows as {"table": {column: [...]}}.
        return {"data": payload["table"]}
    if not isinstance(payload, dict) or "inputs" not in payload:
        raise InvalidInputs('the body must be a JSON object with an "inputs" key')
    return payload["inputs"]


async def read_inputs(request: Request, limit: int) -> Any:
    """The `inputs` of the request's JSON body, read under `limit` bytes."""
    return parse_inputs(await read_body(request, limit, "the JSON body"))


def ready_clear(model: ClearModel) -> ClearModel:
    """The model when it loaded; 400 saying why it did not otherwise."""
    if not model.ready:
        raise APIError(
            400, "model_unloadable", f"model {model.name!r} cannot load: {model.load_error}"
        )
    return model


async def run_native(model: ClearModel, inputs: Any) -> dict[str, Any]:
    """`{"output", "warnings"}` of one prediction; APIError 400 when it cannot be made."""
    ready_clear(model)
    try:
        output, warnings = await run_in_threadpool(_predict_locked, model, inputs)
    except (InvalidInputs, PredictionFailed) as error:
        raise APIError(400, "prediction_failed", str(error)) from None
    return {"output": output, "warnings": warnings}


async def compatible_answer(model: ClearModel, request: Request, limit: int) -> JSONResponse:
    """Answer as api-inference-community's sklearn image would."""
    try:
        inputs = await read_inputs(request, limit)
    except BodyTooLarge as error:
        return JSONResponse({"error": str(error)}, status_code=413)
    except InvalidInputs as error:
        return JSONResponse({"error": str(error)}, status_code=400)
    if not model.ready:
        message = f"An error occurred while loading the model: {model.load_error}"
        return JSONResponse({"error": message}, status_code=400)
    try:
        output, warnings = await run_in_threadpool(_predict_locked, model, inputs)
    except InvalidInputs as error:
        return JSONResponse({"error": str(error)}, status_code=400)
    except PredictionFailed as error:
        body: dict[str, Any] = {"error": str(error)}
        if error.warnings:
            body["warnings"] = sorted(set(error.warnings))
        return JSONResponse(body, status_code=400)
    if warnings:
        inner = {"error": WARNINGS_MESSAGE, "output": output, "warnings": warnings}
        body = {"error": json.dumps(inner), "warnings": sorted(set(warnings))}
        return JSONResponse(body, status_code=400)
    return JSONResponse(output)


async def native_answer(model: ClearModel, request: Request, limit: int) -> JSONResponse:
    """200 with output and warnings; 4xx with a message for bad input or an unloadable model."""
    try:
        inputs = await read_inputs(request, limit)
    except InvalidInputs as error:
        raise APIError(400, "invalid_inputs", str(error)) from None
    return JSONResponse(await run_native(model, inputs))


def resolve_model_id(model_id: str, models_dir: Path) -> Path:
    """A local directory, a name under the models directory, or a hub repository id."""
    local = Path(model_id).expanduser()
    if local.is_dir():
        return local
    if (models_dir / model_id).is_dir():
        return models_dir / model_id
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(repo_id=model_id))


def single_model_from_env(settings: ServerSettings) -> ClearModel | None:
    """The model of single-model mode (env TASK and MODEL_ID), or None when they are unset.

    An unsupported TASK stops start-up with a clear error.
    """
    task, model_id = os.environ.get("TASK"), os.environ.get("MODEL_ID")
    if not task and not model_id:
        return None
    if task not in TASKS:
        raise SystemExit(f"TASK={task!r} is not supported; supported tasks: {', '.join(TASKS)}")
    if not model_id:
        raise SystemExit("single-model mode needs MODEL_ID beside TASK")
    name = Path(model_id).name if Path(model_id).is_dir() else model_id
    try:
        path = resolve_model_id(model_id, settings.models_dir)
    except Exception as error:  # the hub client raises many kinds; serve the reason instead
        model = ClearModel(name, Path(model_id), task, {}, "", "", None)
        model.load_error = f"cannot fetch {model_id}: {error}"
        return model
    return load_clear_model(path, name=name, policy=settings.policy(name), task=task)


def clear_router(settings: ServerSettings) -> APIRouter:
    """The compatible routes, bound to the app's registry."""
    router = APIRouter()
    limit = settings.max_json_bytes

    @router.get("/")
    async def status() -> dict[str, str]:
        """api-inference-community's status route."""
        return {"ok": "ok"}

    @router.post("/")
    async def single_model(request: Request) -> JSONResponse:
        """Single-model mode (env TASK and MODEL_ID), api-inference-community compatible."""
        name = request.app.state.single_model
        if name is None:
            message = "single-model mode is off: set TASK and MODEL_ID, or POST /models/{name}"
            return JSONResponse({"error": message}, status_code=404)
        return await compatible_answer(request.app.state.registry.get(name), request, limit)

    @router.post("/models/{name:path}")
    async def hosted_model(request: Request, name: str) -> JSONResponse:
        """A hosted clear model, Hugging Face inference API compatible."""
        model = request.app.state.registry.get(name)
        if not isinstance(model, ClearModel):
            return JSONResponse({"error": f"no clear model named {name!r}"}, status_code=404)
        return await compatible_answer(model, request, limit)

    return router
