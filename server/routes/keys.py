"""The routes of evaluation keys: upload (raw bytes in, their content-addressed id out), status
and deletion, for the token that uploaded them."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Request
from fastapi.responses import JSONResponse, Response

from fhe.contract.wire import KeyStatus, KeyUpload
from server.deps import KeyUploadService, Owner
from server.routes.answers import BODY, FHE_WORKERS, STORES, error_responses
from server.routes.body import check_declared_length

router = APIRouter()


@router.post(
    "/v1/keys",
    status_code=201,
    response_model=KeyUpload,
    responses={
        200: {"model": KeyUpload, "description": "your token already held this key"},
        **error_responses(400, 403, 409, 429, *FHE_WORKERS, *BODY, *STORES),
    },
)
async def upload_keys(
    request: Request,
    uploads: KeyUploadService,
    owner: Owner,
    x_client_spec: Annotated[str | None, Header()] = None,
) -> JSONResponse:
    """Store serialized evaluation keys (raw bytes); the key id is their sha256.

    With `X-Client-Spec`, the keys are checked against that client spec's key set (the number
    and parameters of every bootstrap and key-switch key); without it, they must fit some model.
    201 when the key is new for your token (even if another token holds the same bytes), 200
    when your token already held it; 429 `key_count_exceeded` past the token's number of keys.
    """
    if x_client_spec:
        uploads.model_with_spec(x_client_spec)
    check_declared_length(request, uploads.max_key_bytes, "evaluation keys")
    stored, created = await uploads.upload(request.stream(), x_client_spec, owner)
    body = KeyUpload(
        key_id=stored.key_id,
        bytes=stored.size,
        client_spec=x_client_spec,
        client_specs=list(stored.client_specs),
    )
    return JSONResponse(body.model_dump(mode="json"), status_code=201 if created else 200)


@router.get("/v1/keys/{key_id}", response_model=KeyStatus, responses=error_responses(404, *STORES))
async def key_status(key_id: str, uploads: KeyUploadService, owner: Owner) -> KeyStatus:
    """Whether the server holds this key of yours: its size, the models it was checked for and
    when it was last used. 404 `unknown_key` means: upload it again."""
    return await uploads.status(key_id, owner)


@router.delete(
    "/v1/keys/{key_id}",
    status_code=204,
    response_class=Response,
    responses=error_responses(404, 409, *STORES),
)
async def delete_key(key_id: str, uploads: KeyUploadService, owner: Owner) -> Response:
    """Delete your key: every replica and worker refuses it from now on. 409 `key_in_use` while
    your queued or running jobs need it."""
    await uploads.delete(key_id, owner)
    return Response(status_code=204)
