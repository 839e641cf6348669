"""Helpers for tests against a real fhe-server process: its backlog gauge, a prediction without
the client's retries, a wait for a condition, and its worker pool frozen with SIGSTOP."""

from __future__ import annotations

import os
import re
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import httpx

from client.encrypted_model import EncryptedModel


def backlog(url: str) -> dict[str, float]:
    """The server's fhe_backlog gauge, by part."""
    text = httpx.get(f"{url}/metrics", timeout=30).text
    return {
        part: float(value)
        for part, value in re.findall(r'^fhe_backlog\{part="(\w+)"\} (\S+)$', text, re.M)
    }


def wait_until(check, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


def raw_predict(url: str, remote: EncryptedModel, ciphertext: bytes) -> httpx.Response:
    """One synchronous prediction without the client's retries (which would hide a 503)."""
    return httpx.post(
        f"{url}/v1/models/{remote.name}/predict",
        content=ciphertext,
        headers={
            "Content-Type": "application/octet-stream",
            "X-Key-Id": remote.keys().key_id,
            "X-Client-Spec": remote.client_spec,
        },
        timeout=60,
    )


def children_of(pid: int) -> list[int]:
    """Every descendant process of `pid` (from /proc)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, frontier = [], [pid]
    while frontier:
        parent = frontier.pop()
        for child, its_parent in parents.items():
            if its_parent == parent:
                found.append(child)
                frontier.append(child)
    return found


@contextmanager
def frozen_children(pid: int) -> Iterator[Callable[[], None]]:
    """SIGSTOP every descendant of `pid` (a server's worker pool stops answering); yields `thaw`,
    which sends them SIGCONT, as leaving the block does."""
    stopped = children_of(pid)
    for child in stopped:
        os.kill(child, signal.SIGSTOP)

    def thaw() -> None:
        while stopped:
            with suppress(ProcessLookupError):
                os.kill(stopped.pop(), signal.SIGCONT)

    try:
        yield thaw
    finally:
        thaw()
