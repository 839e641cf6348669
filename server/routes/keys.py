"""The route of key uploads: raw evaluation-key bytes in, their content-addressed id out."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Request
from fastapi.responses import JSONResponse

from server.deps import KeyUploadService, Owner
from server.routes.body import check_declared_length

router = APIRouter()


@router.post("/v1/keys", status_code=201)
async def upload_keys(
    request: Request,
    uploads: KeyUploadService,
    owner: Owner,
    x_client_spec: Annotated[str | None, Header()] = None,
) -> JSONResponse:
    """Store serialized evaluation keys (raw bytes); the key id is their sha256.

    With `X-Client-Spec`, the keys are checked against that client spec's key set (the number
    and parameters of every bootstrap and key-switch key); without it, they must fit some model.
    """
    if x_client_spec:
        uploads.model_with_spec(x_client_spec)
    check_declared_length(request, uploads.max_key_bytes, "evaluation keys")
    stored, created = await uploads.upload(request.stream(), x_client_spec, owner)
    body = {
        "key_id": stored.key_id,
        "bytes": stored.size,
        "client_spec": x_client_spec,
        "client_specs": list(stored.client_specs),
    }
    return JSONResponse(body, status_code=201 if created else 200)
