"""Many replicas on one Postgres, against real processes: Debian's PostgreSQL started here in a
temporary directory (as the `postgres` user under root), two `fhe-server serve` replicas behind
Debian's nginx running the shipped proxy file, real Redis and a real Celery worker.

Any replica answers any request; per-token quotas hold across replicas; the jobs of a replica
killed with SIGKILL finish on the other, none running more than twice, each callback arriving with
an id to deduplicate on; a 10-second database outage answers 503 with Retry-After and loses no
accepted job; a key deleted through one replica is refused by the other and by a Celery worker.
"""

from __future__ import annotations

import base64
import concurrent.futures
import hashlib
import json
import os
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine, text

from client.api import FHEServerAPI
from client.encrypted_model import EncryptedModel
from client.settings import ClientSettings
from fhe.build.recipe import TrainedBundle
from server.compute.celery_app import TASK_RUN, make_celery
from server.storage.database import engine_for, migrate
from tests.conftest import REPO, SAMPLE_TEXTS, clear_labels
from tests.support.local_postgres import LocalPostgres
from tests.support.local_redis import LocalRedis
from tests.support.local_worker import LocalWorker
from tests.support.nginx import running_nginx
from tests.support.server_process import ServerProcess
from tests.test_callbacks import Receiver
from tests.test_operations import metric

TOKENS = {"alice": "alice-token", "bob": "bob-token"}
LEASE_SECONDS = 4


def bearer(owner: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKENS[owner]}"}


@pytest.fixture(scope="module")
def postgres() -> Iterator[LocalPostgres]:
    server = LocalPostgres().start()
    yield server
    server.remove()


@pytest.fixture
def database(postgres: LocalPostgres) -> str:
    """A fresh database of its own for each test, on the module's server."""
    name = f"t{uuid.uuid4().hex[:12]}"
    admin = create_engine(postgres.url.replace("postgresql://", "postgresql+psycopg://"))
    with admin.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return postgres.url.rsplit("/", 1)[0] + f"/{name}"


@pytest.fixture(scope="module")
def shared_models(tiny_models: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny bundle and the shipped `sentiment` bundle (linked, not copied)."""
    root = tmp_path_factory.mktemp("shared-models")
    (root / "tiny").symlink_to(tiny_models / "tiny")
    (root / "sentiment").symlink_to(REPO / "models" / "sentiment")
    return root


def replica_env(database: str, **extra: str) -> dict[str, str]:
    return {
        "FHE_SERVER_DATABASE_URL": database,
        "FHE_SERVER_TOKENS": json.dumps(TOKENS),
        "FHE_SERVER_CALLBACK_SIGNING_KEY": "shared-signing-key-of-the-test-replicas",
        "FHE_SERVER_JOB_LEASE_SECONDS": str(LEASE_SECONDS),
        "FHE_SERVER_CALLBACK_ALLOW": '["127.0.0.1"]',
        **extra,
    }


def start_together(replicas: list[ServerProcess]) -> None:
    """Start replicas one after the other from this thread (a replica stops when the thread that
    started it ends); `test_replicas_migrating_together_migrate_once` races the migrations."""
    for replica in replicas:
        replica.start()


def api_for(url: str, owner: str) -> FHEServerAPI:
    return FHEServerAPI(settings=ClientSettings(server_url=url, api_token=TOKENS[owner]))


def key_uploads(url: str) -> float:
    """Key uploads a replica answered (from its own metrics)."""
    page = httpx.get(f"{url}/metrics", timeout=10).text
    return sum(metric(page, "fhe_requests_total", route="/v1/keys", code=c) for c in ("200", "201"))


def serialized_keys(bundle: Path, key_dir: Path) -> bytes:
    """Fresh evaluation keys for a bundle, made with Concrete-ML's own client."""
    from concrete.ml.deployment import FHEModelClient

    client = FHEModelClient(str(bundle), key_dir=str(key_dir))
    client.generate_private_and_evaluation_keys(force=True)
    return client.get_serialized_evaluation_keys()


def test_any_replica_answers_and_quotas_hold_across_replicas(
    database: str,
    shared_models: Path,
    tiny_bundle: TrainedBundle,
    tmp_path: Path,
) -> None:
    # Two key sets of the tiny model, and a quota that holds one of them, not two.
    spec = hashlib.sha256((shared_models / "tiny" / "client.zip").read_bytes()).hexdigest()
    first = serialized_keys(shared_models / "tiny", tmp_path / "k1")
    second = serialized_keys(shared_models / "tiny", tmp_path / "k2")
    quota = str(len(first) + len(second) // 2)
    env = replica_env(database, FHE_SERVER_TOKEN_MAX_KEY_BYTES=quota)
    a, b = (ServerProcess(shared_models, tmp_path / name, env=env) for name in ("a", "b"))
    start_together([a, b])
    try:
        upstreams = f"127.0.0.1:{a.port}; server 127.0.0.1:{b.port}"
        with running_nginx(tmp_path / "nginx", upstreams, "127.0.0.1:9") as proxy:
            # A key uploaded through A predicts through B, which never saw an upload.
            with api_for(a.url, "alice") as on_a, api_for(b.url, "alice") as on_b:
                remote_a = EncryptedModel(on_a, "tiny", tmp_path / "alice")
                info = remote_a.keys()
                assert info.uploaded
                remote_b = EncryptedModel(on_b, "tiny", tmp_path / "alice")
                labels = [p.label for p in remote_b.predict(SAMPLE_TEXTS[:3])]
                assert labels == clear_labels(tiny_bundle, SAMPLE_TEXTS[:3])
                assert key_uploads(b.url) == 0
                assert on_b.key_status(info.key_id).models == ["tiny"]
                # A job submitted on A is read, and its result fetched, on B.
                job = remote_a.submit(remote_a.encrypt(SAMPLE_TEXTS[3]).ciphertext)
                deadline = time.monotonic() + 120
                while on_b.job(job.job_id).status not in ("done", "failed"):
                    assert time.monotonic() < deadline, "the job did not finish"
                    time.sleep(0.2)
                result = httpx.get(
                    f"{b.url}/v1/jobs/{job.job_id}/result", headers=bearer("alice"), timeout=30
                )
                assert result.status_code == 200, result.text
                decrypted = remote_b.decrypt(result.content)
                assert decrypted.label == clear_labels(tiny_bundle, SAMPLE_TEXTS[3:4])[0]
            # Through the proxy too, either replica answering.
            statuses = {
                httpx.get(f"{proxy}/v1/jobs/{job.job_id}", headers=bearer("alice")).status_code
                for _ in range(4)
            }
            assert statuses == {200}

            # bob's two key sets, uploaded at the same moment to A and to B: the quota holds one.
            def upload(args: tuple[str, bytes]) -> httpx.Response:
                url, keys = args
                headers = {**bearer("bob"), "X-Client-Spec": spec}
                return httpx.post(f"{url}/v1/keys", content=keys, headers=headers, timeout=120)

            with concurrent.futures.ThreadPoolExecutor(2) as pool:
                answers = list(pool.map(upload, [(a.url, first), (b.url, second)]))
            codes = sorted(answer.status_code for answer in answers)
            assert codes == [201, 403], [answer.text for answer in answers]
            refused = next(answer for answer in answers if answer.status_code == 403)
            assert refused.json()["code"] == "key_quota_exceeded"
            page = httpx.get(f"{a.url}/metrics", timeout=10).text
            assert metric(page, "fhe_keys") == 2  # alice's and one of bob's

            # A key deleted through A is refused by B at once.
            deleted = httpx.delete(f"{a.url}/v1/keys/{info.key_id}", headers=bearer("alice"))
            assert deleted.status_code == 204, deleted.text
            assert on_b_status(b.url, info.key_id) == 404
            ciphertext = remote_a.encrypt(SAMPLE_TEXTS[0]).ciphertext
            gone = httpx.post(
                f"{b.url}/v1/models/tiny/predict",
                content=ciphertext,
                headers={**bearer("alice"), "X-Key-Id": info.key_id, "X-Client-Spec": spec},
                timeout=60,
            )
            assert gone.status_code == 404 and gone.json()["code"] == "unknown_key"

            # The shipped model through the proxy; B's metrics count the run.
            with api_for(proxy, "alice") as through:
                sentiment = EncryptedModel(through, "sentiment", tmp_path / "alice")
                assert sentiment.predict(["the crew was lovely"])[0].label in sentiment.labels
            pages = [httpx.get(f"{r.url}/metrics", timeout=10).text for r in (a, b)]
            runs = sum(metric(p, "fhe_run_seconds_count", model="sentiment") for p in pages)
            assert runs >= 1
            assert all(metric(p, "fhe_jobs", state="done") == 1 for p in pages)
    finally:
        a.stop()
        b.stop()
    engine = engine_for(database)
    with engine.connect() as connection:
        versions = connection.execute(text("SELECT version_num FROM alembic_version")).all()
    engine.dispose()
    assert versions == [("0003",)], "the two replicas did not migrate exactly once"


def on_b_status(url: str, key_id: str) -> int:
    return httpx.get(f"{url}/v1/keys/{key_id}", headers=bearer("alice"), timeout=10).status_code


def test_jobs_of_a_killed_replica_finish_on_the_other(
    database: str, shared_models: Path, tiny_bundle: TrainedBundle, tmp_path: Path
) -> None:
    receiver = Receiver()
    env = replica_env(database, FHE_SERVER_WORKERS="1")
    a = ServerProcess(shared_models, tmp_path / "a", env=env).start()
    b = ServerProcess(shared_models, tmp_path / "b", env=env)
    texts = [SAMPLE_TEXTS[i % len(SAMPLE_TEXTS)] for i in range(20)]
    engine = engine_for(database)
    try:
        with api_for(a.url, "alice") as on_a:
            remote = EncryptedModel(on_a, "tiny", tmp_path / "alice")
            remote.keys()
            ciphertexts = [remote.encrypt(t).ciphertext for t in texts]
            job_ids = [
                remote.submit(c, callback_url=f"{receiver.base}/hook").job_id for c in ciphertexts
            ]
        holder = None
        deadline = time.monotonic() + 60
        with engine.connect() as connection:
            while holder is None:
                assert time.monotonic() < deadline, "replica A never ran a job"
                row = connection.execute(
                    text("SELECT lease_holder FROM jobs WHERE status = 'running'")
                ).first()
                connection.commit()
                holder = row[0] if row else None
        a.kill()
        with engine.connect() as connection:
            left_running = {
                row[0]
                for row in connection.execute(
                    text("SELECT job_id FROM jobs WHERE status = 'running'")
                )
            }
        assert left_running, "replica A was killed between two jobs"
        b.start()
        with api_for(b.url, "alice") as on_b:
            remote_b = EncryptedModel(on_b, "tiny", tmp_path / "alice")
            finals = {}
            deadline = time.monotonic() + 180
            while len(finals) < len(job_ids):
                assert time.monotonic() < deadline, f"{len(finals)} of 20 jobs ended"
                for job_id in job_ids:
                    if job_id not in finals:
                        status = on_b.job(job_id)
                        if status.status in ("done", "failed"):
                            finals[job_id] = status
                time.sleep(0.2)
            labels = []
            for job_id in job_ids:
                assert finals[job_id].status == "done", finals[job_id]
                answer = httpx.get(
                    f"{b.url}/v1/jobs/{job_id}/result", headers=bearer("alice"), timeout=30
                )
                labels.append(remote_b.decrypt(answer.content).label)
        assert labels == clear_labels(tiny_bundle, texts)
        attempts = {job_id: finals[job_id].attempts for job_id in job_ids}
        assert max(attempts.values()) <= 2, attempts
        assert all(attempts[job_id] == 2 for job_id in left_running), (left_running, attempts)
        # Every job's callback arrived, perhaps twice; its id tells the receiver which.
        deadline = time.monotonic() + 60
        while len({r.headers.get("Idempotency-Key") for r in receiver.at("/hook")}) < 20:
            assert time.monotonic() < deadline, "callbacks missing"
            time.sleep(0.2)
        delivered = {}
        for request in receiver.at("/hook"):
            body = json.loads(request.body)
            assert request.headers["Idempotency-Key"] == body["delivery_id"]
            delivered.setdefault(body["delivery_id"], body)
        assert sorted(delivered) == sorted(f"{job_id}.done" for job_id in job_ids)
    finally:
        engine.dispose()
        a.stop()
        b.stop()
        receiver.close()


def test_a_database_outage_answers_503_and_loses_no_accepted_job(
    database: str, postgres: LocalPostgres, shared_models: Path, tmp_path: Path
) -> None:
    env = replica_env(database)
    a, b = (ServerProcess(shared_models, tmp_path / name, env=env) for name in ("a", "b"))
    start_together([a, b])
    accepted: list[str] = []
    statuses: list[tuple[int, str | None]] = []
    stop = threading.Event()
    try:
        with api_for(a.url, "alice") as on_a:
            remote = EncryptedModel(on_a, "tiny", tmp_path / "alice")
            remote.keys()
            ciphertexts = [remote.encrypt(t).ciphertext for t in SAMPLE_TEXTS[:3]]
            headers = {
                **bearer("alice"),
                "X-Key-Id": remote.keys(upload=False).key_id,
                "X-Client-Spec": remote.client_spec,
            }

        def load(url: str) -> None:
            with httpx.Client(timeout=30) as http:
                index = 0
                while not stop.is_set():
                    index += 1
                    ciphertext = ciphertexts[index % len(ciphertexts)]
                    if index % 2:
                        answer = http.post(
                            f"{url}/v1/models/tiny/jobs", content=ciphertext, headers=headers
                        )
                        if answer.status_code == 202:
                            accepted.append(answer.json()["job_id"])
                    else:
                        answer = http.post(
                            f"{url}/v1/models/tiny/predict", content=ciphertext, headers=headers
                        )
                    statuses.append((answer.status_code, answer.headers.get("Retry-After")))
                    time.sleep(0.05)

        threads = [threading.Thread(target=load, args=(r.url,)) for r in (a, b)]
        for thread in threads:
            thread.start()
        time.sleep(3)
        postgres.stop()
        outage_started = len(statuses)
        time.sleep(2)
        ready = [httpx.get(f"{r.url}/readyz", timeout=10) for r in (a, b)]
        alive = [httpx.get(f"{r.url}/healthz", timeout=10) for r in (a, b)]
        time.sleep(8)
        postgres.start()
        during = statuses[outage_started:]
        time.sleep(3)
        stop.set()
        for thread in threads:
            thread.join()
        assert [r.status_code for r in ready] == [503, 503]
        assert all(r.json()["code"] == "not_ready" for r in ready)
        assert [r.status_code for r in alive] == [200, 200]
        codes = {code for code, _ in statuses}
        assert 500 not in codes and codes <= {200, 202, 503}, codes
        refused = [(code, retry) for code, retry in during if code == 503]
        assert len(refused) >= 10, "the outage refused too few requests to show anything"
        assert all(retry for _, retry in refused), "a 503 came without Retry-After"
        assert len(accepted) >= 4, "too few jobs were accepted to show anything"
        # After the database is back, every accepted job finishes.
        with api_for(b.url, "alice") as on_b:
            deadline = time.monotonic() + 180
            pending = set(accepted)
            while pending:
                assert time.monotonic() < deadline, f"{len(pending)} accepted jobs never ended"
                for job_id in list(pending):
                    status = on_b.job(job_id)
                    if status.status in ("done", "failed"):
                        assert status.status == "done", status
                        pending.discard(job_id)
                time.sleep(0.3)
        assert all(httpx.get(f"{r.url}/readyz").status_code == 200 for r in (a, b))
    finally:
        stop.set()
        a.stop()
        b.stop()


@pytest.mark.redis
def test_a_key_deleted_through_one_replica_is_refused_by_the_other_and_a_worker(
    database: str, shared_models: Path, tiny_bundle: TrainedBundle, tmp_path: Path
) -> None:
    redis = LocalRedis(tmp_path / "redis").start()
    env = replica_env(database, FHE_SERVER_BACKEND="celery", FHE_SERVER_REDIS_URL=redis.url)
    worker = LocalWorker(
        redis.url, shared_models, tmp_path / "w1", "w1", {"FHE_SERVER_DATABASE_URL": database}
    ).start()
    a, b = (ServerProcess(shared_models, tmp_path / name, env=env) for name in ("a", "b"))
    start_together([a, b])
    try:
        with api_for(a.url, "alice") as on_a:
            remote = EncryptedModel(on_a, "tiny", tmp_path / "alice")
            info = remote.keys()
        import redis as redis_client

        broker = redis_client.Redis.from_url(redis.url)
        assert not broker.keys("fhe:key:*"), "a stored key stayed in Redis: it is the broker only"
        with api_for(b.url, "alice") as on_b:
            remote_b = EncryptedModel(on_b, "tiny", tmp_path / "alice")
            assert [p.label for p in remote_b.predict(SAMPLE_TEXTS[:2])] == clear_labels(
                tiny_bundle, SAMPLE_TEXTS[:2]
            )
        assert (
            httpx.delete(f"{a.url}/v1/keys/{info.key_id}", headers=bearer("alice")).status_code
            == 204
        )
        ciphertext = remote.encrypt(SAMPLE_TEXTS[0]).ciphertext
        headers = {**bearer("alice"), "X-Key-Id": info.key_id, "X-Client-Spec": remote.client_spec}
        gone = httpx.post(
            f"{b.url}/v1/models/tiny/predict", content=ciphertext, headers=headers, timeout=60
        )
        assert gone.status_code == 404 and gone.json()["code"] == "unknown_key"
        # The worker itself, asked directly, refuses the key it had cached.
        celery = make_celery(redis.url, 10, 60)
        payload = [
            "tiny",
            info.key_id,
            base64.b64encode(ciphertext).decode(),
            remote.client_spec,
        ]
        answer = celery.send_task(TASK_RUN, args=payload).get(timeout=120)
        assert answer["error"]["code"] == "unknown_key", answer
    finally:
        a.stop()
        b.stop()
        worker.stop()
        redis.stop()


def test_owners_have_their_own_records_and_unchecked_uploads_evict_nothing(
    database: str, tiny_models: Path, tmp_path: Path
) -> None:
    """In the database too (issue 26): bob's junk, as large as alice's key where only half as
    much room is left, is refused without evicting her key; bob uploading her bytes gets 201 and
    his own times, his use of the key leaves her record as it was, and a token past its number
    of keys gets 429."""
    size = len(serialized_keys(tiny_models / "tiny", tmp_path / "sizing"))
    env = replica_env(
        database,
        FHE_SERVER_KEYSTORE_MAX_BYTES=str(size * 3 // 2),
        FHE_SERVER_TOKEN_MAX_KEYS="1",
    )
    replica = ServerProcess(tiny_models, tmp_path / "a", env=env).start()
    try:
        with api_for(replica.url, "alice") as on_alice, api_for(replica.url, "bob") as on_bob:
            alice = EncryptedModel(on_alice, "tiny", tmp_path / "alice")
            key_id = alice.keys().key_id
            keys = alice.cache.evaluation_keys.read_bytes()
            spec = {"X-Client-Spec": alice.client_spec}
            hers = on_alice.key_status(key_id)
            junk = httpx.post(
                f"{replica.url}/v1/keys",
                content=os.urandom(size),
                headers=bearer("bob"),
                timeout=60,
            )
            assert junk.status_code == 400 and junk.json()["code"] == "malformed_keys"
            assert on_alice.key_status(key_id) == hers, "bob's junk evicted alice's key"
            time.sleep(1.1)
            his_upload = httpx.post(
                f"{replica.url}/v1/keys",
                content=keys,
                headers={**bearer("bob"), **spec},
                timeout=60,
            )
            assert his_upload.status_code == 201, his_upload.text
            his = on_bob.key_status(key_id)
            assert his.created > hers.last_used >= hers.created
            ciphertext = alice.encrypt(SAMPLE_TEXTS[0]).ciphertext
            assert on_bob.predict("tiny", ciphertext, key_id, alice.client_spec).ciphertext
            assert on_alice.key_status(key_id) == hers, "bob's upload or use moved alice's record"
            again = httpx.post(
                f"{replica.url}/v1/keys",
                content=keys,
                headers={**bearer("bob"), **spec},
                timeout=60,
            )
            assert again.status_code == 200
            other = serialized_keys(tiny_models / "tiny", tmp_path / "other")
            flood = httpx.post(
                f"{replica.url}/v1/keys",
                content=other,
                headers={**bearer("bob"), **spec},
                timeout=60,
            )
            assert flood.status_code == 429 and flood.json()["code"] == "key_count_exceeded"
        engine = engine_for(database)
        with engine.connect() as connection:
            records = connection.execute(
                text("SELECT owner, created FROM key_owners WHERE key_id = :k ORDER BY owner"),
                {"k": key_id},
            ).all()
            stored = connection.execute(text("SELECT count(*) FROM keys")).scalar_one()
        engine.dispose()
        assert [(owner, created) for owner, created in records] == [
            ("alice", hers.created),
            ("bob", his.created),
        ]
        assert stored == 1
    finally:
        replica.stop()


def test_owners_from_before_their_records_get_the_keys_times(database: str) -> None:
    """Migration 0002 on a database at 0001: each existing owner's record is the key's
    creation, never another owner's last use."""
    from alembic import command
    from alembic.config import Config

    from server.storage.database import MIGRATIONS

    engine = engine_for(database)
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "0001")
        connection.execute(
            text("INSERT INTO keys (key_id, size, created, last_used) VALUES ('k', 1, 10.0, 99.0)")
        )
        connection.execute(
            text("INSERT INTO key_owners (key_id, owner) VALUES ('k', 'alice'), ('k', 'bob')")
        )
    migrate(engine)
    with engine.connect() as connection:
        rows = connection.execute(
            text("SELECT owner, created, last_used FROM key_owners ORDER BY owner")
        ).all()
    engine.dispose()
    assert [tuple(row) for row in rows] == [("alice", 10.0, 10.0), ("bob", 10.0, 10.0)]


def test_replicas_migrating_together_migrate_once(postgres: LocalPostgres) -> None:
    name = f"m{uuid.uuid4().hex[:12]}"
    admin = create_engine(postgres.url.replace("postgresql://", "postgresql+psycopg://"))
    with admin.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    engines = [engine_for(postgres.url.rsplit("/", 1)[0] + f"/{name}") for _ in range(4)]
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        list(pool.map(migrate, engines))
    with engines[0].connect() as connection:
        assert connection.execute(text("SELECT version_num FROM alembic_version")).all() == [
            ("0003",)
        ]
        tables = {
            row[0]
            for row in connection.execute(
                text("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
            )
        }
    for engine in engines:
        engine.dispose()
    assert {"jobs", "job_payloads", "keys", "key_owners", "key_chunks"} <= tables


def test_only_the_claim_holding_the_lease_ends_a_job(database: str) -> None:
    """The store itself: a lease that passed hands the job over; the claim that lost it can
    neither record a result nor requeue the job, even when its own replica took it back."""
    from server.storage.job import Job, new_job_id
    from server.storage.postgres_jobs import PostgresJobStore

    engine = engine_for(database)
    migrate(engine)
    first = PostgresJobStore(engine, "replica-1", max_attempts=3, lease_seconds=0.5)
    second = PostgresJobStore(engine, "replica-2", max_attempts=3, lease_seconds=60)
    job = Job(new_job_id(), "tiny", "fhe", "queued", time.time(), "http://x/", owner="alice")
    first.add(job, b"ciphertext")
    assert first.claim_next().attempts == 1
    assert second.claim_next() is None, "a held lease was claimed"
    time.sleep(1.0)
    taken = second.claim_next()
    assert taken is not None and taken.attempts == 2
    assert first.finish(job.job_id, b"stale", "application/octet-stream", 1.0, 60) is False
    first.release(job.job_id)
    assert second.get(job.job_id).status == "running", "a lost claim requeued the job"
    assert second.finish(job.job_id, b"result", "application/octet-stream", 1.0, 60) is True
    assert second.read_result(job.job_id) == b"result"
    assert second.get(job.job_id).attempts == 2
    # Past max_attempts, a job whose lease passes again fails instead of running once more.
    other = Job(new_job_id(), "tiny", "fhe", "queued", time.time(), "http://x/")
    first.add(other, b"ciphertext")
    for _ in range(3):
        assert first.claim_next().job_id == other.job_id
        time.sleep(0.6)
    assert first.claim_next() is None
    ended = first.get(other.job_id)
    assert ended.status == "failed" and ended.error_code == "interrupted"
    engine.dispose()


def test_a_hung_database_answers_503_in_bounded_time_and_liveness_stays_up(
    database: str, postgres: LocalPostgres, shared_models: Path, tmp_path: Path
) -> None:
    """Postgres frozen (SIGSTOP: connections open, no answer, unlike a stopped server): requests
    that need it answer 503 within the store call's bound, /healthz at once, /readyz 503."""
    import signal

    import psutil

    from server.storage.calls import SHARED_CALL_SECONDS

    def signal_all(signum: int) -> None:
        """The postmaster and every backend (each in a session of its own)."""
        postmaster = psutil.Process(postgres.process.pid)
        for process in [postmaster, *postmaster.children(recursive=True)]:
            process.send_signal(signum)

    replica = ServerProcess(shared_models, tmp_path / "a", env=replica_env(database)).start()
    status_url = f"{replica.url}/v1/jobs/{'0' * 32}"
    try:
        assert httpx.get(status_url, headers=bearer("alice"), timeout=30).status_code == 404
        signal_all(signal.SIGSTOP)
        try:
            started = time.monotonic()
            with concurrent.futures.ThreadPoolExecutor(1) as pool:
                waiting = pool.submit(httpx.get, status_url, headers=bearer("alice"), timeout=60)
                time.sleep(1)
                alive = httpx.get(f"{replica.url}/healthz", timeout=5)
                ready = httpx.get(f"{replica.url}/readyz", timeout=30)
                answer = waiting.result()
            took = time.monotonic() - started
        finally:
            signal_all(signal.SIGCONT)
        assert alive.status_code == 200, "liveness waited for the database"
        assert ready.status_code == 503 and ready.json()["code"] == "not_ready"
        assert answer.status_code == 503 and answer.json()["code"] == "state_unavailable"
        assert answer.headers["Retry-After"]
        assert took < SHARED_CALL_SECONDS + 5, took
        deadline = time.monotonic() + 30
        while httpx.get(status_url, headers=bearer("alice"), timeout=30).status_code != 404:
            assert time.monotonic() < deadline, "the replica did not recover"
            time.sleep(0.5)
    finally:
        replica.stop()


def racing_adds(store: object, limits: object, owners: list[str | None]) -> int:
    """One `add` per owner, all from threads at once; how many were accepted."""
    from concurrent.futures import ThreadPoolExecutor

    from server.storage.job import Job, JobRefused, new_job_id

    barrier = threading.Barrier(len(owners))

    def add(owner: str | None) -> bool:
        job = Job(new_job_id(), "tiny", "fhe", "queued", time.time(), "http://x/", owner=owner)
        barrier.wait(timeout=30)
        try:
            store.add(job, b"ciphertext", limits)
        except JobRefused:
            return False
        return True

    with ThreadPoolExecutor(len(owners)) as pool:
        return sum(pool.map(add, owners))


def test_job_limits_hold_against_racing_adds_and_claims_take_turns(database: str) -> None:
    """In Postgres, as in SQLite: limits checked in the row's transaction (60 racing adds, 20
    accepted; 40 of one token against its 25), and claims go to the token served least
    recently."""
    from server.storage.job import Job, JobLimits, new_job_id
    from server.storage.jobs import SqliteJobStore
    from server.storage.postgres_jobs import PostgresJobStore

    engine = engine_for(database)
    migrate(engine)
    try:
        with tempfile.TemporaryDirectory() as root:
            stores = [PostgresJobStore(engine, "replica-1"), SqliteJobStore(Path(root))]
            for store in stores:
                whole = JobLimits(
                    owner_max_in_flight=1000, max_queued=20, owner_max_stored_bytes=1 << 30
                )
                assert racing_adds(store, whole, [f"t{i % 3}" for i in range(60)]) == 20
                assert store.count("queued") == 20
                while store.claim_next() is not None:
                    pass
                per_token = JobLimits(
                    owner_max_in_flight=25, max_queued=1000, owner_max_stored_bytes=1 << 30
                )
                assert racing_adds(store, per_token, ["carol"] * 40) == 25
                assert store.count("queued", "running", owner="carol") == 25
            for store in stores:
                for owner in ("alice", "alice", "alice", "bob"):
                    job = Job(
                        new_job_id(), "tiny", "fhe", "queued", time.time(), "http://x/", owner=owner
                    )
                    store.add(job, b"ciphertext")
                    time.sleep(0.01)
                claimed = [store.claim_next().owner for _ in range(5)]
                # Fewest running first, then served least recently, then oldest: bob's one job
                # goes before alice's second, though she queued three before it.
                assert claimed == ["carol", "alice", "bob", "carol", "alice"]
                store.close()
    finally:
        engine.dispose()
