"""Typed FastAPI dependencies: who is calling (bearer API tokens) and the services routes use.

Keys and jobs belong to the token name that created them.

Tokens are configured as `{"name": "token"}`; a value written `sha256:<hex>` holds the token's
hash instead of the token. Without tokens the server runs only in development mode, where every
caller is trusted and owns everything.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from server import errors
from server.inference import Inference
from server.jobs.queue import JobQueue
from server.key_uploads import KeyUploads
from server.models.registry import ModelRegistry
from server.readiness import Readiness
from server.settings import ServerSettings

log = logging.getLogger("fhe_server")

PUBLIC_PATHS = frozenset(
    {"/healthz", "/readyz", "/metrics", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"}
)

bearer = HTTPBearer(auto_error=False, description="an API token from the operator")


class Access:
    """Checks bearer tokens against the configured ones; None as the owner in development mode."""

    def __init__(self, tokens: dict[str, str], dev_mode: bool) -> None:
        if not tokens and not dev_mode:
            raise errors.ConfigurationError(
                'no API tokens configured: set FHE_SERVER_TOKENS=\'{"<name>": "<token>"}\' '
                "(a value may be sha256:<hex of the token>), or pass --dev for local development"
            )
        self.dev_mode = dev_mode and not tokens
        self._digests = {
            name: (
                value.removeprefix("sha256:")
                if value.startswith("sha256:")
                else hashlib.sha256(value.encode()).hexdigest()
            )
            for name, value in tokens.items()
        }
        if self.dev_mode:
            log.warning(
                "development mode: no API tokens, every caller is trusted and sees every key "
                "and job; do not expose this server"
            )

    def owner(self, token: str | None) -> str | None:
        """The name of the token's owner; 401 when it is missing or unknown."""
        if self.dev_mode:
            return None
        if not token:
            raise errors.Unauthorized(
                "an API token is required: send `Authorization: Bearer <token>`",
                headers={"WWW-Authenticate": "Bearer"},
            )
        digest = hashlib.sha256(token.encode()).hexdigest()
        for name, expected in self._digests.items():
            if hmac.compare_digest(digest, expected):
                return name
        raise errors.Unauthorized("unknown API token", headers={"WWW-Authenticate": "Bearer"})


async def authenticate(
    request: Request, credentials: HTTPAuthorizationCredentials | None = Depends(bearer)
) -> None:
    """App-wide dependency: sets `request.state.owner` (None when access control is off)."""
    if request.url.path in PUBLIC_PATHS:
        request.state.owner = None
        return
    token = credentials.credentials if credentials is not None else None
    request.state.owner = request.app.state.access.owner(token)


def owner_of(request: Request) -> str | None:
    """Who is calling: the token name, or None without access control."""
    return getattr(request.state, "owner", None)


def _state(request: Request, name: str) -> Any:
    return getattr(request.app.state, name)


def get_settings(request: Request) -> ServerSettings:
    """The server's settings."""
    return _state(request, "settings")


def get_inference(request: Request) -> Inference:
    """The inference service."""
    return _state(request, "inference")


def get_key_uploads(request: Request) -> KeyUploads:
    """The key-upload service."""
    return _state(request, "key_uploads")


def get_registry(request: Request) -> ModelRegistry:
    """The models this server hosts."""
    return _state(request, "registry")


def get_job_queue(request: Request) -> JobQueue:
    """The job service."""
    return _state(request, "job_queue")


def get_readiness(request: Request) -> Readiness:
    """The readiness checks of this replica."""
    return _state(request, "readiness")


def get_callback_key(request: Request) -> bytes:
    """The key every token's callback secret derives from."""
    return _state(request, "callback_key")


Settings = Annotated[ServerSettings, Depends(get_settings)]
InferenceService = Annotated[Inference, Depends(get_inference)]
KeyUploadService = Annotated[KeyUploads, Depends(get_key_uploads)]
Registry = Annotated[ModelRegistry, Depends(get_registry)]
Queue = Annotated[JobQueue, Depends(get_job_queue)]
ReadinessCheck = Annotated[Readiness, Depends(get_readiness)]
CallbackKey = Annotated[bytes, Depends(get_callback_key)]
Owner = Annotated[str | None, Depends(owner_of)]
