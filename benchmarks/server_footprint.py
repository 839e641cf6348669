"""What serving costs on this machine: install sizes by role, each server process's memory after
real runs, and the time from process start to ready and to a first encrypted answer, the lean
server against an earlier one.

- installs: `du -sm` of each virtual environment given (client, server, full);
- starts: `fhe-server serve --dev` over the shipped models, started `--rounds` times per variant
  in turns, all on one data directory whose key store already holds the client's keys. For each
  start: seconds from spawning the process to `/readyz` 200; seconds from spawning it to the
  answer of one encrypted `sentiment-linear` prediction sent the moment `/readyz` said 200 (its
  circuit runs in 0.01 s, so this is the time until the server really serves: an earlier server
  said ready before its workers had loaded Concrete-ML and the circuits); then the RSS of the
  API and of each worker process after `--runs` real `sentiment` predictions. Medians.

Variants: `lean` (this checkout in the server-role environment, its circuit cache filled),
`lean, cold cache` (the same, the cache emptied before each start: every circuit compiled), and
with `--before REF` the server of that commit (a git worktree of it) in the full environment.
With `--drop-caches` (root), each variant is also started after the kernel's page cache is
dropped, as on a node that has just pulled the image ("cold page cache").

Usage:

    make server-install client-install
    .venv/bin/python -m benchmarks.server_footprint --before f33bd64 --rounds 3 --drop-caches \\
        --json docs/bench-server-footprint.json
"""

from __future__ import annotations

import json
import os
import shutil
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
FIRST = "sentiment-linear"


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


def _spawn(python: Path, cwd: Path, data_dir: Path, log: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    # -P: the code under test is PYTHONPATH's, not that of the directory this runs in.
    command = [str(python), "-P", "-m", "server.cli", "serve", "--dev", "--port", str(port)]
    command += ["--models", str(REPO / "models"), "--data-dir", str(data_dir)]
    env = {"PYTHONPATH": str(cwd), "FHE_SERVER_DEV_MODE": "true"}
    return spawn(command, log, env), f"http://127.0.0.1:{port}"


def prepare(python: Path, data_dir: Path, client_dir: Path, log: Path) -> dict:
    """Upload both models' keys into the shared data directory and encrypt one linear input:
    the request each timed start answers first."""
    process, url = _spawn(python, REPO, data_dir, log)
    try:
        _wait_ready(url, process)
        with FHEServerAPI(url) as api:
            EncryptedModel(api, MODEL, client_dir).keys()
            linear = EncryptedModel(api, FIRST, client_dir)
            key_id = linear.keys().key_id
            return {
                "ciphertext": linear.encrypt(TEXTS[0]).ciphertext,
                "headers": {"X-Key-Id": key_id, "X-Client-Spec": linear.client_spec},
            }
    finally:
        stop_process(process, 30)
        kill_process(process)


def one_start(
    python: Path, cwd: Path, data_dir: Path, client_dir: Path, first: dict, runs: int, log: Path
) -> dict:
    """Start a server; time it to ready and to its first encrypted answer; RSS after real runs."""
    started = time.monotonic()
    process, url = _spawn(python, cwd, data_dir, log)
    try:
        ready = _wait_ready(url, process) - started
        answer = httpx.post(
            f"{url}/v1/models/{FIRST}/predict",
            content=first["ciphertext"],
            headers={**first["headers"], "Content-Type": "application/octet-stream"},
            timeout=300,
        )
        answered = time.monotonic() - started
        if answer.status_code != 200:
            raise RuntimeError(f"the first prediction answered {answer.status_code}: {answer.text}")
        with FHEServerAPI(url) as api:
            remote = EncryptedModel(api, MODEL, client_dir)
            for text in TEXTS[:runs]:
                remote.run(remote.encrypt(text).ciphertext)
        rss = _rss_mb(process)
    finally:
        stop_process(process, 30)
        kill_process(process)
    return {"ready_seconds": ready, "first_answer_seconds": answered, "rss_mb": rss}


def _drop_page_cache() -> None:
    """Empty the kernel's page cache, as on a node that has just pulled the image: every
    library is read from disk again (root only)."""
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def _median_row(starts: list[dict]) -> dict:
    workers = [max(v for k, v in s["rss_mb"].items() if k != "api") for s in starts]
    return {
        "starts": len(starts),
        "ready_seconds": statistics.median(s["ready_seconds"] for s in starts),
        "first_answer_seconds": statistics.median(s["first_answer_seconds"] for s in starts),
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
    drop_caches: Annotated[
        bool,
        typer.Option(help="also start each variant after dropping the page cache (root only)"),
    ] = False,
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
        variants["lean, cold cache"] = variants["lean"]
        data = root / "data"
        first = prepare(variants["lean"][0], data, root / "client", root / "prepare.log")
        starts: dict[str, list[dict]] = {name: [] for name in variants}
        try:
            page_caches = ["warm", "cold"] if drop_caches else ["warm"]
            for round_ in range(1, rounds + 1):
                for page_cache in page_caches:
                    for name, (python, cwd) in variants.items():
                        if name == "lean, cold cache":
                            shutil.rmtree(data / "circuits", ignore_errors=True)
                        if page_cache == "cold":
                            _drop_page_cache()
                        label = name if page_cache == "warm" else f"{name}, cold page cache"
                        log = root / f"{name.split()[0].strip(',')}.log"
                        result = one_start(python, cwd, data, root / "client", first, runs, log)
                        typer.echo(f"{label} round {round_}: {json.dumps(result)}")
                        starts.setdefault(label, []).append(result)
        finally:
            if before:
                subprocess.run(
                    ["git", "-C", str(REPO), "worktree", "remove", "--force", str(root / "before")],
                    check=False,
                    capture_output=True,
                )
    rows = {name: _median_row(found) for name, found in starts.items() if found}
    typer.echo(f"{'variant':<26} {'ready s':>8} {'answer s':>9} {'API MB':>7} {'worker MB':>9}")
    for name, row in rows.items():
        typer.echo(
            f"{name:<26} {row['ready_seconds']:>8.2f} {row['first_answer_seconds']:>9.2f} "
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
