"""What serving costs on this machine: install sizes by role, each server process's memory after
real runs, and the time from process start to ready, the lean server against an earlier one.

- installs: `du -sm` of each virtual environment given (client, server, full);
- starts: `fhe-server serve --dev` over the shipped models, started `--rounds` times per variant
  in turns; for each start: seconds from spawning the process to `/readyz` 200, then the first
  `sentiment` prediction's round trip (an earlier server said ready before its circuits were
  loaded, so its first prediction paid for that), then the RSS of the API and of each worker
  process after `--runs` real `sentiment` predictions. Medians per variant.

Variants: `lean` (this checkout in the server-role environment; its first start compiles the
circuits into an empty cache, `lean, cold cache`, later ones reuse it), and with `--before REF`
the server of that commit (a git worktree of it) in the full environment.

Usage:

    make server-install client-install
    .venv/bin/python -m benchmarks.server_footprint --before f33bd64 --rounds 5 \\
        --json docs/bench-server-footprint.json
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Annotated, Optional

import httpx
import psutil
import typer

from benchmarks.latency import TEXTS
from client.api import FHEServerAPI
from client.encrypted_model import EncryptedModel
from client.local_server import free_port, kill_process, spawn, stop_process

REPO = Path(__file__).resolve().parents[1]
MODEL = "sentiment"


def du_mb(path: Path) -> int | None:
    """`du -sm` of a directory, or None when it is not there."""
    if not path.is_dir():
        return None
    du = subprocess.run(["du", "-sm", str(path)], capture_output=True, text=True, check=True)
    return int(du.stdout.split()[0])


def _wait_ready(url: str, process: subprocess.Popen, timeout: float = 300) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with {process.returncode}")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return time.monotonic()
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"{url} was not ready within {timeout:g} s")


def _rss_mb(process: subprocess.Popen) -> dict[str, float]:
    """RSS of the server process and of each of its descendants still running, in MB."""
    root = psutil.Process(process.pid)
    found = {"api": root.memory_info().rss / 2**20}
    for i, child in enumerate(root.children(recursive=True)):
        try:
            found[f"worker {i + 1}"] = child.memory_info().rss / 2**20
        except psutil.NoSuchProcess:
            continue
    return found


def one_start(
    python: Path, cwd: Path, data_dir: Path, client_dir: Path, runs: int, log: Path
) -> dict:
    """Start a server, time it to ready and its first prediction, measure RSS after real runs."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [str(python), "-m", "server.cli", "serve", "--dev", "--port", str(port)]
    command += ["--models", str(REPO / "models"), "--data-dir", str(data_dir)]
    env = {"PYTHONPATH": str(cwd), "FHE_SERVER_DEV_MODE": "true"}
    started = time.monotonic()
    process = spawn(command, log, env)
    try:
        ready = _wait_ready(url, process) - started
        with FHEServerAPI(url) as api:
            remote = EncryptedModel(api, MODEL, client_dir)
            remote.keys()
            ciphertext = remote.encrypt(TEXTS[0]).ciphertext
            first = time.monotonic()
            remote.run(ciphertext)
            first_seconds = time.monotonic() - first
            for text in TEXTS[1:runs]:
                remote.run(remote.encrypt(text).ciphertext)
        rss = _rss_mb(process)
    finally:
        stop_process(process, 30)
        kill_process(process)
    return {"ready_seconds": ready, "first_prediction_seconds": first_seconds, "rss_mb": rss}


def _median_row(starts: list[dict]) -> dict:
    workers = [max(v for k, v in s["rss_mb"].items() if k != "api") for s in starts]
    return {
        "starts": len(starts),
        "ready_seconds": statistics.median(s["ready_seconds"] for s in starts),
        "first_prediction_seconds": statistics.median(
            s["first_prediction_seconds"] for s in starts
        ),
        "api_rss_mb": statistics.median(s["rss_mb"]["api"] for s in starts),
        "largest_worker_rss_mb": statistics.median(workers),
        "processes": statistics.median(len(s["rss_mb"]) for s in starts),
    }


def main(
    server_venv: Annotated[Path, typer.Option(help="server-role environment")] = Path(
        ".venv-server"
    ),
    client_venv: Annotated[Path, typer.Option(help="client-role environment")] = Path(
        ".venv-client"
    ),
    full_venv: Annotated[Path, typer.Option(help="full environment (make install)")] = Path(
        ".venv"
    ),
    before: Annotated[
        Optional[str], typer.Option(help="a commit whose server to compare, in the full venv")
    ] = None,
    rounds: Annotated[int, typer.Option(help="starts per variant, in turns")] = 3,
    runs: Annotated[int, typer.Option(help="sentiment predictions before RSS is read")] = 3,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="write results")] = None,
) -> None:
    """Measure installs, memory and start-up; print a table and optionally write JSON."""
    installs = {
        "client": du_mb(client_venv),
        "server": du_mb(server_venv),
        "full": du_mb(full_venv),
    }
    typer.echo(f"installs (du -sm, MB): {installs}")
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        variants: dict[str, tuple[Path, Path]] = {
            "lean": (server_venv.resolve() / "bin" / "python", REPO)
        }
        if before:
            worktree = root / "before"
            git = ["git", "-C", str(REPO), "worktree"]
            subprocess.run(
                [*git, "add", "-f", "--detach", str(worktree), before],
                check=True,
                capture_output=True,
            )
            variants[f"before ({before})"] = (full_venv.resolve() / "bin" / "python", worktree)
        starts: dict[str, list[dict]] = {name: [] for name in variants}
        cold: dict | None = None
        try:
            for round_ in range(rounds + 1):
                for name, (python, cwd) in variants.items():
                    if round_ == 0 and name != "lean":
                        continue  # round 0 is the lean server's first start: an empty cache
                    data = root / f"data-{name.split()[0]}"
                    log = root / f"{name.split()[0]}.log"
                    result = one_start(python, cwd, data, root / "client", runs, log)
                    typer.echo(f"{name} round {round_}: {json.dumps(result)}")
                    if round_ == 0:
                        cold = result
                    else:
                        starts[name].append(result)
        finally:
            if before:
                subprocess.run(
                    ["git", "-C", str(REPO), "worktree", "remove", "--force", str(root / "before")],
                    check=False,
                    capture_output=True,
                )
    rows = {name: _median_row(found) for name, found in starts.items() if found}
    if cold is not None:
        rows["lean, cold cache"] = _median_row([cold])
    typer.echo(f"{'variant':<26} {'ready s':>8} {'1st pred s':>10} {'API MB':>7} {'worker MB':>9}")
    for name, row in rows.items():
        typer.echo(
            f"{name:<26} {row['ready_seconds']:>8.2f} {row['first_prediction_seconds']:>10.2f} "
            f"{row['api_rss_mb']:>7.0f} {row['largest_worker_rss_mb']:>9.0f}"
        )
    result = {
        "model": MODEL,
        "cores": os.cpu_count(),
        "installs_mb": installs,
        "rows": rows,
        "starts": starts,
    }
    if json_out is not None:
        json_out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    typer.run(main)
