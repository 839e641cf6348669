"""Routes for operators, orchestrators and the proxy: liveness, readiness, Prometheus metrics and
the token check the proxy asks before it reads a request body.

Probes are public (they carry no API token). `/metrics` is public unless the operator sets
`FHE_SERVER_METRICS_TOKEN`, which a server facing callers directly should; the proxy in front of
the API also keeps it on the internal network (deployment/nginx).
"""

from __future__ import annotations

import hashlib
import hmac
import logging

from fastapi import APIRouter, Request
from fastapi.responses import Response

from fhe.contract.wire import Health, Ready
from server import errors
from server.deps import ReadinessCheck, Settings
from server.executors import OPERATIONS, run_in
from server.metrics import CONTENT_TYPE, exposition
from server.routes.answers import STORES, error_responses

log = logging.getLogger("fhe_server")

router = APIRouter()


@router.get("/healthz", response_model=Health, responses=error_responses())
async def healthz() -> Health:
    """Liveness: the process answers (it does not depend on the database or the broker)."""
    return Health(status="ok")


@router.get("/readyz", response_model=Ready, responses=error_responses(503))
async def readyz(readiness: ReadinessCheck) -> Ready:
    """Readiness: 503 while the database, the key store or the broker cannot be reached, and
    until every served circuit was compiled (or while none can be, for a cause of this host)."""
    problems = await readiness.problems()
    if problems:
        log.warning("not ready: %s", problems)
        hidden = [name for name in problems if name not in readiness.explained]
        said = [f"{name}: {problems[name]}" for name in problems if name in readiness.explained]
        if hidden:
            said.append(", ".join(hidden) + " did not answer (the server log says why)")
        raise errors.NotReady(
            "not ready: " + "; ".join(said),
            headers={"Retry-After": "5"},
            checks=sorted(problems),
        )
    return Ready(status="ready", checks=readiness.names())


@router.get("/v1/auth", status_code=204, response_class=Response, responses=error_responses())
async def check_token() -> Response:
    """204 when the `Authorization: Bearer <token>` header holds a known API token (or the server
    runs in development mode), else the app-wide token check answers 401 `unauthorized`.

    nginx asks this (`auth_request`) with the caller's Authorization header alone before it reads
    a request body, so that uploads without a valid token are refused unread
    (deployment/nginx/fhe-server.conf)."""
    return Response(status_code=204)


@router.get(
    "/metrics",
    response_class=Response,
    responses={
        200: {
            "description": "Prometheus text exposition",
            "content": {CONTENT_TYPE: {"schema": {"type": "string"}}},
        },
        **error_responses(*STORES),
    },
)
async def metrics(request: Request, settings: Settings) -> Response:
    """Prometheus text: request, run, queue, key and crash metrics of this replica (with
    `FHE_SERVER_METRICS_TOKEN` set, only for `Authorization: Bearer <that token>`)."""
    expected = settings.metrics_token.get_secret_value()
    if expected:
        given = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
        digest = hashlib.sha256(given.encode()).digest()
        if not hmac.compare_digest(digest, hashlib.sha256(expected.encode()).digest()):
            raise errors.Unauthorized(
                "/metrics takes the metrics token: `Authorization: Bearer <token>`",
                headers={"WWW-Authenticate": "Bearer"},
            )
    # Off the loop: the state gauges ask the stores, which may wait on the database.
    text = await run_in(OPERATIONS, exposition, request.app.state.metrics_registry)
    return Response(text, media_type=CONTENT_TYPE)
