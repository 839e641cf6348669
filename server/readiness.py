"""Readiness: whether this replica can serve, asked of each thing it depends on.

A check answers None when its part is reachable, or why not; a check that does not answer within
its timeout counts as unreachable, so a hung database fails readiness instead of hanging the probe.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

Check = Callable[[], Awaitable[str | None]]


class Readiness:
    """Named checks run together under one timeout."""

    def __init__(
        self,
        checks: dict[str, Check],
        timeout_seconds: float = 3.0,
        explained: set[str] | None = None,
    ) -> None:
        self.checks = checks
        self.timeout_seconds = timeout_seconds
        # Checks whose reasons callers may read (of this host, not of its databases).
        self.explained = explained or set()

    def names(self) -> list[str]:
        """The parts checked."""
        return list(self.checks)

    async def _one(self, check: Check) -> str | None:
        try:
            return await asyncio.wait_for(check(), self.timeout_seconds)
        except TimeoutError:
            return f"no answer within {self.timeout_seconds:g} s"
        except Exception as error:  # any failure of a dependency is "not ready", with its reason
            return f"{type(error).__name__}: {error}"

    async def problems(self) -> dict[str, str]:
        """Each unreachable part with the reason; empty when all are ready."""
        names = list(self.checks)
        answers = await asyncio.gather(*(self._one(self.checks[name]) for name in names))
        return {name: why for name, why in zip(names, answers, strict=True) if why}
