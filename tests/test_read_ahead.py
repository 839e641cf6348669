"""ReadAhead: items in order, at most `depth` made ahead, errors raised where they happened,
and the thread stopped when the reader leaves."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from client.read_ahead import ReadAhead

pytestmark = pytest.mark.fast


def test_items_come_in_order_and_at_most_depth_ahead() -> None:
    made: list[int] = []

    def source() -> Iterator[int]:
        for number in range(20):
            made.append(number)
            yield number

    got = []
    with ReadAhead(source(), depth=2) as ahead:
        for number in ahead:
            time.sleep(0.01)
            assert len(made) - len(got) <= 2 + 2  # the queue, the item in hand, one being put
            got.append(number)
    assert got == list(range(20))


def test_an_error_is_raised_at_the_item_where_it_happened() -> None:
    def source() -> Iterator[int]:
        yield 1
        yield 2
        raise ValueError("bad third input")

    got = []
    with pytest.raises(ValueError, match="bad third input"), ReadAhead(source(), 3) as ahead:
        for number in ahead:
            got.append(number)
    assert got == [1, 2]


def test_leaving_early_stops_the_thread() -> None:
    def source() -> Iterator[int]:
        number = 0
        while True:
            number += 1
            yield number

    before = threading.active_count()
    with ReadAhead(source(), depth=1) as ahead:
        for number in ahead:
            if number == 3:
                break
    deadline = time.monotonic() + 5
    while threading.active_count() > before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert threading.active_count() == before
