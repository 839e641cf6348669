"""Reading request bodies under a byte limit and a time limit, shared by every route."""

from __future__ import annotations

import asyncio
import json
from typing import Any

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


class BodyTimedOut(TimeoutError):
    """The client stopped sending its body (or trickles it too slowly); answered with 408."""


class BodyTimeout:
    """ASGI middleware: each piece of a request body must arrive within `idle_seconds`, and the
    whole body within `total_seconds`.

    Only the body is timed; once it is complete, waits on the connection (for a disconnect
    during a long response) are left alone. A body that stalls or trickles ends the request with
    408, so a slow client cannot hold a connection and its buffered bytes for long.
    """

    def __init__(self, app: Any, idle_seconds: float, total_seconds: float) -> None:
        self.app = app
        self.idle_seconds = idle_seconds
        self.total_seconds = total_seconds

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        body_done = False
        started = False
        deadline = asyncio.get_running_loop().time() + self.total_seconds

        async def timed_receive() -> dict:
            nonlocal body_done
            if body_done:
                return await receive()
            left = deadline - asyncio.get_running_loop().time()
            wait = min(self.idle_seconds, left)
            try:
                if wait <= 0:
                    raise TimeoutError
                message = await asyncio.wait_for(receive(), wait)
            except TimeoutError:
                raise BodyTimedOut(
                    f"the request body did not arrive in time (at most {self.idle_seconds:g} s "
                    f"between pieces, {self.total_seconds:g} s in all)"
                ) from None
            if message["type"] != "http.request" or not message.get("more_body", False):
                body_done = True
            return message

        async def watched_send(message: dict) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, timed_receive, watched_send)
        except BodyTimedOut as error:
            if started:
                raise
            body = json.dumps({"error": str(error), "code": "body_timeout"}).encode()
            await send(
                {
                    "type": "http.response.start",
                    "status": 408,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"content-length", str(len(body)).encode()),
                        (b"connection", b"close"),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": body})
