"""A quiet tenant's latency while another token floods the server: p50/p99 before the flood and
during it, for encrypted and clear predictions and for jobs, against a real fhe-server with two
tokens and the shipped models.

    .venv/bin/python -m benchmarks.tenant_isolation --out docs/bench-tenant-isolation.json

The flooding tenant sends slow `sentiment` predictions from 18 connections, 0.6 MB clear bodies
to `breast-cancer-clear` from 12 connections, and queues 12 `sentiment` jobs; the quiet tenant
sends one cheap request at a time (`sentiment-linear`, one row of `breast-cancer-clear`, one
`sentiment-linear` job). `/readyz` is polled throughout. The harness (`Flood`, `ReadyProbe`,
`timed`) is shared with tests/test_tenant_isolation.py.
"""

from __future__ import annotations

import json
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, Optional

import httpx
import numpy as np
import typer

from client.api import FHEServerAPI
from client.encrypted_model import EncryptedModel
from client.local_server import LocalServer

REPO = Path(__file__).resolve().parents[1]
QUIET, FLOODER = "quiet-token-0123456789", "flooder-token-9876543210"
TOKENS = {"quiet": QUIET, "flooder": FLOODER}

Send = Callable[[httpx.Client], int]
"""One request from a tenant's client; returns the status."""


def bearer(token: str) -> dict[str, str]:
    """The Authorization header of a token."""
    return {"Authorization": f"Bearer {token}"}


def clear_sender(url: str, token: str, model: str, body: bytes) -> Send:
    """A clear prediction of `body`."""

    def send(client: httpx.Client) -> int:
        headers = {**bearer(token), "Content-Type": "application/json"}
        return client.post(
            f"{url}/v1/models/{model}/predict", content=body, headers=headers
        ).status_code

    return send


def fhe_sender(url: str, token: str, model: str, ciphertext: bytes, key_id: str, spec: str) -> Send:
    """An encrypted prediction of `ciphertext`."""
    headers = {**bearer(token), "X-Key-Id": key_id, "X-Client-Spec": spec}

    def send(client: httpx.Client) -> int:
        return client.post(
            f"{url}/v1/models/{model}/predict", content=ciphertext, headers=headers
        ).status_code

    return send


def timed(send: Send, client: httpx.Client) -> tuple[int, float]:
    """The status and seconds of one request."""
    started = time.perf_counter()
    status = send(client)
    return status, time.perf_counter() - started


def series(send: Send, count: int, pause: float = 0.1) -> list[tuple[int, float]]:
    """`count` requests one after another, `pause` seconds apart."""
    with httpx.Client(timeout=300) as client:
        answers = []
        for _ in range(count):
            answers.append(timed(send, client))
            time.sleep(pause)
        return answers


def summary(answers: list[tuple[int, float]]) -> dict[str, Any]:
    """Statuses and p50/p99 seconds of the answered (2xx) requests."""
    ok = [seconds for status, seconds in answers if 200 <= status < 300]
    return {
        "requests": len(answers),
        "statuses": dict(Counter(str(status) for status, _ in answers)),
        "p50_seconds": float(np.percentile(ok, 50)) if ok else None,
        "p99_seconds": float(np.percentile(ok, 99)) if ok else None,
        "max_seconds": max(ok) if ok else None,
    }


class Flood:
    """`connections` threads sending `send` in a loop until the block ends; counts statuses."""

    def __init__(self, send: Send, connections: int) -> None:
        self.send = send
        self.connections = connections
        self.statuses: Counter[int] = Counter()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def _loop(self) -> None:
        with httpx.Client(timeout=300) as client:
            while not self._stop.is_set():
                try:
                    status = self.send(client)
                except httpx.HTTPError:
                    status = 0
                self.statuses[status] += 1
                if status in (429, 503):
                    # Sooner than Retry-After asks; on a real network the flooder's own
                    # loop would not share the server's two cores as it does here.
                    time.sleep(0.2)

    def __enter__(self) -> Flood:
        for _ in range(self.connections):
            thread = threading.Thread(target=self._loop, daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=600)


class ReadyProbe:
    """Polls `/readyz` every `every` seconds in a thread while the block runs."""

    def __init__(self, url: str, every: float = 0.25) -> None:
        self.url = url
        self.every = every
        self.statuses: list[int] = []
        self.slowest = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        with httpx.Client(timeout=30) as client:
            while not self._stop.is_set():
                started = time.perf_counter()
                try:
                    self.statuses.append(client.get(f"{self.url}/readyz").status_code)
                except httpx.HTTPError:
                    self.statuses.append(0)
                self.slowest = max(self.slowest, time.perf_counter() - started)
                self._stop.wait(self.every)

    def __enter__(self) -> ReadyProbe:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=60)


def breast_cancer_body(rows: int) -> bytes:
    """A `breast-cancer-clear` request of `rows` rows, every column given."""
    config = json.loads((REPO / "models" / "breast-cancer-clear" / "config.json").read_text())
    columns = config["sklearn"]["columns"]
    rng = np.random.default_rng(0)
    data = {c: [round(float(v), 4) for v in rng.uniform(0, 30, rows)] for c in columns}
    return json.dumps({"inputs": {"data": data}}).encode()


def wait_job(client: httpx.Client, url: str, token: str, job_id: str) -> dict[str, Any]:
    """Poll a job until it ends; its status."""
    while True:
        job = client.get(f"{url}/v1/jobs/{job_id}", headers=bearer(token)).json()
        if job["status"] in ("done", "failed"):
            return job
        time.sleep(0.1)


@contextmanager
def server(models: Path, data: Path, env: dict[str, str]) -> Iterator[LocalServer]:
    """A real fhe-server with the two tokens."""
    running = LocalServer(
        models, data, env={"FHE_SERVER_TOKENS": json.dumps(TOKENS), **env}, log=data / "server.log"
    ).start(timeout=600)
    try:
        yield running
    finally:
        running.stop()


def measure(url: str, cache: Path, rounds: int) -> dict[str, Any]:
    """Every phase: the quiet tenant's latencies idle and under each flood."""
    results: dict[str, Any] = {}
    with FHEServerAPI(url, token=QUIET) as quiet_api, FHEServerAPI(url, token=FLOODER) as flood_api:
        cheap = EncryptedModel(quiet_api, "sentiment-linear", cache / "quiet")
        slow = EncryptedModel(flood_api, "sentiment", cache / "flooder")
        cheap_key, slow_key = cheap.keys().key_id, slow.keys().key_id
        cheap_ct = cheap.encrypt("the flight was fine").ciphertext
        slow_ct = slow.encrypt("the flight was late again").ciphertext
    quiet_fhe = fhe_sender(url, QUIET, "sentiment-linear", cheap_ct, cheap_key, cheap.client_spec)
    quiet_clear = clear_sender(url, QUIET, "breast-cancer-clear", breast_cancer_body(1))
    flood_fhe = fhe_sender(url, FLOODER, "sentiment", slow_ct, slow_key, slow.client_spec)
    flood_clear = clear_sender(url, FLOODER, "breast-cancer-clear", breast_cancer_body(2000))
    one_run = summary(series(flood_fhe, 3))
    one_clear = summary(series(flood_clear, 3))
    results["flooder_alone"] = {"sentiment": one_run, "clear_0.6MB": one_clear}
    results["idle"] = {
        "fhe": summary(series(quiet_fhe, rounds)),
        "clear": summary(series(quiet_clear, rounds)),
    }
    with ReadyProbe(url) as probe, Flood(flood_fhe, 18) as flood:
        time.sleep(3)
        quiet = series(quiet_fhe, rounds, pause=0.5)
    results["fhe_flood"] = {
        "quiet": summary(quiet),
        "flooder_statuses": dict(Counter(str(s) for s in flood.statuses.elements())),
        "readyz_statuses": dict(Counter(str(s) for s in probe.statuses)),
        "readyz_slowest_seconds": probe.slowest,
    }
    with ReadyProbe(url) as probe, Flood(flood_clear, 12) as flood:
        time.sleep(2)
        quiet = series(quiet_clear, rounds, pause=0.2)
    results["clear_flood"] = {
        "quiet": summary(quiet),
        "flooder_statuses": dict(Counter(str(s) for s in flood.statuses.elements())),
        "readyz_statuses": dict(Counter(str(s) for s in probe.statuses)),
        "readyz_slowest_seconds": probe.slowest,
    }
    results["jobs"] = job_wait(
        url, slow_ct, slow_key, slow.client_spec, cheap_ct, cheap_key, cheap.client_spec
    )
    return results


def job_wait(
    url: str,
    slow_ct: bytes,
    slow_key: str,
    slow_spec: str,
    cheap_ct: bytes,
    cheap_key: str,
    cheap_spec: str,
) -> dict[str, Any]:
    """The quiet tenant's job, queued behind 12 of the flooder's: its wait and how many of the
    flooder's jobs started before it."""
    with httpx.Client(timeout=300) as client:
        flooder = [
            client.post(
                f"{url}/v1/models/sentiment/jobs",
                content=slow_ct,
                headers={**bearer(FLOODER), "X-Key-Id": slow_key, "X-Client-Spec": slow_spec},
            ).json()["job_id"]
            for _ in range(12)
        ]
        quiet = client.post(
            f"{url}/v1/models/sentiment-linear/jobs",
            content=cheap_ct,
            headers={**bearer(QUIET), "X-Key-Id": cheap_key, "X-Client-Spec": cheap_spec},
        ).json()["job_id"]
        mine = wait_job(client, url, QUIET, quiet)
        theirs = [wait_job(client, url, FLOODER, job_id) for job_id in flooder]
    return {
        "quiet_job_seconds": mine["finished"] - mine["created"],
        "flooder_jobs_started_before_it": sum(1 for j in theirs if j["started"] < mine["started"]),
        "flooder_jobs": len(theirs),
    }


def main(
    out: Annotated[Optional[Path], typer.Option(help="write the results as JSON here")] = None,
    rounds: Annotated[int, typer.Option(help="quiet requests per phase")] = 20,
    models: Annotated[Path, typer.Option(help="models directory")] = REPO / "models",
) -> None:
    """Run every phase against a fresh server and print the quiet tenant's p50/p99."""
    with tempfile.TemporaryDirectory() as tmp:
        env = {"FHE_SERVER_TOKEN_MAX_JOBS_IN_FLIGHT": "20"}
        with server(models, Path(tmp) / "data", env) as running:
            results = measure(running.url, Path(tmp) / "client", rounds)
    for phase in ("idle", "fhe_flood", "clear_flood"):
        for kind, numbers in results[phase].items():
            if isinstance(numbers, dict) and "p50_seconds" in numbers:
                p50, p99 = (
                    "-" if numbers[k] is None else f"{numbers[k]:.3f} s"
                    for k in ("p50_seconds", "p99_seconds")
                )
                print(f"{phase:12} {kind:6} p50 {p50}  p99 {p99}  {numbers['statuses']}")
    print(json.dumps(results, indent=2))
    if out is not None:
        out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    typer.run(main)
