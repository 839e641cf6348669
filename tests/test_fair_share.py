"""The fair share's order and bounds, in one event loop: a token that floods waits behind the
others' turns, never ahead of them, and past its waiting places it is refused at once."""

from __future__ import annotations

import asyncio

import pytest

from server.compute.fair_share import FairShare, OwnerQueueFull, QueueFull

pytestmark = pytest.mark.fast


async def served_order(arrivals: list[str], capacity: int = 1) -> list[str]:
    """Who gets the place, in order, when `arrivals` queue behind a run of the first owner."""
    share = FairShare(capacity, max_waiting=100, owner_max_waiting=100)
    order: list[str] = []
    release = asyncio.Event()

    async def run(owner: str) -> None:
        async with share.turn(owner):
            order.append(owner)
            await release.wait()

    tasks = [asyncio.create_task(run(owner)) for owner in arrivals]
    for _ in arrivals:
        await asyncio.sleep(0)
    release.set()
    await asyncio.gather(*tasks)
    return order


def test_the_least_recently_served_token_goes_next() -> None:
    order = asyncio.run(served_order(["a", "a", "a", "a", "b", "a", "c"]))
    assert order == ["a", "b", "c", "a", "a", "a", "a"]


def test_waiting_places_are_bounded_per_token_and_in_all() -> None:
    async def fill() -> tuple[type[Exception], type[Exception]]:
        share = FairShare(1, max_waiting=3, owner_max_waiting=2)
        hold = asyncio.Event()

        async def run(owner: str) -> None:
            async with share.turn(owner):
                await hold.wait()

        tasks = [asyncio.create_task(run(o)) for o in ("a", "a", "a", "b")]
        await asyncio.sleep(0.01)
        refused = []
        for owner in ("a", "c"):
            try:
                share.check_room(owner)
            except (OwnerQueueFull, QueueFull) as error:
                refused.append(type(error))
        hold.set()
        await asyncio.gather(*tasks)
        assert share.running == 0 and share.waiting == 0
        return refused[0], refused[1]

    assert asyncio.run(fill()) == (OwnerQueueFull, QueueFull)


def test_a_cancelled_wait_gives_its_place_on() -> None:
    async def cancel_one() -> list[str]:
        share = FairShare(1, max_waiting=10, owner_max_waiting=10)
        order: list[str] = []
        hold = asyncio.Event()

        async def run(owner: str) -> None:
            async with share.turn(owner):
                order.append(owner)
                await hold.wait()

        first = asyncio.create_task(run("a"))
        await asyncio.sleep(0)
        doomed = asyncio.create_task(run("b"))
        last = asyncio.create_task(run("c"))
        await asyncio.sleep(0)
        doomed.cancel()
        hold.set()
        await asyncio.gather(first, last)
        assert share.running == 0
        return order

    assert asyncio.run(cancel_one()) == ["a", "c"]
