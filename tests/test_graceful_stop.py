"""Stopping the job runner under load always ends its loops, however the stop falls: Python
3.11's `asyncio.wait_for` can swallow a cancellation that arrives as the awaited event is set,
and the runs being cancelled set the dispatcher's event as they end."""

from __future__ import annotations

import asyncio
import random
import time
from pathlib import Path

from server.jobs.callbacks import AllowList, CallbackSender
from server.jobs.runner import JobPolicy, JobRunner
from server.storage.job import Job, new_job_id
from server.storage.jobs import SqliteJobStore

STOPS = 150


async def stop_under_load(root: Path, seed: int) -> tuple[float, int]:
    """Queue 60 jobs, let the runner work for a moment, stop it: seconds and tasks left."""
    store = SqliteJobStore(root)
    for _ in range(60):
        job = Job(new_job_id(), "m", "fhe", "queued", time.time(), "http://127.0.0.1/")
        store.add(job, b"input")

    async def execute(job: Job, payload: bytes) -> tuple[bytes, str, float | None]:
        # Stands in for a circuit run: what is tested is the runner's loops around it.
        await asyncio.sleep(random.Random(seed).uniform(0, 0.004))
        return b"result", "application/octet-stream", 0.001

    policy = JobPolicy(
        concurrency=4, ttl_seconds=60, callback_attempts=1, callback_backoff_seconds=0
    )
    runner = JobRunner(store, execute, policy, CallbackSender(AllowList.parse([]), b"k", 1.0))
    await runner.start()
    await asyncio.sleep(random.Random(seed).uniform(0, 0.03))
    started = time.perf_counter()
    await asyncio.wait_for(runner.stop(), 30)
    seconds = time.perf_counter() - started
    store.close()
    return seconds, runner.tasks_left


def test_the_runner_stops_promptly_every_time(tmp_path: Path) -> None:
    slowest = 0.0
    for attempt in range(STOPS):
        seconds, left = asyncio.run(stop_under_load(tmp_path / str(attempt), attempt))
        assert left == 0, f"stop {attempt}: {left} tasks still running"
        slowest = max(slowest, seconds)
    assert slowest < 2.0, f"the slowest of {STOPS} stops took {slowest:.2f} s"


def test_a_stopping_server_starts_no_more_jobs(tiny_models: Path, tmp_path: Path) -> None:
    """SIGTERM while a request is in progress: uvicorn lets it finish, and meanwhile the job
    runner claims nothing more, so the queued jobs stay queued (never started) for the next
    start, rather than starting runs the stop would cut short."""
    import signal
    import sqlite3
    import threading

    from client.api import FHEServerAPI
    from client.encrypted_model import EncryptedModel
    from client.jobs import JobJournal
    from tests.conftest import SAMPLE_TEXTS
    from tests.support.jobs import submit_items
    from tests.support.real_server import backlog, frozen_children, raw_predict, wait_until
    from tests.support.server_process import ServerProcess

    env = {
        "FHE_SERVER_WORKERS": "1",
        "FHE_SERVER_JOB_CONCURRENCY": "1",
        "FHE_SERVER_GRACEFUL_SHUTDOWN_SECONDS": "60",
    }
    api = ServerProcess(tiny_models, tmp_path / "api", env=env).start()
    try:
        with FHEServerAPI(api.url) as client:
            remote = EncryptedModel(client, "tiny", tmp_path / "client")
            remote.predict(SAMPLE_TEXTS[:1])
            ciphertext = remote.encrypt(SAMPLE_TEXTS[0]).ciphertext
            # The pool's worker stops answering.
            with frozen_children(api.process.pid) as thaw:
                entries = submit_items(remote, SAMPLE_TEXTS[:5], JobJournal(tmp_path / "client"))
                in_progress = threading.Thread(
                    target=raw_predict, args=(api.url, remote, ciphertext)
                )
                in_progress.start()
                wanted = {"jobs_queued": 4, "broker": 0, "turns": 1}
                wait_until(lambda: backlog(api.url) == wanted, 30, f"backlog {backlog(api.url)}")
                api.process.send_signal(signal.SIGTERM)
                time.sleep(1)
                thaw()
                in_progress.join(60)
        assert api.process.wait(90) is not None
    finally:
        api.stop()
    with sqlite3.connect(tmp_path / "api" / "jobs" / "jobs.sqlite") as db:
        rows = dict(db.execute("SELECT job_id, status || ':' || attempts FROM jobs").fetchall())
    first, *rest = [rows[e.job_id] for e in entries]
    assert first in ("done:1", "running:1"), rows
    assert rest == ["queued:0"] * 4, rows
