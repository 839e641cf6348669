"""Scale-out on Celery with a real redis-server and two real `fhe-server worker` processes.

50 encrypted jobs; one worker killed with SIGKILL while it works, and the API restarted while
jobs wait: every job still ends with the right decrypted label. A task that kills workers is
dead-lettered; keys in Redis and worker caches follow the API's store; a worker holding another
bundle under the same name says so.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import shutil
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from client.api import FHEServerAPI, ServerError
from client.encrypted_model import EncryptedModel
from client.jobs import JobJournal
from fhe.build.recipe import TrainedBundle
from server.compute.celery_app import DEAD_LETTER, KEY_PREFIX, TASK_RUN, make_celery
from tests.conftest import REPO, SAMPLE_TEXTS, clear_labels, job_labels
from tests.support.jobs import submit_items
from tests.support.local_redis import LocalRedis
from tests.support.local_worker import LocalWorker
from tests.support.server_process import ServerProcess


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[LocalRedis]:
    server = LocalRedis(tmp_path / "redis").start()
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
    tiny_models: Path, redis_server: LocalRedis, tmp_path: Path
) -> Iterator[list[LocalWorker]]:
    env = {"FHE_SERVER_CELERY_VISIBILITY_TIMEOUT": "10"}
    workers = [
        LocalWorker(redis_server.url, tiny_models, tmp_path / f"w{i}", f"w{i}", env).start()
        for i in (1, 2)
    ]
    yield workers
    for worker in workers:
        worker.stop()


def test_fifty_jobs_finish_after_a_worker_is_killed_mid_run(
    tiny_models: Path,
    tiny_bundle: TrainedBundle,
    redis_server: LocalRedis,
    two_workers: list[LocalWorker],
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
            entries = submit_items(remote, texts, JobJournal(tmp_path / "client"))
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
    # Results live in the job store: Redis keeps none of the 52 runs' answers.
    import redis

    assert not redis.Redis.from_url(redis_server.url).keys("celery-task-meta-*")


def test_restarting_the_api_mid_queue_loses_nothing(
    tiny_models: Path,
    tiny_bundle: TrainedBundle,
    redis_server: LocalRedis,
    two_workers: list[LocalWorker],
    tmp_path: Path,
) -> None:
    api = celery_api(tiny_models, tmp_path / "api", redis_server.url).start()
    texts = [SAMPLE_TEXTS[i % len(SAMPLE_TEXTS)] for i in range(30)]
    try:
        with FHEServerAPI(api.url) as client:
            remote = EncryptedModel(client, "tiny", tmp_path / "client")
            entries = submit_items(remote, texts, JobJournal(tmp_path / "client"))
            pending = [e for e in entries if client.job(e.job_id).status != "done"]
        assert pending, "every job finished before the restart"
        api.kill()
        api.start()
        with FHEServerAPI(api.url) as client:
            remote = EncryptedModel(client, "tiny", tmp_path / "client")
            labels = job_labels(remote, entries)
    finally:
        api.stop()
    assert labels == clear_labels(tiny_bundle, texts)


def _evaluation_keys(bundle: Path, key_dir: Path) -> bytes:
    """Fresh evaluation keys for a bundle, made with Concrete-ML's own client."""
    from concrete.ml.deployment import FHEModelClient

    client = FHEModelClient(str(bundle), key_dir=str(key_dir))
    client.generate_private_and_evaluation_keys(force=False)
    return client.get_serialized_evaluation_keys()


def test_a_task_that_kills_workers_is_dead_lettered_and_both_workers_serve_on(
    tiny_models: Path,
    tiny_bundle: TrainedBundle,
    redis_server: LocalRedis,
    two_workers: list[LocalWorker],
    tmp_path: Path,
) -> None:
    """A run that really aborts Concrete, sent straight to the queue as if it had passed the
    API's checks: delivered twice, it is then set aside with a clear error; the workers live."""
    import redis

    api = celery_api(tiny_models, tmp_path / "api", redis_server.url).start()
    store = redis.Redis.from_url(redis_server.url)
    try:
        with FHEServerAPI(api.url) as client:
            remote = EncryptedModel(client, "tiny", tmp_path / "client")
            remote.predict(SAMPLE_TEXTS[:1])
            ciphertext = remote.encrypt(SAMPLE_TEXTS[0]).ciphertext
            # The shipped bootstrap-free linear model's keys: they abort a tree circuit.
            poison = _evaluation_keys(REPO / "models" / "sentiment-linear", tmp_path / "poison")
            poison_id = hashlib.sha256(poison).hexdigest()
            store.set(KEY_PREFIX + poison_id, poison)
            celery = make_celery(redis_server.url, 10, 600)
            args = ["tiny", poison_id, base64.b64encode(ciphertext).decode(), remote.client_spec]
            answer = celery.send_task(TASK_RUN, args=args).get(timeout=300)
            assert answer["error"]["code"] == "dead_lettered", answer
            assert answer["error"]["status"] == 422
            dead = [json.loads(entry) for entry in store.lrange(DEAD_LETTER, 0, -1)]
            assert [entry["key_id"] for entry in dead] == [poison_id]
            lost = sum(
                len(re.findall(r"ForkPoolWorker-\d+' pid:\d+ exited", w.log.read_text()))
                for w in two_workers
            )
            assert lost == 2, "the poison task should have killed exactly two worker children"
            assert all(w.process is not None and w.process.poll() is None for w in two_workers)
            before = [len(w.task_ids("succeeded")) for w in two_workers]
            texts = [SAMPLE_TEXTS[i % len(SAMPLE_TEXTS)] for i in range(8)]
            entries = submit_items(remote, texts, JobJournal(tmp_path / "client"))
            labels = job_labels(remote, entries)
            after = [len(w.task_ids("succeeded")) for w in two_workers]
    finally:
        api.stop()
    assert labels == clear_labels(tiny_bundle, texts)
    assert all(a > b for a, b in zip(after, before, strict=True)), (before, after)


def test_keys_follow_the_api_store_in_redis_and_worker_caches(
    tiny_models: Path,
    tiny_bundle: TrainedBundle,
    redis_server: LocalRedis,
    tmp_path: Path,
) -> None:
    """Deleted from Redis and the worker: the next run publishes it again. Evicted by the API:
    gone from Redis and the worker's cache, which stay within the bound, and the client's own
    re-upload brings it back. Redis copies carry a TTL."""
    import redis

    store = redis.Redis.from_url(redis_server.url)
    key_bytes = len(_evaluation_keys(tiny_models / "tiny", tmp_path / "sizing"))
    bound = key_bytes * 3 // 2
    env = {
        "FHE_SERVER_CELERY_VISIBILITY_TIMEOUT": "10",
        "FHE_SERVER_KEYSTORE_MAX_BYTES": str(bound),
    }
    worker = LocalWorker(redis_server.url, tiny_models, tmp_path / "w", "w", env).start()
    api = celery_api(tiny_models, tmp_path / "api", redis_server.url)
    api.env["FHE_SERVER_KEYSTORE_MAX_BYTES"] = str(bound)
    api.start()
    worker_keys = tmp_path / "w" / "worker-keys"
    try:
        with FHEServerAPI(api.url) as client:
            alice = EncryptedModel(client, "tiny", tmp_path / "alice")
            bob = EncryptedModel(client, "tiny", tmp_path / "bob")
            expected = clear_labels(tiny_bundle, SAMPLE_TEXTS[:2])
            assert [p.label for p in alice.predict(SAMPLE_TEXTS[:1])] == expected[:1]
            alice_id = alice.keys(upload=False).key_id
            assert 0 < store.ttl(KEY_PREFIX + alice_id) <= 7 * 86400
            store.delete(KEY_PREFIX + alice_id)
            for cached in worker_keys.glob("*.keys"):
                cached.unlink()
            assert [p.label for p in alice.predict(SAMPLE_TEXTS[1:2])] == expected[1:2]

            assert [p.label for p in bob.predict(SAMPLE_TEXTS[:1])] == expected[:1]
            bob_id = bob.keys(upload=False).key_id
            assert not store.exists(KEY_PREFIX + alice_id), "evicted key left in Redis"
            assert store.exists(KEY_PREFIX + bob_id)
            cached = sum(p.stat().st_size for p in worker_keys.glob("*.keys"))
            assert cached <= bound
            assert [p.label for p in alice.predict(SAMPLE_TEXTS[:2])] == expected
            assert sum(p.stat().st_size for p in worker_keys.glob("*.keys")) <= bound
    finally:
        api.stop()
        worker.stop()


def test_a_worker_with_another_bundle_under_the_same_name_says_so(
    tiny_models: Path,
    redis_server: LocalRedis,
    tmp_path: Path,
) -> None:
    """The API and the worker disagree on what `tiny` is: a clear 503, not 'malformed'."""
    other = tmp_path / "other-models"
    shutil.copytree(tiny_models, other)
    with zipfile.ZipFile(other / "tiny" / "client.zip", "a") as archive:
        archive.comment = b"another build"
    env = {"FHE_SERVER_CELERY_VISIBILITY_TIMEOUT": "10"}
    worker = LocalWorker(redis_server.url, other, tmp_path / "w", "w", env).start()
    api = celery_api(tiny_models, tmp_path / "api", redis_server.url).start()
    try:
        with FHEServerAPI(api.url) as client:
            remote = EncryptedModel(client, "tiny", tmp_path / "client")
            with pytest.raises(ServerError) as refused:
                remote.predict(SAMPLE_TEXTS[:1])
    finally:
        api.stop()
        worker.stop()
    assert refused.value.status == 503 and refused.value.code == "model_mismatch"
    assert "another bundle" in str(refused.value)
