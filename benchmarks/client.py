"""What the user waits for: `fhe-client predict` as a user runs it, timed from outside.

With keys cached and the server warm, runs the one-shot command `fhe-client predict -m MODEL -v
--json TEXT` several times per model and prints the wall time, its parts as the client reports
them (prepare, encrypt, FHE on the server, decrypt) and the process's peak RSS; then a CSV batch
(`--input ... --output ...`) end to end, in texts per second. With `--client` given more than
once (say the full install's and `make client-install`'s fhe-client), every install runs each
measurement in turn, interleaved, against the same server. Usage:

    .venv/bin/python -m benchmarks.client --models models --runs 5 --batch 100 \
        --json docs/bench-client.json
    .venv/bin/python -m benchmarks.client --client .venv/bin/fhe-client \
        --client /tmp/c/bin/fhe-client --runs 9 --batch 100 --json docs/bench-client-installs.json
"""

from __future__ import annotations

import csv
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Annotated, Optional

import psutil
import typer

from benchmarks.latency import TEXTS, PeakRSS
from client.local_server import LocalServer
from fhe.build.dataset import DEFAULT_DATA, load_split

CLIENT = Path(sys.executable).parent / "fhe-client"


def run_once(args: list[str], env: dict[str, str], client: Path = CLIENT) -> tuple[float, int, str]:
    """Wall seconds, peak RSS bytes and stdout of one fhe-client run."""
    started = time.perf_counter()
    process = subprocess.Popen(
        [str(client), *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    rss = PeakRSS(process.pid, every=0.02)
    rss.start()
    out, err = process.communicate(timeout=600)
    wall = time.perf_counter() - started
    peak = rss.stop()
    if process.returncode != 0:
        raise RuntimeError(f"fhe-client {' '.join(args)} failed: {err}")
    return wall, peak, out


def one_shot(model: str, runs: int, env: dict[str, str], clients: list[Path]) -> list[dict]:
    """The one-shot command `runs` times per client (after one warm-up each), the clients
    taking turns: medians of the wall and parts, one row per client."""
    args = ["predict", "-m", model, "-v", "--json"]
    for client in clients:
        run_once([*args, TEXTS[0]], env, client)
    measured: dict[Path, list[tuple[float, int, dict]]] = {client: [] for client in clients}
    for index in range(runs):
        for client in clients:
            wall, peak, out = run_once([*args, TEXTS[index % len(TEXTS)]], env, client)
            measured[client].append((wall, peak, json.loads(out)["seconds"]))
    keys = ("prepare", "encrypt", "fhe", "round_trip", "decrypt", "total")
    rows = []
    for client, found in measured.items():
        walls = [wall for wall, _, _ in found]
        parts = [part for _, _, part in found]
        rows.append(
            {
                "model": model,
                "client": str(client),
                "runs": runs,
                "wall_seconds_median": statistics.median(walls),
                "wall_seconds_min": min(walls),
                "wall_seconds_max": max(walls),
                **{
                    f"{key}_seconds_median": statistics.median(p[key] for p in parts)
                    for key in keys
                },
                "outside_predict_seconds_median": statistics.median(
                    wall - p["total"] for wall, p in zip(walls, parts, strict=True)
                ),
                "peak_rss_bytes_median": int(statistics.median(peak for _, peak, _ in found)),
            }
        )
    return rows


def batch(
    model: str, texts: list[str], env: dict[str, str], scratch: Path, client: Path = CLIENT
) -> dict:
    """One CSV of texts through `--input/--output`, end to end, as a user runs it."""
    source = scratch / f"batch-{model}.csv"
    with source.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text"])
        writer.writerows([text] for text in texts)
    out = scratch / f"out-{model}.csv"
    wall, peak, _ = run_once(
        ["predict", "-m", model, "--input", str(source), "--output", str(out), "--overwrite"],
        env,
        client,
    )
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == len(texts), f"{len(rows)} rows written of {len(texts)}"
    return {
        "model": model,
        "client": str(client),
        "texts": len(texts),
        "wall_seconds": wall,
        "texts_per_second": len(texts) / wall,
        "seconds_per_text": wall / len(texts),
        "peak_rss_bytes": peak,
    }


def main(
    models: Annotated[Path, typer.Option(help="models directory to serve")] = Path("models"),
    model: Annotated[str, typer.Option(help="text models, joined by commas")] = (
        "sentiment-linear,sentiment"
    ),
    runs: Annotated[int, typer.Option(help="one-shot runs per model")] = 5,
    batch_size: Annotated[int, typer.Option("--batch", help="texts in the CSV batch")] = 100,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="write results here")] = None,
    client: Annotated[
        Optional[list[Path]], typer.Option(help="an fhe-client to time (repeatable)")
    ] = None,
) -> None:
    """Measure the client as a user sees it on this machine."""
    texts = load_split(DEFAULT_DATA).test_texts[:batch_size]
    results: dict = {"cores": psutil.cpu_count(), "one_shot": [], "batch": []}
    with tempfile.TemporaryDirectory() as folder:
        scratch = Path(folder)
        server = LocalServer(models.resolve(), scratch / "data", log=scratch / "server.log").start()
        env = {
            **os.environ,
            "FHE_SERVER_URL": server.url,
            "FHE_CLIENT_CACHE": str(scratch / "client"),
        }
        try:
            clients = [path.resolve() for path in client or [CLIENT]]
            for name in model.split(","):
                run_once(["keygen", "-m", name], env)
                for row in one_shot(name, runs, env, clients):
                    results["one_shot"].append(row)
                    typer.echo(json.dumps(row))
                for each in clients:
                    results["batch"].append(batch(name, texts, env, scratch, each))
                    typer.echo(json.dumps(results["batch"][-1]))
        finally:
            server.stop()
    if json_out is not None:
        json_out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    sys.exit(typer.run(main))
