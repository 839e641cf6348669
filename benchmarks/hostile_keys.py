"""What junk key uploads cost the API process: its peak memory while several large junk uploads
arrive at once (issue 26: three concurrent 256 MiB junk uploads took an API from 215 to 973 MB).

It starts `fhe-server serve` with two API tokens over a models directory, resets the API process's
peak resident memory (VmHWM, through /proc/<pid>/clear_refs), sends `--uploads` junk bodies of
`--mib` MiB each at the same moment as the second token, and prints the API's resident memory
before, its peak during the uploads, the answers and the seconds they took. Kinds of junk:

- `random`: random bytes, refused from their Cap'n Proto segment table alone;
- `framed`: a segment table announcing exactly the body's size, then random bytes: it passes the
  table and is mapped, so the traversal of its pointers is measured too.

The server is whatever `fhe-server` imports: run it with PYTHONPATH set to another checkout to
measure that one. Usage:

    .venv/bin/python -m benchmarks.hostile_keys --models models --mib 256 --uploads 3

Measured on 2 cores, 3 x 256 MiB at once, over sentiment-linear alone: before (3b4bee7, keys read
whole) the API's peak grew by 501 MB (random) and 346 MB (framed); with keys mapped and junk
refused from its segment table, by 2.9 MB and 6.2 MB, each upload answered 400 in 2.2-2.3 s.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import struct
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import httpx
import typer

from client.local_server import LocalServer

REPO = Path(__file__).resolve().parents[1]
TOKENS = {"victim": "victim-token-0123456789", "attacker": "attacker-token-9876543210"}
CHUNK = 1 << 20


def reset_peak(pid: int) -> None:
    """Make a process's peak resident memory (VmHWM) start again from its current one (root or
    the process's own user)."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def memory_bytes(pid: int) -> dict[str, int]:
    """A process's resident memory now (`rss`) and at its peak (`peak`), in bytes."""
    fields = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
    )
    return {
        "rss": int(fields["VmRSS"].split()[0]) * 1024,
        "peak": int(fields["VmHWM"].split()[0]) * 1024,
    }


def junk(kind: str, size: int) -> Iterator[bytes]:
    """A junk body of `size` bytes, a MiB at a time, never whole in this process."""
    block = os.urandom(CHUNK)
    if kind == "framed":
        words = (size - 8) // 8
        first = struct.pack("<II", 0, words) + block[8:]
    else:
        first = block
    sent = 0
    while sent < size:
        piece = (first if sent == 0 else block)[: size - sent]
        sent += len(piece)
        yield piece


def send(url: str, kind: str, size: int, token: str = TOKENS["attacker"]) -> tuple[int, str, float]:
    """One junk upload as `token`: its status, code and seconds."""
    started = time.monotonic()
    answer = httpx.post(
        f"{url}/v1/keys",
        content=junk(kind, size),
        headers={
            "Authorization": f"Bearer {token}",
            "Content-Length": str(size),
        },
        timeout=600,
    )
    try:
        code = str(answer.json().get("code"))
    except ValueError:
        code = answer.text[:80]
    return answer.status_code, code, time.monotonic() - started


def measure(
    url: str, pid: int, kind: str, size: int, uploads: int, token: str = TOKENS["attacker"]
) -> dict[str, object]:
    """Peak memory of the API while `uploads` junk bodies of one kind arrive together."""
    before = memory_bytes(pid)
    reset_peak(pid)
    with concurrent.futures.ThreadPoolExecutor(uploads) as pool:
        answers = list(pool.map(lambda _: send(url, kind, size, token), range(uploads)))
    after = memory_bytes(pid)
    return {
        "kind": kind,
        "uploads": uploads,
        "mib_each": size >> 20,
        "rss_before_mb": round(before["rss"] / 1e6, 1),
        "peak_during_mb": round(after["peak"] / 1e6, 1),
        "peak_growth_mb": round((after["peak"] - before["rss"]) / 1e6, 1),
        "answers": sorted({f"{status} {code}" for status, code, _ in answers}),
        "slowest_seconds": round(max(seconds for _, _, seconds in answers), 2),
    }


def main(
    models: Annotated[Path, typer.Option(help="models directory to serve")] = REPO / "models",
    mib: Annotated[int, typer.Option(help="MiB per junk upload")] = 256,
    uploads: Annotated[int, typer.Option(help="junk uploads at once")] = 3,
    kinds: Annotated[str, typer.Option(help="comma-separated: random, framed")] = "random,framed",
    json_out: Annotated[Path | None, typer.Option("--json", help="also write here")] = None,
) -> None:
    """Start a server, send junk uploads at once per kind, print the API's peak memory."""
    with tempfile.TemporaryDirectory(prefix="hostile-keys-") as scratch:
        server = LocalServer(
            models,
            Path(scratch) / "data",
            env={"FHE_SERVER_TOKENS": json.dumps(TOKENS)},
            log=Path(scratch) / "server.log",
        ).start(timeout=600)
        try:
            assert server.process is not None
            pid = server.process.pid
            send(server.url, "random", 4096)  # the first check loads what checks need
            rows = [measure(server.url, pid, kind, mib << 20, uploads) for kind in kinds.split(",")]
        finally:
            server.stop()
    for row in rows:
        print(json.dumps(row))
    if json_out is not None:
        json_out.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    typer.run(main)
