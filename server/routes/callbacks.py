"""The route that hands a token the secret its job callbacks are signed with."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from fhe.contract.callback_signature import ALGORITHM, SIGNATURE_HEADER
from fhe.contract.wire import CallbackSecret
from server.deps import CallbackKey, Owner
from server.jobs.callbacks import callback_secret
from server.routes.answers import error_responses

router = APIRouter()


@router.get("/v1/callback-secret", response_model=CallbackSecret, responses=error_responses())
async def get_callback_secret(key: CallbackKey, owner: Owner) -> JSONResponse:
    """The secret that signs this token's job callbacks, and how the signature is sent."""
    body = CallbackSecret(
        secret=callback_secret(key, owner),
        header=SIGNATURE_HEADER,
        algorithm=ALGORITHM,
        format="t=<unix seconds>,v1=<hex HMAC-SHA256(secret, '<t>.' + body)>",
    )
    return JSONResponse(body.model_dump(mode="json"), headers={"Cache-Control": "no-store"})
