"""Fair admission to a bounded resource: at most `capacity` runs at once, the rest waiting in one
queue per token; a freed place goes to the waiting token served least recently, so one token's
flood costs another at most the runs in progress plus its own turn.

Waits are bounded before any work is done: past `owner_max_waiting` a token's request is refused
(429), past `max_waiting` in all any request is (503), at once rather than after a long wait.
Work that was already accepted (a job's run) waits its turn without those bounds: the job limits
bounded it when it was accepted.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict, deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager


class QueueFull(RuntimeError):
    """Every waiting place is taken: try again shortly."""


class OwnerQueueFull(RuntimeError):
    """This token already has its share of requests waiting."""


class FairShare:
    """Round-robin admission across owners (token names; None is one owner, as in dev mode)."""

    def __init__(
        self, capacity: int, max_waiting: int, owner_max_waiting: int, what: str = "runs"
    ) -> None:
        self.capacity = capacity
        self.max_waiting = max_waiting
        self.owner_max_waiting = owner_max_waiting
        self.what = what
        self.running = 0
        self._waiting: OrderedDict[str | None, deque[asyncio.Future[None]]] = OrderedDict()
        self._served: dict[str | None, int] = {}
        """When each owner was last given a place (a count of grants): the least recently
        served waiting owner goes next, so the owner whose run just ended is not."""
        self._grants = 0

    @property
    def waiting(self) -> int:
        """Requests waiting for their turn."""
        # A copy of the queues first: a metrics scrape reads this from another thread.
        return sum(map(len, list(self._waiting.values())))

    def waiting_for(self, owner: str | None) -> int:
        """Requests of `owner` waiting for their turn."""
        return len(self._waiting.get(owner, ()))

    def check_room(self, owner: str | None) -> None:
        """Refuse now what `turn` would refuse (before a body is read for nothing); `turn`
        checks again when the request is ready."""
        if self.running < self.capacity and not self._waiting:
            return
        self._check_waiting(owner)

    def _check_waiting(self, owner: str | None) -> None:
        # No owner (development mode, every caller trusted): only the bound in all applies.
        if owner is not None and self.waiting_for(owner) >= self.owner_max_waiting:
            raise OwnerQueueFull(
                f"this token already has {self.waiting_for(owner)} {self.what} waiting, its "
                "share; wait for them to finish"
            )
        if self.waiting >= self.max_waiting:
            raise QueueFull(
                f"{self.running} {self.what} are running and {self.waiting} waiting, the "
                "limit; try again shortly"
            )

    @asynccontextmanager
    async def turn(self, owner: str | None, bounded: bool = True) -> AsyncIterator[None]:
        """Hold one of the `capacity` places for the block, after the owner's turn comes round;
        OwnerQueueFull or QueueFull at once when `bounded` and no waiting place is left."""
        if self.running < self.capacity and not self._waiting:
            self.running += 1
            self._served_now(owner)
        else:
            await self._wait(owner, bounded)
        try:
            yield
        finally:
            self._release()

    async def _wait(self, owner: str | None, bounded: bool) -> None:
        """Queue behind the owner's earlier requests until `_release` hands over a place."""
        if bounded:
            self._check_waiting(owner)
        granted: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(owner, deque()).append(granted)
        try:
            await granted
        except BaseException:
            if granted.done() and not granted.cancelled():
                self._release()  # the place was handed over as the wait was cancelled
            else:
                self._forget(owner, granted)
            raise

    def _forget(self, owner: str | None, granted: asyncio.Future[None]) -> None:
        queue = self._waiting.get(owner)
        if queue is not None and granted in queue:
            queue.remove(granted)
            if not queue:
                del self._waiting[owner]

    def _served_now(self, owner: str | None) -> None:
        self._grants += 1
        self._served[owner] = self._grants

    def _release(self) -> None:
        """Give the freed place to the waiting owner served least recently (its oldest
        request), else free it."""
        while self._waiting:
            owner = min(self._waiting, key=lambda waiting: self._served.get(waiting, 0))
            queue = self._waiting[owner]
            granted = queue.popleft()
            if not queue:
                del self._waiting[owner]
            if not granted.done():
                granted.set_result(None)
                self._served_now(owner)
                return
        self.running -= 1
