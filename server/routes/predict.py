"""The predict route: one ciphertext in and the encrypted result out (FHE), or JSON inputs in and
`{"output", "warnings"}` out (clear)."""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import APIRouter, Header, Request
from fastapi.responses import JSONResponse, Response

from fhe.contract.wire import ClearOutput
from server.deps import InferenceService, Owner, Settings
from server.models.clear import ClearModel
from server.routes.answers import BODY, FHE_WORKERS, STORES, binary, error_responses
from server.routes.body import read_clear_request, read_fhe_request

router = APIRouter()


@router.post(
    "/v1/models/{name}/predict",
    response_class=Response,
    responses={
        200: {
            "model": ClearOutput,
            **binary("application/octet-stream", "the encrypted result (FHE), or (clear) JSON"),
        },
        **error_responses(400, 404, 409, 429, *FHE_WORKERS, *BODY, *STORES),
    },
)
async def predict(
    request: Request,
    name: str,
    inference: InferenceService,
    settings: Settings,
    owner: Owner,
    x_key_id: Annotated[str | None, Header()] = None,
    x_client_spec: Annotated[str | None, Header()] = None,
) -> Response:
    """FHE: one ciphertext (raw bytes) in, the encrypted result out. Clear: JSON
    `{"inputs": ...}` in, `{"output": ..., "warnings": [...]}` out."""
    received = time.perf_counter()
    found = inference.model(name)
    inference.check_room(found, owner)
    if isinstance(found, ClearModel):
        inference.ready_clear(found)
        payload = await read_clear_request(request, settings.max_json_bytes)
        return JSONResponse(await inference.run_clear(found, payload, owner))
    model = inference.fhe_model(name)
    limit = settings.max_ciphertext_bytes
    key, ciphertext = await read_fhe_request(
        request, inference, model, x_key_id, x_client_spec, limit, owner
    )
    result, seconds = await inference.run_fhe(model, key, ciphertext, owner)
    total = time.perf_counter() - received
    return Response(
        content=result,
        media_type="application/octet-stream",
        headers={"X-FHE-Seconds": f"{seconds:.4f}", "X-Server-Seconds": f"{total:.4f}"},
    )
