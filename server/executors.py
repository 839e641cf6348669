"""Thread pools that the event loop hands blocking calls to, kept apart from tenants' traffic.

`asyncio.to_thread` shares one small default pool (cores + 4 threads) with every request's store
calls. Readiness probes use `READINESS`, the job runner's loops `OPERATIONS`, and key checks (which
read a whole key) `KEY_WORK`, so no flood of requests can make `/readyz` fail or stall the jobs.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")

READINESS = ThreadPoolExecutor(max_workers=2, thread_name_prefix="fhe-readiness")
"""Readiness checks only: nothing else waits there, so a probe is never queued behind work."""

OPERATIONS = ThreadPoolExecutor(max_workers=4, thread_name_prefix="fhe-operations")
"""Job dispatch, leases, expiry, callbacks' bookkeeping and /metrics."""

KEY_WORK = ThreadPoolExecutor(max_workers=2, thread_name_prefix="fhe-key-work")
"""Structural key checks and copying checked keys into the store."""


async def run_in(
    executor: ThreadPoolExecutor, function: Callable[P, T], *args: P.args, **kwargs: P.kwargs
) -> T:
    """`function(*args, **kwargs)` in one of these pools, awaited from the event loop."""
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(executor, partial(function, *args, **kwargs))
