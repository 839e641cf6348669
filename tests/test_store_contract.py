"""The stores' contract: every method of `JobStore` and `KeyStore` (server/storage/protocols.py)
run against both backends, the embedded one (SQLite and files) and the shared one (a real
PostgreSQL started here, as tests/test_shared_state.py does; skipped only when initdb is absent).

Keys: content addressing, owners and their quotas, the byte bound with least-recently-used
eviction, pinning by runs and by jobs in flight, deletion, the bound on uploads being received.
Jobs: queued, claimed, requeued, done or failed, deleted and expired; admission limits; fair turns;
callbacks; an interrupted run taken up again (a restart embedded, a passed lease shared). And the
one jobs schema: what Alembic migrates Postgres to, and what SQLite is created with, is
`server/storage/tables.py`.
"""

from __future__ import annotations

import asyncio
import glob
import hashlib
import inspect
import shutil
import sqlite3
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy import inspect as schema_of

from server.storage.job import Job, JobLimits, JobRefused, new_job_id
from server.storage.jobs import SqliteJobStore
from server.storage.key import (
    KeyPinned,
    KeyTooLarge,
    QuotaExceeded,
    ReceivingFull,
    StoreFull,
    TooManyKeys,
    Upload,
)
from server.storage.keys import FileKeyStore
from server.storage.postgres_jobs import PostgresJobStore
from server.storage.postgres_keys import PostgresKeyStore
from server.storage.protocols import JobStore, KeyReader, KeyStore
from server.storage.stores import key_reader
from server.storage.tables import jobs as jobs_table
from server.storage.tables import metadata

BACKENDS = [
    pytest.param("sqlite", marks=pytest.mark.fast),
    pytest.param("postgres", marks=pytest.mark.postgres),
]
WIDE = JobLimits(owner_max_in_flight=1000, max_queued=1000, owner_max_stored_bytes=1 << 30)


def has_initdb() -> bool:
    """Whether a PostgreSQL server can be started here."""
    return bool(glob.glob("/usr/lib/postgresql/*/bin/initdb") or shutil.which("initdb"))


@pytest.fixture(scope="module")
def postgres_engine() -> Iterator[Engine]:
    """A throw-away PostgreSQL with the schema migrated to the newest revision."""
    if not has_initdb():
        pytest.skip("initdb is not installed: apt-get install postgresql")
    from server.storage.database import engine_for, migrate
    from tests.support.local_postgres import LocalPostgres

    server = LocalPostgres().start()
    name = f"c{uuid.uuid4().hex[:12]}"
    admin = create_engine(server.url.replace("postgresql://", "postgresql+psycopg://"))
    with admin.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    engine = engine_for(server.url.rsplit("/", 1)[0] + f"/{name}", pool_size=4)
    migrate(engine)
    yield engine
    engine.dispose()
    server.remove()


@dataclass
class Backend:
    """One backend's stores, and how to open the same state again (a restart, another
    replica)."""

    name: str
    jobs: JobStore
    keys: KeyStore
    root: Path
    engine: Engine | None

    def job_store(self, **options: float) -> JobStore:
        """Another job store on the same state (max_attempts, and lease_seconds if shared)."""
        attempts = int(options.pop("max_attempts", 3))
        if self.engine is None:
            return SqliteJobStore(self.root / "jobs", attempts)
        replica = f"replica-{uuid.uuid4().hex[:6]}"
        return PostgresJobStore(self.engine, replica, attempts, **options)

    def key_store(self, max_bytes: int, max_receiving_bytes: int | None = None) -> KeyStore:
        """A key store on the same state, with these bounds."""
        if self.engine is None:
            return FileKeyStore(
                self.root / "keys",
                max_bytes,
                pinned_by_jobs=self.jobs.key_ids_in_flight,
                max_receiving_bytes=max_receiving_bytes,
            )
        return PostgresKeyStore(
            self.engine, self.root / "spool", max_bytes, max_receiving_bytes=max_receiving_bytes
        )


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    """Empty stores of one backend (Postgres: its tables emptied first)."""
    engine: Engine | None = None
    if request.param == "postgres":
        engine = request.getfixturevalue("postgres_engine")
        with engine.begin() as connection:
            connection.execute(text("TRUNCATE jobs, job_payloads, keys, key_owners, key_chunks"))
    made = Backend(request.param, None, None, tmp_path, engine)  # type: ignore[arg-type]
    made.jobs = made.job_store(max_attempts=2, lease_seconds=60)
    made.keys = made.key_store(max_bytes=1000)
    yield made
    made.jobs.close()


def job(owner: str | None = "alice", key_id: str | None = None, callback: bool = False) -> Job:
    """A new queued job."""
    url = "http://127.0.0.1:9/hook" if callback else None
    return Job(
        new_job_id(), "tiny", "fhe", "queued", time.time(), "http://x/", owner, key_id, None, url
    )


async def _chunks(data: bytes) -> AsyncIterator[bytes]:
    for start in range(0, len(data), 7):
        yield data[start : start + 7]


def receive(store: KeyStore, data: bytes, limit: int = 10_000) -> Upload:
    return asyncio.run(store.receive(_chunks(data), limit))


def put(
    store: KeyStore, data: bytes, spec: str | None = "spec", owner: str | None = None, **bounds
):
    return store.add(receive(store, data), spec, owner, **bounds)


def protocol_members(protocol: type) -> set[str]:
    """The attributes and methods a protocol asks for."""
    names = set(getattr(protocol, "__annotations__", {}))
    names |= {n for n in vars(protocol) if not n.startswith("_") or n == "__len__"}
    return names - {"_is_protocol", "_is_runtime_protocol"}


# The protocols.


def test_each_backend_has_every_member_of_its_protocols(backend: Backend) -> None:
    for store, protocol in ((backend.jobs, JobStore), (backend.keys, KeyStore)):
        for name in protocol_members(protocol):
            assert hasattr(store, name), f"{type(store).__name__} lacks {name}"
            wanted = getattr(protocol, name, None)
            if inspect.isfunction(wanted):
                asked = list(inspect.signature(wanted).parameters)
                given = list(inspect.signature(getattr(type(store), name)).parameters)
                assert given == asked, f"{type(store).__name__}.{name}{given} != {asked}"
    shared = backend.name == "postgres"
    assert backend.jobs.shares_state is shared and backend.keys.shares_state is shared
    backend.jobs.ping()
    backend.keys.ping()


def test_workers_read_the_shared_store_through_the_key_reader(
    backend: Backend, tmp_path: Path
) -> None:
    """`stores.key_reader` (what worker processes use) has every member of its protocol and
    reads the shared store's keys; the embedded store has none (its workers get key files)."""
    if backend.engine is None:
        assert key_reader(None) is None
        return
    reader = key_reader(backend.engine.url.render_as_string(hide_password=False))
    assert reader is not None
    for name in protocol_members(KeyReader):
        assert hasattr(reader, name), f"{type(reader).__name__} lacks {name}"
    data = b"evaluation keys" * 10
    stored, _ = put(backend.keys, data)
    assert reader.exists(stored.key_id) and reader.read(stored.key_id) == data
    reader.copy_to(stored.key_id, tmp_path / "copy.keys")
    assert (tmp_path / "copy.keys").read_bytes() == data
    assert not reader.exists("0" * 64)
    with pytest.raises(FileNotFoundError):
        reader.read("0" * 64)


# Keys.


def test_keys_are_content_addressed_and_uploads_idempotent(backend: Backend) -> None:
    keys = backend.keys
    stored, new = put(keys, b"a" * 100, "spec-a", "alice")
    assert stored.key_id == hashlib.sha256(b"a" * 100).hexdigest() and new
    again, new_again = put(keys, b"a" * 100, "spec-b", "alice")
    assert again.key_id == stored.key_id and not new_again
    assert again.client_specs == ("spec-a", "spec-b") and again.fits("spec-b")
    keys.add_spec(stored.key_id, "spec-c")
    assert keys.status(stored.key_id).client_specs == ("spec-a", "spec-b", "spec-c")
    assert len(keys) == 1 and keys.total_bytes == 100
    assert keys.totals() == (1, 100, 1000)
    assert keys.owner_usage("alice") == (1, 100) and keys.owner_usage("bob") == (0, 0)
    with keys.key_file(stored.key_id) as path:
        assert path.read_bytes() == b"a" * 100
    with pytest.raises(FileNotFoundError), keys.key_file("0" * 64):
        pass
    assert keys.get("not-a-key-id") is None and keys.status("0" * 64) is None
    assert keys.receiving_bytes == 0


def test_only_owners_use_a_key_each_with_its_own_times(backend: Backend) -> None:
    keys = backend.keys
    alice, _ = put(keys, b"s" * 50, owner="alice")
    time.sleep(0.02)
    bob, bob_new = put(keys, b"s" * 50, owner="bob")
    assert bob_new and bob.owners == ("alice", "bob")
    assert keys.get(alice.key_id, "carol") is None
    seen = keys.get(alice.key_id, "alice")
    assert seen is not None and seen.usable_by("alice") and not seen.usable_by("carol")
    assert keys.status(alice.key_id, "bob").created > keys.status(alice.key_id, "alice").created


def test_quotas_bound_each_owner_in_bytes_and_in_keys(backend: Backend) -> None:
    keys = backend.keys
    put(keys, b"1" * 60, owner="alice", owner_quota=100, owner_max_keys=2)
    with pytest.raises(QuotaExceeded):
        put(keys, b"2" * 60, owner="alice", owner_quota=100, owner_max_keys=2)
    put(keys, b"3" * 30, owner="alice", owner_quota=100, owner_max_keys=2)
    with pytest.raises(TooManyKeys):
        put(keys, b"4" * 5, owner="alice", owner_quota=100, owner_max_keys=2)
    # Bytes the owner already holds count once: uploading them again passes.
    put(keys, b"1" * 60, owner="alice", owner_quota=100, owner_max_keys=2)
    assert keys.owner_usage("alice") == (2, 90)
    assert keys.receiving_bytes == 0


def test_the_bound_evicts_the_least_recently_used_keys_and_tells_listeners(
    backend: Backend,
) -> None:
    keys = backend.key_store(max_bytes=250)
    gone: list[str] = []
    keys.evicted.append(gone.append)
    first, _ = put(keys, b"a" * 100)
    time.sleep(0.02)
    second, _ = put(keys, b"b" * 100)
    time.sleep(0.02)
    third, _ = put(keys, b"c" * 100)
    assert gone == [first.key_id]
    assert keys.status(first.key_id) is None and keys.status(second.key_id) is not None
    assert keys.totals() == (2, 200, 250)
    with pytest.raises(KeyTooLarge):
        put(keys, b"d" * 300)
    assert keys.status(third.key_id) is not None


def test_keys_in_use_or_needed_by_jobs_in_flight_are_pinned(backend: Backend) -> None:
    keys = backend.key_store(max_bytes=200)
    by_run, _ = put(keys, b"r" * 100)
    by_job, _ = put(keys, b"j" * 100)
    queued = job(key_id=by_job.key_id)
    backend.jobs.add(queued, b"input")
    assert backend.jobs.key_ids_in_flight() == {by_job.key_id}
    with keys.in_use(by_run.key_id):
        with pytest.raises(StoreFull):
            put(keys, b"n" * 100)
        with pytest.raises(KeyPinned):
            keys.delete(by_run.key_id, None)
    with pytest.raises(KeyPinned):
        keys.delete(by_job.key_id, None)
    assert keys.totals()[:2] == (2, 200)
    # The run is over: its key makes room; the job's stays.
    newer, _ = put(keys, b"n" * 100)
    assert keys.status(by_run.key_id) is None and keys.status(by_job.key_id) is not None
    backend.jobs.claim_next()
    backend.jobs.finish(queued.job_id, b"result", "application/octet-stream", 1.0, 60)
    assert backend.jobs.key_ids_in_flight() == set()
    assert keys.delete(by_job.key_id, None) and keys.status(newer.key_id) is not None


def test_deleting_takes_one_owners_claim_and_the_bytes_with_the_last(backend: Backend) -> None:
    keys = backend.keys
    gone: list[str] = []
    keys.evicted.append(gone.append)
    shared, _ = put(keys, b"k" * 40, owner="alice")
    put(keys, b"k" * 40, owner="bob")
    assert not keys.delete(shared.key_id, "carol") and not keys.delete("nonsense", "alice")
    assert keys.delete(shared.key_id, "alice")
    assert keys.get(shared.key_id, "alice") is None and keys.get(shared.key_id, "bob") is not None
    assert keys.owner_usage("alice") == (0, 0) and gone == []
    assert keys.delete(shared.key_id, "bob")
    assert gone == [shared.key_id] and keys.status(shared.key_id) is None and len(keys) == 0
    assert not keys.delete(shared.key_id, "bob")


def test_uploads_being_received_have_a_bound_of_their_own(backend: Backend) -> None:
    keys = backend.key_store(max_bytes=150, max_receiving_bytes=150)
    with pytest.raises(KeyTooLarge):
        receive(keys, b"x" * 60, limit=50)
    with pytest.raises(KeyTooLarge):
        receive(keys, b"x" * 200, limit=1000)
    held = receive(keys, b"h" * 100)
    assert keys.receiving_bytes == 100 and held.path.exists()
    with pytest.raises(ReceivingFull):
        receive(keys, b"y" * 100)
    assert keys.receiving_bytes == 100, "a refused upload kept its bytes counted"
    keys.discard(held)
    keys.discard(held)
    assert keys.receiving_bytes == 0 and not held.path.exists()
    stored, _ = keys.add(receive(keys, b"z" * 100), "spec")
    assert keys.receiving_bytes == 0 and keys.status(stored.key_id).size == 100


# Jobs.


def test_a_job_goes_from_queued_to_running_to_done(backend: Backend) -> None:
    store = backend.jobs
    queued = store.add(job(key_id="k" * 64), b"ciphertext", WIDE)
    assert queued.input_bytes == len(b"ciphertext")
    seen = store.get(queued.job_id)
    assert seen is not None and seen.status == "queued" and seen.attempts == 0
    assert store.read_input(queued.job_id) == b"ciphertext"
    assert [j.job_id for j in store.list(owner="alice")] == [queued.job_id]
    assert store.list(owner="bob") == []
    assert store.count("queued") == 1 and store.count("queued", owner="bob") == 0
    claimed = store.claim_next()
    assert claimed is not None and claimed.job_id == queued.job_id
    assert claimed.status == "running" and claimed.attempts == 1 and claimed.started
    assert store.claim_next() is None
    store.renew([queued.job_id])
    assert store.counts_by_status() == {"running": 1}
    assert store.finish(queued.job_id, b"result", "application/x", 2.5, ttl=60)
    done = store.get(queued.job_id)
    assert done.status == "done" and done.result_bytes == 6 and done.result_type == "application/x"
    assert done.fhe_seconds == 2.5 and done.expires == pytest.approx(done.finished + 60)
    assert store.read_result(queued.job_id) == b"result"
    with pytest.raises(FileNotFoundError):
        store.read_input(queued.job_id)
    assert done.public()["status"] == "done"
    assert store.key_ids_in_flight() == set()


def test_a_failed_job_keeps_its_error_and_no_input(backend: Backend) -> None:
    store = backend.jobs
    queued = store.add(job(), b"input")
    store.claim_next()
    assert store.fail(queued.job_id, 422, "bad_input", "no such thing", ttl=60)
    failed = store.get(queued.job_id)
    assert (failed.status, failed.error_status, failed.error_code) == ("failed", 422, "bad_input")
    assert failed.public()["error"] == {
        "status": 422,
        "code": "bad_input",
        "message": "no such thing",
    }
    assert store.read_result(queued.job_id) is None
    with pytest.raises(FileNotFoundError):
        store.read_input(queued.job_id)


def test_retry_counts_the_attempt_and_release_does_not(backend: Backend) -> None:
    store = backend.jobs
    queued = store.add(job(), b"input")
    store.claim_next()
    store.release(queued.job_id)
    released = store.get(queued.job_id)
    assert released.status == "queued" and released.attempts == 0 and released.started is None
    store.claim_next()
    store.retry(queued.job_id)
    retried = store.get(queued.job_id)
    assert retried.status == "queued" and retried.attempts == 1
    assert store.claim_next().attempts == 2


def test_limits_refuse_the_job_that_would_pass_them(backend: Backend) -> None:
    store = backend.jobs
    in_flight = JobLimits(owner_max_in_flight=1, max_queued=100, owner_max_stored_bytes=1000)
    store.add(job("alice"), b"x" * 10, in_flight)
    with pytest.raises(JobRefused) as refused:
        store.add(job("alice"), b"x", in_flight)
    assert refused.value.reason == "owner_in_flight"
    queue = JobLimits(owner_max_in_flight=100, max_queued=1, owner_max_stored_bytes=1000)
    with pytest.raises(JobRefused) as refused:
        store.add(job("bob"), b"x", queue)
    assert refused.value.reason == "queue_full"
    stored = JobLimits(owner_max_in_flight=100, max_queued=100, owner_max_stored_bytes=15)
    with pytest.raises(JobRefused) as refused:
        store.add(job("alice"), b"x" * 6, stored)
    assert refused.value.reason == "owner_stored_bytes"
    store.add(job("alice"), b"x" * 5, stored)
    assert store.count("queued") == 2, "a refused job was kept"
    assert store.count("queued", "running", owner="bob") == 0


def test_claims_take_turns_between_tokens(backend: Backend) -> None:
    store = backend.jobs
    for owner in ("alice", "alice", "alice", "bob"):
        store.add(job(owner), b"x")
        time.sleep(0.01)
    # Fewest running first, then served least recently: bob's one job before alice's second.
    assert [store.claim_next().owner for _ in range(4)] == ["alice", "bob", "alice", "alice"]
    assert store.claim_next() is None


def test_only_a_finished_job_is_deleted_and_deleted_jobs_vanish(backend: Backend) -> None:
    store = backend.jobs
    queued = store.add(job(), b"input")
    assert not store.delete(queued.job_id)
    store.claim_next()
    assert not store.delete(queued.job_id)
    store.finish(queued.job_id, b"result", "application/x", None, ttl=60)
    assert store.delete(queued.job_id) and not store.delete(queued.job_id)
    assert store.get(queued.job_id) is None and store.list() == []
    assert store.read_result(queued.job_id) is None
    assert store.counts_by_status() == {"deleted": 1}
    assert store.get("not-a-job-id") is None and store.get("0" * 32) is None


def test_finished_jobs_expire_with_their_payloads(backend: Backend) -> None:
    store = backend.jobs
    short = store.add(job(), b"input")
    store.claim_next()
    store.finish(short.job_id, b"result", "application/x", None, ttl=0.2)
    kept = store.add(job(), b"input")
    assert store.expire() == 0
    time.sleep(0.3)
    assert store.get(short.job_id) is None, "an expired job still answers"
    assert store.expire() == 1
    assert store.read_result(short.job_id) is None and store.counts_by_status() == {"queued": 1}
    assert store.expire(now=time.time() + 1e6) == 0 and store.get(kept.job_id) is not None


def test_callbacks_are_counted_until_delivered(backend: Backend) -> None:
    """(The shared store leases a callback to the replica that ended its job: others sweep it
    up once that lease passes.)"""
    store = backend.job_store(max_attempts=2, lease_seconds=0.1)
    hooked = store.add(job(callback=True), b"input")
    store.add(job(), b"input")
    while store.claim_next() is not None:
        pass
    for listed in store.list():
        store.finish(listed.job_id, b"r", "application/x", None, ttl=60)
    time.sleep(0.2)
    waiting = store.undelivered_callbacks(max_attempts=3)
    assert [j.job_id for j in waiting] == [hooked.job_id]
    store.record_callback(hooked.job_id, False, "refused", hold_seconds=0.0)
    failed_once = store.get(hooked.job_id)
    assert failed_once.callback_attempts == 1 and failed_once.callback_error == "refused"
    assert not failed_once.callback_delivered
    store.record_callback(hooked.job_id, True, None, final=True)
    delivered = store.get(hooked.job_id)
    assert delivered.callback_delivered and delivered.callback_attempts == 2
    assert delivered.public()["callback"]["delivered"] is True
    assert store.undelivered_callbacks(max_attempts=3) == []


def test_an_interrupted_run_is_taken_up_again_until_its_attempts_are_spent(
    backend: Backend,
) -> None:
    """Embedded: a restart queues running jobs again. Shared: no restart does (other replicas
    may be running them), but a lease that passed hands the job to another replica, and the
    claim that lost it can no longer end or requeue it."""
    first = backend.job_store(max_attempts=2, lease_seconds=0.3)
    queued = first.add(job(), b"input")
    assert first.claim_next().attempts == 1
    if backend.engine is None:
        again = backend.job_store(max_attempts=2)
        assert again.requeue_interrupted(ttl=60) == 1
        assert again.get(queued.job_id).status == "queued"
        assert again.claim_next().attempts == 2
        assert again.requeue_interrupted(ttl=60) == 1
        again.close()
    else:
        other = backend.job_store(max_attempts=2, lease_seconds=60)
        assert other.requeue_interrupted(ttl=60) == 0
        assert other.claim_next() is None, "a held lease was claimed"
        time.sleep(0.5)
        taken = other.claim_next()
        assert taken is not None and taken.attempts == 2
        assert not first.finish(queued.job_id, b"stale", "application/x", None, 60)
        assert not first.fail(queued.job_id, 500, "stale", "stale", 60)
        first.release(queued.job_id)
        assert other.get(queued.job_id).status == "running", "a lost claim requeued the job"
        # The other replica dies too: past max_attempts the job fails instead of running again.
        with backend.engine.begin() as connection:
            connection.execute(text("UPDATE jobs SET lease_until = 0"))
        assert first.claim_next() is None
    ended = backend.jobs.get(queued.job_id)
    assert ended.status == "failed" and ended.error_code == "interrupted"
    with pytest.raises(FileNotFoundError):
        backend.jobs.read_input(queued.job_id)
    first.close()


# One schema.


@pytest.mark.postgres
def test_alembics_newest_revision_is_the_tables_module(postgres_engine: Engine) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    with postgres_engine.connect() as connection:
        differences = compare_metadata(MigrationContext.configure(connection), metadata)
    assert differences == []


@pytest.mark.fast
def test_sqlite_is_created_from_the_tables_module_and_opens_older_files(tmp_path: Path) -> None:
    store = SqliteJobStore(tmp_path / "new")
    found = schema_of(store.engine)
    assert {c["name"] for c in found.get_columns("jobs")} == set(jobs_table.c.keys())
    assert {i["name"] for i in found.get_indexes("jobs")} == {i.name for i in jobs_table.indexes}
    store.close()
    # A database from before the table gained the shared store's columns and indexes.
    old = tmp_path / "old"
    old.mkdir()
    columns = [c.name for c in jobs_table.c if not c.name.endswith("lease_until")]
    columns.remove("lease_holder")
    with sqlite3.connect(old / "jobs.sqlite") as db:
        db.execute(f"CREATE TABLE jobs ({', '.join(columns)})")
    reopened = SqliteJobStore(old)
    queued = reopened.add(job(), b"input", WIDE)
    assert reopened.claim_next().job_id == queued.job_id
    assert reopened.finish(queued.job_id, b"result", "application/x", None, 60)
    assert reopened.get(queued.job_id).status == "done"
    assert "jobs_by_expiry" in {i["name"] for i in schema_of(reopened.engine).get_indexes("jobs")}
    reopened.close()
