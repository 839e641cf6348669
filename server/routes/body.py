"""Reading request bodies under a byte limit and a time limit, shared by every route, and the
checked reading of a prediction's body (encrypted or clear)."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import Request

from server import errors
from server.errors import BodyTimedOut
from server.inference import Inference
from server.models.registry import FHEModel
from server.storage.key import StoredKey


class BodyTooLarge(errors.TooLarge):
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


class BodyTimeout:
    """ASGI middleware: each piece of a request body must arrive within `idle_seconds`, and the
    whole body within `total_seconds`.

    Only the body is timed; once it is complete, waits on the connection (for a disconnect
    during a long response) are left alone. A body that stalls or trickles raises BodyTimedOut
    where the route reads it, which the error handlers answer with 408 and `Connection: close`,
    so a slow client cannot hold a connection and its buffered bytes for long.
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

        await self.app(scope, timed_receive, send)


async def read_fhe_request(
    request: Request,
    inference: Inference,
    model: FHEModel,
    key_id: str | None,
    client_spec: str | None,
    limit: int,
    owner: str | None,
) -> tuple[StoredKey, bytes]:
    """The checks of an encrypted prediction, cheapest first, then its ciphertext body (no
    larger than the model's client spec allows a ciphertext to be), then the key's fit."""
    if model.max_ciphertext_bytes is not None:
        limit = min(limit, model.max_ciphertext_bytes)
    check_declared_length(request, limit, f"a ciphertext for model {model.name!r}")
    inference.check_client_spec(model, client_spec)
    await inference.stored_key(key_id, model, owner)
    ciphertext = await read_body(request, limit, "ciphertext")
    if not ciphertext:
        raise errors.EmptyBody("the body must hold a serialized ciphertext")
    # Checked last: from here to the job's row or the run's pin there is no await of the body,
    # so an upload streaming meanwhile cannot evict the key in between.
    key = await inference.fitting_key(key_id, model, owner)
    return key, ciphertext


async def read_clear_request(request: Request, limit: int) -> bytes:
    """A clear model's JSON body, as bytes: a clear worker parses it, never this process."""
    return await read_body(request, limit, "the JSON body")
