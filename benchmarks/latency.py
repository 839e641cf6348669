"""End-to-end latency of FHE models: starts fhe-server, generates keys, times N predictions.

Prints keygen time, evaluation key bytes, ciphertext bytes in and out, server-side FHE seconds and
end-to-end seconds through HTTP (median and p90), and the server's peak RSS (API process plus
workers). `--model all` measures every ready FHE model in the directory, one after the other;
`--update` replaces only the rows of the models measured in an existing JSON list. Usage:

    .venv/bin/python -m benchmarks.latency --models models --model sentiment -n 10 [--json out.json]
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

from client.api import FHEServerAPI
from client.encrypted_model import EncryptedModel
from client.local_server import LocalServer

TEXTS = [
    "I love this airline, the crew was wonderful",
    "worst flight ever, they lost my bag and nobody helped",
    "@united what time does boarding start for my flight to Denver?",
    "thank you for the quick rebooking, really appreciated",
    "two hours on the tarmac and no information at all",
    "is there wifi on the new planes?",
]


class PeakRSS(threading.Thread):
    """Samples the resident memory of a process and its children until stopped."""

    def __init__(self, pid: int, every: float = 0.1) -> None:
        super().__init__(daemon=True)
        self.root = psutil.Process(pid)
        self.every = every
        self.peak = 0
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.is_set():
            try:
                processes = [self.root, *self.root.children(recursive=True)]
                total = sum(p.memory_info().rss for p in processes if p.is_running())
                self.peak = max(self.peak, total)
            except psutil.Error:
                pass
            self._done.wait(self.every)

    def stop(self) -> int:
        self._done.set()
        self.join()
        return self.peak


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


def measure(api: FHEServerAPI, model: str, n: int, scratch: Path) -> dict:
    """Keys, one warm-up, then `n` timed predictions of one model, one at a time."""
    remote = EncryptedModel(
        api, model, scratch / "client" / model, embedder_cache=scratch / "embedders"
    )
    started = time.perf_counter()
    keys = remote.keys()
    keygen_and_upload = time.perf_counter() - started
    remote.predict([TEXTS[0]])  # warm-up: embedder load, worker key cache
    # One request at the server at a time: a batch keeps two in flight, which share the cores.
    predictions = remote.predict([TEXTS[i % len(TEXTS)] for i in range(n)], in_flight=1)
    fhe = [p.seconds["fhe"] for p in predictions]
    round_trip = [p.seconds["round_trip"] for p in predictions]
    return {
        "model": model,
        "n": n,
        "keygen_seconds": keys.keygen_seconds,
        "keygen_and_upload_seconds": keygen_and_upload,
        "evaluation_key_bytes": keys.evaluation_key_bytes,
        "ciphertext_in_bytes": predictions[0].bytes["ciphertext_in"],
        "ciphertext_out_bytes": predictions[0].bytes["ciphertext_out"],
        "fhe_seconds_median": statistics.median(fhe),
        "fhe_seconds_p90": percentile(fhe, 90),
        "server_seconds_median": statistics.median(p.seconds["server"] for p in predictions),
        "http_round_trip_seconds_median": statistics.median(round_trip),
        "http_round_trip_seconds_p90": percentile(round_trip, 90),
        "end_to_end_seconds_median": statistics.median(p.seconds["total"] for p in predictions),
        "http_overhead_ratio": statistics.median(round_trip) / statistics.median(fhe),
        "cores": psutil.cpu_count(),
    }


def show(results: dict) -> None:
    """Print one model's figures, a line each."""
    for key, value in results.items():
        if isinstance(value, float):
            shown = f"{value:,.4f}"
        elif isinstance(value, int):
            shown = f"{value:,}"
        else:
            shown = str(value)
        typer.echo(f"{key:34} {shown}")


def main(
    models: Annotated[Path, typer.Option(help="models directory to serve")] = Path("models"),
    model: Annotated[
        str, typer.Option(help="FHE model name, several joined by commas, or 'all'")
    ] = "sentiment",
    n: Annotated[int, typer.Option("-n", help="predictions to time (one at a time)")] = 10,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="write results here")] = None,
    update: Annotated[
        bool, typer.Option(help="replace only the measured models' rows in an existing --json list")
    ] = False,
) -> None:
    """Measure models end to end on this machine."""
    measured = []
    with tempfile.TemporaryDirectory() as scratch:
        server = LocalServer(
            models.resolve(), Path(scratch) / "data", log=Path(scratch) / "server.log"
        ).start()
        rss = PeakRSS(server.process.pid)
        rss.start()
        try:
            with FHEServerAPI(server.url) as api:
                names = model.split(",")
                if model == "all":
                    listing = api.models()
                    names = [m.name for m in listing if m.kind == "fhe" and m.ready]
                for name in names:
                    measured.append(measure(api, name, n, Path(scratch)))
                    show(measured[-1])
        finally:
            peak = rss.stop()
            server.stop()
    for results in measured:
        results["server_peak_rss_bytes"] = peak
    typer.echo(f"{'server_peak_rss_bytes':34} {peak:,}")
    if json_out is None:
        return
    payload: dict | list = measured if model == "all" or "," in model else measured[0]
    if update and json_out.is_file():
        fresh = {row["model"] for row in measured}
        kept = [row for row in json.loads(json_out.read_text()) if row["model"] not in fresh]
        payload = kept + measured
    json_out.write_text(json.dumps(payload, indent=2) + "\n")


if __name__ == "__main__":
    sys.exit(typer.run(main))
