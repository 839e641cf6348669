"""Requests per second and p50/p99 latency of a clear model over loopback, at several concurrencies.

Starts fhe-server over a models directory and sends the model's example input (from sample.json
or config.json) through `POST /models/{name}`. Usage:

    .venv/bin/python -m benchmarks.clear_throughput --models tests/fixtures/sklearn \
        --model tabular-classification-linear-skops-sk1.5.0 --requests 400 --concurrency 1,8
"""

from __future__ import annotations

import json
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Annotated, Any, Optional

import httpx
import numpy as np
import typer

from client.local_server import LocalServer


def example_body(model_dir: Path) -> dict[str, Any]:
    """The request the benchmark sends: sample.json's inputs, else config.json's example_input."""
    sample = model_dir / "sample.json"
    if sample.is_file():
        return {"inputs": json.loads(sample.read_text())["inputs"]}
    config = json.loads((model_dir / "config.json").read_text())["sklearn"]
    example = config["example_input"]
    if config["task"] == "text-classification":
        return {"inputs": example["data"][0]}
    return {"inputs": {"data": example}}


def run_level(url: str, body: dict[str, Any], requests: int, concurrency: int) -> dict[str, float]:
    """Send `requests` requests from `concurrency` threads; latency in milliseconds."""
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    with httpx.Client(timeout=60, limits=httpx.Limits(max_connections=concurrency)) as client:

        def one(_: int) -> None:
            started = time.perf_counter()
            status = client.post(url, json=body).status_code
            latencies.append((time.perf_counter() - started) * 1000)
            statuses[status] = statuses.get(status, 0) + 1

        started = time.perf_counter()
        with ThreadPoolExecutor(concurrency) as pool:
            list(pool.map(one, range(requests)))
        elapsed = time.perf_counter() - started
    return {
        "concurrency": concurrency,
        "requests": requests,
        "requests_per_second": requests / elapsed,
        "p50_ms": float(np.percentile(latencies, 50)),
        "p99_ms": float(np.percentile(latencies, 99)),
        "statuses": statuses,
    }


def main(
    models: Annotated[Path, typer.Option(help="models directory")] = Path("tests/fixtures/sklearn"),
    model: Annotated[str, typer.Option(help="model name")] = (
        "tabular-classification-linear-skops-sk1.5.0"
    ),
    requests: Annotated[int, typer.Option(help="requests per level")] = 400,
    concurrency: Annotated[str, typer.Option(help="comma-separated levels")] = "1,8",
    json_out: Annotated[Optional[Path], typer.Option("--json", help="write results here")] = None,
) -> None:
    """Measure one clear model; prints a line per concurrency level."""
    body = example_body(models / model)
    results = []
    with tempfile.TemporaryDirectory() as scratch:
        server = LocalServer(
            models.resolve(), Path(scratch) / "data", log=Path(scratch) / "server.log"
        ).start()
        try:
            url = f"{server.url}/models/{model}"
            run_level(url, body, 20, 1)  # warm-up
            for level in (int(part) for part in concurrency.split(",")):
                result = run_level(url, body, requests, level)
                results.append(result)
                typer.echo(
                    f"concurrency {level}: {result['requests_per_second']:.1f} req/s, "
                    f"p50 {result['p50_ms']:.2f} ms, p99 {result['p99_ms']:.2f} ms, "
                    f"statuses {result['statuses']}"
                )
        finally:
            server.stop()
    if json_out is not None:
        json_out.write_text(json.dumps({"model": model, "levels": results}, indent=2) + "\n")


if __name__ == "__main__":
    typer.run(main)
