"""How services call a store from the event loop.

A store whose `shares_state` is true (see `protocols`) waits on the network, so its calls run in
a thread and the loop keeps serving /healthz and other requests; one that gets no answer within
`SHARED_CALL_SECONDS` (a database that hangs rather than refusing connections) answers 503
instead of holding its request. The embedded
stores answer from local disk at once and are called inline, which keeps their ordering
guarantees: no other request runs between a key's check and the job row that pins it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import ParamSpec, TypeVar

from server import errors

P = ParamSpec("P")
T = TypeVar("T")

SHARED_CALL_SECONDS = 10.0


async def store_call(method: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """`method(*args, **kwargs)` of a store: in a thread when the store `shares_state` (503
    past `SHARED_CALL_SECONDS`), inline otherwise."""
    if not getattr(getattr(method, "__self__", None), "shares_state", False):
        return method(*args, **kwargs)
    try:
        async with asyncio.timeout(SHARED_CALL_SECONDS):  # not wait_for: see jobs.runner
            return await asyncio.to_thread(method, *args, **kwargs)
    except TimeoutError:
        raise errors.StateUnavailable(
            f"the server's shared database did not answer within {SHARED_CALL_SECONDS:g} s; "
            "try again shortly (a change this request asked for may or may not have been made)",
            headers={"Retry-After": "10"},
        ) from None
