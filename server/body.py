"""Reading request bodies under a byte limit, shared by the FHE and the clear-model routes."""

from __future__ import annotations

from fastapi import Request


class BodyTooLarge(ValueError):
    """The body (declared or received) passes the limit; answered with 413."""


def check_declared_length(request: Request, limit: int, what: str) -> None:
    """Refuse at once when Content-Length already says the body is too large."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge(f"{what} of {declared} bytes exceed the limit of {limit}")


async def read_body(request: Request, limit: int, what: str) -> bytes:
    """The whole body, refused as soon as it passes `limit` bytes (chunked uploads included)."""
    check_declared_length(request, limit, what)
    body = bytearray()
    async for chunk in request.stream():
        body.extend(chunk)
        if len(body) > limit:
            raise BodyTooLarge(f"{what} exceed the limit of {limit} bytes")
    return bytes(body)
