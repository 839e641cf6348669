"""What the routes declare besides their 2xx answer: the error body under each status they can
give, and the binary bodies (ciphertexts, bundle files) with their media types, so /openapi.json
describes every answer."""

from __future__ import annotations

from typing import Any

from fhe.contract.wire import ErrorBody

ERROR_WORDS = {
    400: "the request is not what the route takes",
    401: "no API token, or an unknown one",
    403: "a quota forbids it",
    404: "unknown (or another token's, or expired)",
    408: "the body did not arrive in time",
    409: "conflicts with the current state",
    413: "a body or input over its limit",
    422: "invalid parameters, or a run that failed on these inputs",
    429: "this token's limit is reached; try again later",
    500: "an error of the server",
    502: "a worker refused the run with an error this server does not know (Celery mode: API and "
    "workers of different versions)",
    503: "busy, or a store, the broker or the circuit cannot be reached; try again",
    504: "no worker answered in time (Celery mode)",
}
EVERY_ROUTE = (401, 422, 500)
"""What any route may answer: the app-wide token check, parameter validation, a server fault."""
STORES = (503,)
"""What a route that reads a store may answer when it does not answer."""
BODY = (408, 413)
"""What a route that reads a request body may answer."""
FHE_WORKERS = (502, 504)
"""What a route whose answer comes from an FHE worker (a run, a key check) may answer besides
the errors of its inputs: a refusal by a code this server does not know, no answer in time."""


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The error answers of a route: these statuses and those of every route, each the error
    body."""
    return {
        status: {"model": ErrorBody, "description": ERROR_WORDS[status]}
        for status in sorted({*statuses, *EVERY_ROUTE})
    }


def binary(media_type: str, description: str) -> dict[str, Any]:
    """A 200 answer of raw bytes of this media type."""
    schema = {"type": "string", "format": "binary"}
    return {"description": description, "content": {media_type: {"schema": schema}}}
