"""Throughput of the Celery mode: M clients x K encrypted predictions against the API with one,
then two `fhe-server worker` processes, all on this machine with a real redis-server.

It prints predictions per second for each worker count and the ratio of two workers to one.
On one machine the workers share its cores, and Concrete already spreads one circuit run over
every core, so the ratio shows the cost or gain of running more workers per machine, not of
adding machines. Usage:

    .venv/bin/python -m benchmarks.scale_out --model sentiment --clients 4 --per-client 8
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from typing import Annotated, Optional

import psutil
import typer

from benchmarks.latency import TEXTS
from benchmarks.throughput import run_level
from client.api import FHEServerAPI
from client.encrypted_model import EncryptedModel
from client.local_server import LocalRedis, LocalServer, LocalWorker


def main(
    models: Annotated[Path, typer.Option(help="models directory")] = Path("models"),
    model: Annotated[str, typer.Option(help="FHE model name")] = "sentiment",
    clients: Annotated[int, typer.Option(help="concurrent clients (M)")] = 4,
    per_client: Annotated[int, typer.Option(help="predictions per client (K)")] = 8,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="write results here")] = None,
) -> None:
    """Measure API + 1 worker, then API + 2 workers."""
    models = models.resolve()
    results = []
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        redis = LocalRedis(root / "redis").start()
        workers = [LocalWorker(redis.url, models, root / "w1", "w1").start()]
        env = {"FHE_SERVER_BACKEND": "celery", "FHE_SERVER_REDIS_URL": redis.url}
        api = LocalServer(models, root / "api", env=env, log=root / "api.log").start()
        try:
            with FHEServerAPI(api.url) as client:
                remote = EncryptedModel(client, model, root / "client")
                remote.keys()
                ciphertexts = [remote.encrypt(text).ciphertext for text in TEXTS]
                for count in (1, 2):
                    if count == 2:
                        workers.append(LocalWorker(redis.url, models, root / "w2", "w2").start())
                    for _ in range(count):
                        remote.run(ciphertexts[0])  # warm-up: circuits and keys in each worker
                    row = run_level(client, remote, ciphertexts, clients, clients * per_client)
                    row["workers"] = count
                    results.append(row)
                    typer.echo(
                        f"{count} worker(s), {clients} clients x {per_client}: "
                        f"{row['predictions_per_second']:.2f} predictions/s, "
                        f"p50 {row['round_trip_p50_seconds']:.3f} s, "
                        f"circuit {row['circuit_run_median_seconds']:.3f} s"
                    )
        finally:
            api.stop()
            for worker in workers:
                worker.stop()
            redis.stop()
    ratio = results[1]["predictions_per_second"] / results[0]["predictions_per_second"]
    typer.echo(f"two workers / one worker: {ratio:.2f}x on {psutil.cpu_count()} cores")
    if json_out is not None:
        payload = {"model": model, "cores": psutil.cpu_count(), "ratio": ratio, "runs": results}
        json_out.write_text(json.dumps(payload, indent=2) + "\n")


if __name__ == "__main__":
    sys.exit(typer.run(main))
