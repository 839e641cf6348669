"""Scale-out figures, each part measured on this machine with real processes:

- `sizing`: the embedded worker pool sized as 1 run x N threads against N runs x 1 thread (N =
  the cores), taking turns over several rounds: predictions per second, medians;
- `replicas`: the same encrypted predictions against one API replica, then two, on one Postgres
  (each replica with its own worker pool, the cores split between them), clients spread over the
  replicas;
- `celery`: M clients x K encrypted predictions against the API with one, then two
  `fhe-server worker` processes and a real redis-server. On one machine the workers share its
  cores, so the ratio shows the cost or gain of more workers per machine, not of more machines.

Usage:

    .venv/bin/python -m benchmarks.scale_out --parts sizing --model sentiment --rounds 3
    .venv/bin/python -m benchmarks.scale_out --parts replicas --requests 24 --rounds 3
    .venv/bin/python -m benchmarks.scale_out --parts celery --clients 4 --per-client 8
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

import psutil
import typer

from benchmarks.latency import TEXTS
from benchmarks.throughput import run_level
from client.api import FHEServerAPI
from client.encrypted_model import EncryptedModel
from client.local_server import LocalServer
from tests.support.local_postgres import LocalPostgres
from tests.support.local_redis import LocalRedis
from tests.support.local_worker import LocalWorker


def sizing(models: Path, model: str, requests: int, rounds: int) -> dict:
    """Predictions per second of the embedded pool as 1 run x cores threads and as cores runs x
    1 thread, one server per shape started in turns, `rounds` times; medians per shape."""
    cores = psutil.cpu_count() or 1
    shapes = [(1, cores), (cores, 1)]
    rows: dict[str, list[dict]] = {f"{runs}x{threads}": [] for runs, threads in shapes}
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        for round_ in range(rounds):
            for runs, threads in shapes:
                env = {"FHE_SERVER_WORKERS": str(runs), "FHE_SERVER_FHE_THREADS": str(threads)}
                server = LocalServer(models, root / "data", env=env, log=root / "api.log").start()
                try:
                    with FHEServerAPI(server.url) as client:
                        remote = EncryptedModel(client, model, root / "client")
                        remote.keys()
                        ciphertexts = [remote.encrypt(text).ciphertext for text in TEXTS]
                        for _ in range(runs):  # warm-up: circuit and keys in every worker
                            remote.run(ciphertexts[0])
                        row = run_level(client, remote, ciphertexts, 2 * cores, requests)
                finally:
                    server.stop()
                rows[f"{runs}x{threads}"].append(row)
                typer.echo(
                    f"round {round_ + 1}: {runs} run(s) x {threads} thread(s): "
                    f"{row['predictions_per_second']:.3f} predictions/s, circuit "
                    f"{row['circuit_run_median_seconds']:.3f} s"
                )
    medians = {
        shape: statistics.median(r["predictions_per_second"] for r in runs)
        for shape, runs in rows.items()
    }
    circuit = {
        shape: statistics.median(r["circuit_run_median_seconds"] for r in runs)
        for shape, runs in rows.items()
    }
    for shape in rows:
        typer.echo(
            f"{shape}: median {medians[shape]:.3f} predictions/s, circuit {circuit[shape]:.3f} s"
        )
    ratio = medians[f"{cores}x1"] / medians[f"1x{cores}"]
    typer.echo(f"{cores} runs x 1 thread / 1 run x {cores} threads: {ratio:.2f}x")
    return {
        "cores": cores,
        "model": model,
        "requests_per_round": requests,
        "predictions_per_second_median": medians,
        "circuit_seconds_median": circuit,
        "ratio_runs_over_threads": ratio,
        "rounds": rows,
    }


def spread_level(remotes: list[EncryptedModel], ciphertexts: list[bytes], total: int) -> dict:
    """`2 x len(remotes)` client threads share `total` predictions, each thread sending to one
    replica (threads spread evenly); returns predictions per second and the median run."""
    lock = threading.Lock()
    remaining = iter(range(total))
    circuit: list[float] = []

    def client(remote: EncryptedModel) -> None:
        while True:
            with lock:
                index = next(remaining, None)
            if index is None:
                return
            answer = remote.run(ciphertexts[index % len(ciphertexts)])
            with lock:
                circuit.append(answer.fhe_seconds)

    threads = [threading.Thread(target=client, args=(r,)) for r in remotes for _ in range(2)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    return {
        "replicas": len(remotes),
        "requests": total,
        "predictions_per_second": total / wall,
        "circuit_run_median_seconds": statistics.median(circuit),
    }


def replicas(models: Path, model: str, requests: int, rounds: int) -> dict:
    """Predictions per second through 1 and through 2 API replicas sharing one Postgres; the
    cores are split so that replicas x runs x threads = cores. Medians over `rounds`, in turns."""
    cores = psutil.cpu_count() or 1
    rows: dict[str, list[dict]] = {"1": [], "2": []}
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        postgres = LocalPostgres().start()
        try:
            for round_ in range(rounds):
                for count in (1, 2):
                    threads = max(1, cores // count)
                    env = {
                        "FHE_SERVER_DATABASE_URL": postgres.url,
                        "FHE_SERVER_CALLBACK_SIGNING_KEY": "benchmark-only",
                        "FHE_SERVER_WORKERS": "1",
                        "FHE_SERVER_FHE_THREADS": str(threads),
                    }
                    servers = [
                        LocalServer(models, root / f"r{i}", env=env, log=root / f"r{i}.log")
                        for i in range(count)
                    ]
                    clients: list[FHEServerAPI] = []
                    try:
                        for server in servers:
                            server.start()
                        clients = [FHEServerAPI(server.url) for server in servers]
                        remotes = [EncryptedModel(c, model, root / "client") for c in clients]
                        remotes[0].keys()
                        ciphertexts = [remotes[0].encrypt(text).ciphertext for text in TEXTS]
                        for remote in remotes:  # warm-up: circuit and keys in each pool
                            remote.run(ciphertexts[0])
                        row = spread_level(remotes, ciphertexts, requests)
                    finally:
                        for c in clients:
                            c.close()
                        for server in servers:
                            server.stop()
                    rows[str(count)].append(row)
                    typer.echo(
                        f"round {round_ + 1}: {count} replica(s) x 1 run x {threads} thread(s): "
                        f"{row['predictions_per_second']:.3f} predictions/s, circuit "
                        f"{row['circuit_run_median_seconds']:.3f} s"
                    )
        finally:
            postgres.remove()
    medians = {
        count: statistics.median(r["predictions_per_second"] for r in runs)
        for count, runs in rows.items()
    }
    ratio = medians["2"] / medians["1"]
    typer.echo(
        f"1 replica: {medians['1']:.3f}, 2 replicas: {medians['2']:.3f} predictions/s "
        f"(median of {rounds}); 2 / 1: {ratio:.2f}x on {cores} cores"
    )
    return {
        "cores": cores,
        "model": model,
        "requests_per_round": requests,
        "predictions_per_second_median": medians,
        "ratio_two_over_one": ratio,
        "rounds": rows,
    }


def celery_workers(models: Path, model: str, clients: int, per_client: int) -> dict:
    """Measure API + 1 Celery worker, then API + 2 workers."""
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
    return {"model": model, "cores": psutil.cpu_count(), "ratio": ratio, "runs": results}


def main(
    parts: Annotated[
        str, typer.Option(help="what to measure: sizing, replicas, celery")
    ] = "sizing,replicas,celery",
    models: Annotated[Path, typer.Option(help="models directory")] = Path("models"),
    model: Annotated[str, typer.Option(help="FHE model name")] = "sentiment",
    clients: Annotated[int, typer.Option(help="celery: concurrent clients (M)")] = 4,
    per_client: Annotated[int, typer.Option(help="celery: predictions per client (K)")] = 8,
    requests: Annotated[int, typer.Option(help="sizing, replicas: predictions per round")] = 24,
    rounds: Annotated[int, typer.Option(help="sizing, replicas: rounds, in turns")] = 3,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="write results here")] = None,
) -> None:
    """Measure the parts asked for; --json keeps the parts not measured this time."""
    models = models.resolve()
    payload = json.loads(json_out.read_text()) if json_out and json_out.is_file() else {}
    if "runs" in payload:  # the file before parts: the Celery figures alone
        payload = {"celery": payload}
    for part in parts.split(","):
        if part == "sizing":
            payload["sizing"] = sizing(models, model, requests, rounds)
        elif part == "replicas":
            payload["replicas"] = replicas(models, model, requests, rounds)
        elif part == "celery":
            payload["celery"] = celery_workers(models, model, clients, per_client)
        else:
            raise typer.BadParameter(f"unknown part {part!r}")
    if json_out is not None:
        json_out.write_text(json.dumps(payload, indent=2) + "\n")


if __name__ == "__main__":
    sys.exit(typer.run(main))
