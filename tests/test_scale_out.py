"""Scale-out on Celery with a real redis-server and two real `fhe-server worker` processes.

50 encrypted jobs; one worker killed with SIGKILL while it works, and the API restarted while
jobs wait: every job still ends with the right decrypted label.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from client.api import FHEServerAPI
from client.encrypted_model import EncryptedModel
from client.job_flow import submit_texts
from client.journal import JobJournal
from fhe.recipe import TrainedBundle
from tests.conftest import SAMPLE_TEXTS, clear_labels, job_labels
from tests.scale_out import RedisProcess, WorkerProcess
from tests.server_process import ServerProcess


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisProcess]:
    server = RedisProcess(tmp_path / "redis").start()
    yield server
    server.stop()


def celery_api(models: Path, data: Path, redis_url: str) -> ServerProcess:
    env = {
        "FHE_SERVER_BACKEND": "celery",
        "FHE_SERVER_REDIS_URL": redis_url,
        "FHE_SERVER_CELERY_VISIBILITY_TIMEOUT": "10",
    }
    return ServerProcess(models, data, env=env)


@pytest.fixture
def two_workers(
    tiny_models: Path, redis_server: RedisProcess, tmp_path: Path
) -> Iterator[list[WorkerProcess]]:
    env = {"FHE_SERVER_CELERY_VISIBILITY_TIMEOUT": "10"}
    workers = [
        WorkerProcess(redis_server.url, tiny_models, tmp_path / f"w{i}", f"w{i}", env).start()
        for i in (1, 2)
    ]
    yield workers
    for worker in workers:
        worker.stop()


def test_fifty_jobs_finish_after_a_worker_is_killed_mid_run(
    tiny_models: Path,
    tiny_bundle: TrainedBundle,
    redis_server: RedisProcess,
    two_workers: list[WorkerProcess],
    tmp_path: Path,
) -> None:
    first, second = two_workers
    api = celery_api(tiny_models, tmp_path / "api", redis_server.url).start()
    texts = [SAMPLE_TEXTS[i % len(SAMPLE_TEXTS)] for i in range(50)]
    try:
        with FHEServerAPI(api.url) as client:
            remote = EncryptedModel(client, "tiny", tmp_path / "client")
            synchronous = remote.predict(SAMPLE_TEXTS[:2])
            assert [p.label for p in synchronous] == clear_labels(tiny_bundle, SAMPLE_TEXTS[:2])
            entries = submit_texts(remote, texts, JobJournal(tmp_path / "client"))
            deadline = time.monotonic() + 120
            while not set(first.task_ids("received")) - set(first.task_ids("succeeded")):
                assert time.monotonic() < deadline, "the first worker never held a task"
                time.sleep(0.02)
            first.kill()
            lost = set(first.task_ids("received")) - set(first.task_ids("succeeded"))
            labels = job_labels(remote, entries)
    finally:
        api.stop()
    assert labels == clear_labels(tiny_bundle, texts)
    assert lost and lost <= set(second.task_ids("succeeded")), "lost task not delivered again"


def test_restarting_the_api_mid_queue_loses_nothing(
    tiny_models: Path,
    tiny_bundle: TrainedBundle,
    redis_server: RedisProcess,
    two_workers: list[WorkerProcess],
    tmp_path: Path,
) -> None:
    api = celery_api(tiny_models, tmp_path / "api", redis_server.url).start()
    texts = [SAMPLE_TEXTS[i % len(SAMPLE_TEXTS)] for i in range(30)]
    try:
        with FHEServerAPI(api.url) as client:
            remote = EncryptedModel(client, "tiny", tmp_path / "client")
            entries = submit_texts(remote, texts, JobJournal(tmp_path / "client"))
            pending = [e for e in entries if client.job(e.job_id)["status"] != "done"]
        assert pending, "every job finished before the restart"
        api.kill()
        api.start()
        with FHEServerAPI(api.url) as client:
            remote = EncryptedModel(client, "tiny", tmp_path / "client")
            labels = job_labels(remote, entries)
    finally:
        api.stop()
    assert labels == clear_labels(tiny_bundle, texts)
