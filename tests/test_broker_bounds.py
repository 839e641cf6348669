"""Redis bounded in Celery mode, and the backlog an autoscaler reads, on real processes.

A real redis-server (with `noeviction`, as deployed), real `fhe-server worker` processes and real
FHE on the tiny circuit: Redis at its `maxmemory` makes the API answer 503 while every accepted
job waits and then finishes; a flush and an empty restart of Redis during runs lose no job; the
`fhe_backlog` gauge counts queued jobs and runs sent but not started, on both compute backends.
"""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest
import redis

from client.api import FHEServerAPI
from client.encrypted_model import EncryptedModel
from client.jobs import JobJournal
from fhe.build.recipe import TrainedBundle
from tests.conftest import REPO, SAMPLE_TEXTS, clear_labels, job_labels
from tests.support.jobs import submit_items
from tests.support.local_postgres import LocalPostgres
from tests.support.local_redis import LocalRedis
from tests.support.local_worker import LocalWorker
from tests.support.real_server import (
    backlog,
    frozen_children,
    raw_predict,
    wait_until,
)
from tests.support.server_process import ServerProcess

NOEVICTION = ["--maxmemory-policy", "noeviction"]


@pytest.fixture
def bounded_redis(tmp_path: Path) -> Iterator[LocalRedis]:
    server = LocalRedis(tmp_path / "redis", args=NOEVICTION).start()
    yield server
    server.stop()


def celery_server(models: Path, data: Path, redis_url: str, **env: str) -> ServerProcess:
    """An API in Celery mode; `env` adds FHE_SERVER_* settings."""
    settings = {
        "FHE_SERVER_BACKEND": "celery",
        "FHE_SERVER_REDIS_URL": redis_url,
        "FHE_SERVER_CELERY_VISIBILITY_TIMEOUT": "10",
    }
    return ServerProcess(models, data, env={**settings, **env})


def worker(
    redis_url: str, models: Path, directory: Path, name: str, database: str | None = None
) -> LocalWorker:
    env = {"FHE_SERVER_DATABASE_URL": database} if database else {}
    return LocalWorker(redis_url, models, directory / name, name, env)


def test_redis_at_maxmemory_answers_503_and_every_job_waits_then_finishes(
    tiny_models: Path, tiny_bundle: TrainedBundle, bounded_redis: LocalRedis, tmp_path: Path
) -> None:
    one = worker(bounded_redis.url, tiny_models, tmp_path, "w1").start()
    api = celery_server(tiny_models, tmp_path / "api", bounded_redis.url).start()
    store = redis.Redis.from_url(bounded_redis.url)
    texts = SAMPLE_TEXTS[:4]
    try:
        with FHEServerAPI(api.url) as client:
            remote = EncryptedModel(client, "tiny", tmp_path / "client")
            remote.predict(texts[:1])  # keys uploaded and checked, the worker warm
            ciphertext = remote.encrypt(texts[0]).ciphertext
            # Redis full: 4 MiB of another writer (in small values: a large one leaves a large
            # query buffer that is freed later), then maxmemory set to what it holds.
            fillers = [f"filler:{i}" for i in range(64)]
            store.mset({name: b"\0" * (64 << 10) for name in fillers})
            time.sleep(1)
            store.config_set("maxmemory", store.info("memory")["used_memory"])
            time.sleep(1)
            memory = store.info("memory")
            assert memory["used_memory"] >= 0.9 * memory["maxmemory"], memory
            refused = raw_predict(api.url, remote, ciphertext)
            assert refused.status_code == 503, refused.text
            assert refused.json()["code"] == "busy" and "Redis" in refused.json()["error"]
            assert refused.headers["Retry-After"]
            entries = submit_items(remote, texts, JobJournal(tmp_path / "client"))
            deadline = time.monotonic() + 6
            while time.monotonic() < deadline:  # accepted, and neither failed nor lost
                states = {client.job(e.job_id).status for e in entries}
                assert states <= {"queued", "running"}, states
                time.sleep(0.5)
            assert store.info("stats")["evicted_keys"] == 0
            store.delete(*fillers)
            labels = job_labels(remote, entries)
            assert raw_predict(api.url, remote, ciphertext).status_code == 200
    finally:
        api.stop()
        one.stop()
    assert labels == clear_labels(tiny_bundle, texts)


def test_a_flush_and_an_empty_restart_of_redis_during_runs_lose_no_job(
    tiny_models: Path, tiny_bundle: TrainedBundle, bounded_redis: LocalRedis, tmp_path: Path
) -> None:
    workers = [worker(bounded_redis.url, tiny_models, tmp_path, f"w{i}").start() for i in (1, 2)]
    api = celery_server(
        tiny_models, tmp_path / "api", bounded_redis.url, FHE_SERVER_CELERY_BROKER_GRACE_SECONDS="5"
    ).start()
    texts = [SAMPLE_TEXTS[i % len(SAMPLE_TEXTS)] for i in range(24)]
    labels: list[list[str]] = []
    try:
        with FHEServerAPI(api.url) as client:
            remote = EncryptedModel(client, "tiny", tmp_path / "client")
            for lose in ("flush", "restart"):
                entries = submit_items(remote, texts, JobJournal(tmp_path / f"client-{lose}"))
                wait_until(
                    lambda batch=entries: any(client.job(e.job_id).status == "done" for e in batch),
                    120,
                    "no job finished",
                )
                pending = [e for e in entries if client.job(e.job_id).status != "done"]
                assert pending, "every job finished before Redis lost them"
                if lose == "flush":
                    redis.Redis.from_url(bounded_redis.url).flushall()
                else:
                    bounded_redis.stop()
                    time.sleep(2)
                    bounded_redis.start()
                labels.append(job_labels(remote, entries))
    finally:
        api.stop()
        for each in workers:
            each.stop()
    assert labels == [clear_labels(tiny_bundle, texts)] * 2


PASSWORD = "b3c1f0a2d4e5"


@pytest.fixture
def locked_redis(tmp_path: Path) -> Iterator[LocalRedis]:
    """Redis with a password, as every deployment layout runs it."""
    server = LocalRedis(tmp_path / "redis", args=[*NOEVICTION, "--requirepass", PASSWORD]).start()
    yield server
    server.stop()


@pytest.mark.fast
def test_the_redis_password_is_masked_where_the_url_is_shown() -> None:
    from server.settings import ServerSettings

    shown = ServerSettings(redis_url=f"redis://:{PASSWORD}@redis:6379/0").redis_shown()
    assert shown == "redis://:***@redis:6379/0"
    assert ServerSettings(redis_url="redis://redis:6379/0").redis_shown() == "redis://redis:6379/0"


def test_the_backlog_counts_queued_jobs_and_runs_no_worker_started_on_celery(
    tiny_models: Path, tiny_bundle: TrainedBundle, locked_redis: LocalRedis, tmp_path: Path
) -> None:
    """Also: API and worker reach a Redis that has a password, and neither logs it."""
    url = locked_redis.url.replace("redis://", f"redis://:{PASSWORD}@")
    one = worker(url, tiny_models, tmp_path, "w1").start()
    api = celery_server(tiny_models, tmp_path / "api", url, FHE_SERVER_JOB_CONCURRENCY="4").start()
    texts = [SAMPLE_TEXTS[i % len(SAMPLE_TEXTS)] for i in range(10)]
    try:
        with FHEServerAPI(api.url) as client:
            remote = EncryptedModel(client, "tiny", tmp_path / "client")
            remote.keys()  # checked by the worker, which then stops: nothing takes the runs
            one.stop()
            assert backlog(api.url) == {"jobs_queued": 0, "broker": 0, "turns": 0}
            entries = submit_items(remote, texts, JobJournal(tmp_path / "client"))
            # Four claimed and sent (the job concurrency), none started; six still queued.
            wanted = {"jobs_queued": 6, "broker": 4, "turns": 0}
            wait_until(lambda: backlog(api.url) == wanted, 30, f"backlog {backlog(api.url)}")
            one.start()
            labels = job_labels(remote, entries)
            assert backlog(api.url) == {"jobs_queued": 0, "broker": 0, "turns": 0}
    finally:
        api.stop()
        one.stop()
    assert labels == clear_labels(tiny_bundle, texts)
    for log in (api.log, one.log):
        assert PASSWORD not in log.read_text(errors="replace"), log


def test_the_backlog_counts_queued_jobs_and_runs_waiting_for_a_turn_in_the_pool(
    tiny_models: Path, tiny_bundle: TrainedBundle, tmp_path: Path
) -> None:
    env = {"FHE_SERVER_WORKERS": "1", "FHE_SERVER_JOB_CONCURRENCY": "4"}
    api = ServerProcess(tiny_models, tmp_path / "api", env=env).start()
    texts = [SAMPLE_TEXTS[i % len(SAMPLE_TEXTS)] for i in range(10)]
    try:
        with FHEServerAPI(api.url) as client, ExitStack() as stack:
            remote = EncryptedModel(client, "tiny", tmp_path / "client")
            remote.predict(texts[:1])
            ciphertext = remote.encrypt(texts[0]).ciphertext
            assert backlog(api.url) == {"jobs_queued": 0, "broker": 0, "turns": 0}
            # The pool's worker stops answering (SIGSTOP on the API's children): one run
            # holds it, the rest wait.
            thaw = stack.enter_context(frozen_children(api.process.pid))
            entries = submit_items(remote, texts, JobJournal(tmp_path / "client"))
            waiting = threading.Thread(target=raw_predict, args=(api.url, remote, ciphertext))
            waiting.start()
            # 10 jobs: 1 in the worker, 3 claimed waiting for their turn, 6 queued; and one
            # synchronous request waiting too.
            wanted = {"jobs_queued": 6, "broker": 0, "turns": 4}
            wait_until(lambda: backlog(api.url) == wanted, 30, f"backlog {backlog(api.url)}")
            thaw()
            labels = job_labels(remote, entries)
            waiting.join(60)
            assert backlog(api.url) == {"jobs_queued": 0, "broker": 0, "turns": 0}
    finally:
        api.stop()
    assert labels == clear_labels(tiny_bundle, texts)


@pytest.fixture
def postgres() -> Iterator[LocalPostgres]:
    server = LocalPostgres().start()
    yield server
    server.remove()


def test_redis_keeps_no_results_after_300_linear_and_20_sentiment_jobs(
    bounded_redis: LocalRedis, postgres: LocalPostgres, tmp_path: Path
) -> None:
    """The issue's numbers on the shipped models, laid out as deployed (jobs and keys in
    Postgres, Redis the broker only): Redis ends holding Celery's bindings only, within 16 MiB
    of what it held before the jobs."""
    models = tmp_path / "models"
    for name in ("sentiment-linear", "sentiment"):
        shutil.copytree(REPO / "models" / name, models / name)
    database = postgres.url
    workers = [
        worker(bounded_redis.url, models, tmp_path, f"w{i}", database).start() for i in (1, 2)
    ]
    api = celery_server(
        models,
        tmp_path / "api",
        bounded_redis.url,
        FHE_SERVER_TOKEN_MAX_JOBS_IN_FLIGHT="400",
        FHE_SERVER_DATABASE_URL=database,
        FHE_SERVER_CALLBACK_SIGNING_KEY="signing-key-of-the-broker-test",
    ).start()
    store = redis.Redis.from_url(bounded_redis.url)
    store.config_set("maxmemory", str(256 << 20))
    texts = SAMPLE_TEXTS[:4]
    peak = {"used": 0}
    sampling = threading.Event()

    def sample() -> None:
        while not sampling.wait(0.2):
            peak["used"] = max(peak["used"], store.info("memory")["used_memory"])

    try:
        with FHEServerAPI(api.url) as client:
            expected: dict[str, tuple[EncryptedModel, str]] = {}
            plan = {"sentiment-linear": 300, "sentiment": 20}
            remotes = {n: EncryptedModel(client, n, tmp_path / "client") for n in plan}
            for remote in remotes.values():
                remote.predict(texts[:1])  # keys uploaded, checked and in Redis
            before = store.info("memory")["used_memory"]
            sampler = threading.Thread(target=sample)
            sampler.start()
            for name, count in plan.items():
                remote = remotes[name]
                labels = [p.label for p in remote.predict(texts)]
                ciphertexts = [remote.encrypt(text).ciphertext for text in texts]
                key_id = remote.keys().key_id
                for i in range(count):
                    job = client.submit_job(
                        name, ciphertexts[i % len(texts)], key_id, remote.client_spec
                    )
                    expected[job.job_id] = (remote, labels[i % len(texts)])
            pending = set(expected)
            deadline = time.monotonic() + 600
            while pending:
                assert time.monotonic() < deadline, f"{len(pending)} jobs never ended"
                for job_id in list(pending):
                    status = client.job(job_id).status
                    assert status != "failed", client.job(job_id)
                    if status == "done":
                        pending.discard(job_id)
                time.sleep(0.5)
            sampling.set()
            sampler.join()
            for job_id, (remote, label) in expected.items():
                answer = client.job_result(job_id)
                assert remote.decrypt(answer.ciphertext).label == label
    finally:
        sampling.set()
        api.stop()
        for each in workers:
            each.stop()
    after = store.info("memory")["used_memory"]
    print(
        f"Redis used memory: {before >> 20} MiB before, peak {peak['used'] >> 20} MiB, after "
        f"{after >> 20} MiB ({len(expected)} jobs)"
    )
    assert not store.keys("celery-task-meta-*") and not store.keys("fhe:sent:*")
    assert store.llen("celery") == 0
    assert after <= before + (16 << 20), (before, after)
    assert peak["used"] <= before + (64 << 20), (before, peak)
