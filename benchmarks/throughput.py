"""Server throughput under concurrent FHE clients: predictions per second, p50 and p99.

Starts fhe-server, uploads keys, encrypts a few texts once, then for each concurrency level runs
that many client threads that send ciphertexts back to back. It prints predictions per second,
HTTP round-trip p50 and p99, the median raw circuit run (the server's X-FHE-Seconds), and the
ratio of round trip to circuit run (queueing plus the server's own overhead). Usage:

    .venv/bin/python -m benchmarks.throughput --model sentiment --clients 1,2,4 --requests 16
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Annotated, Optional

import numpy as np
import psutil
import typer

from benchmarks.latency import TEXTS
from client.api import FHEServerAPI
from client.encrypted_model import EncryptedModel
from client.local_server import LocalServer


def run_level(
    api: FHEServerAPI, remote: EncryptedModel, ciphertexts: list[bytes], clients: int, total: int
) -> dict:
    """`clients` threads share `total` requests; returns the level's figures."""
    round_trips: list[float] = []
    circuit: list[float] = []
    lock = threading.Lock()
    remaining = iter(range(total))

    def client() -> None:
        while True:
            with lock:
                index = next(remaining, None)
            if index is None:
                return
            started = time.perf_counter()
            answer = remote.run(ciphertexts[index % len(ciphertexts)])
            elapsed = time.perf_counter() - started
            with lock:
                round_trips.append(elapsed)
                circuit.append(answer.fhe_seconds)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    return {
        "clients": clients,
        "requests": total,
        "predictions_per_second": total / wall,
        "round_trip_p50_seconds": float(np.percentile(round_trips, 50)),
        "round_trip_p99_seconds": float(np.percentile(round_trips, 99)),
        "circuit_run_median_seconds": statistics.median(circuit),
        "round_trip_to_circuit_ratio": float(np.percentile(round_trips, 50))
        / statistics.median(circuit),
    }


def main(
    models: Annotated[Path, typer.Option(help="models directory to serve")] = Path("models"),
    model: Annotated[str, typer.Option(help="FHE model name")] = "sentiment",
    clients: Annotated[str, typer.Option(help="concurrency levels")] = "1,2,4",
    requests: Annotated[int, typer.Option(help="requests per level")] = 16,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="write results here")] = None,
) -> None:
    """Measure one model's throughput at each concurrency level."""
    levels = [int(part) for part in clients.split(",")]
    results = []
    with tempfile.TemporaryDirectory() as scratch:
        server = LocalServer(
            models.resolve(), Path(scratch) / "data", log=Path(scratch) / "server.log"
        ).start()
        try:
            with FHEServerAPI(server.url) as api:
                remote = EncryptedModel(api, model, Path(scratch) / "client")
                remote.keys()
                ciphertexts = [remote.encrypt(text).ciphertext for text in TEXTS]
                remote.run(ciphertexts[0])  # warm-up: the worker loads the circuit and key
                for level in levels:
                    results.append(run_level(api, remote, ciphertexts, level, requests))
                    row = results[-1]
                    typer.echo(
                        f"{level} clients: {row['predictions_per_second']:.2f} predictions/s, "
                        f"p50 {row['round_trip_p50_seconds']:.3f} s, "
                        f"p99 {row['round_trip_p99_seconds']:.3f} s, circuit "
                        f"{row['circuit_run_median_seconds']:.3f} s, ratio "
                        f"{row['round_trip_to_circuit_ratio']:.3f}"
                    )
        finally:
            server.stop()
    if json_out is not None:
        payload = {"model": model, "cores": psutil.cpu_count(), "levels": results}
        json_out.write_text(json.dumps(payload, indent=2) + "\n")


if __name__ == "__main__":
    sys.exit(typer.run(main))
