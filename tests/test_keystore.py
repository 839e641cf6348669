"""The key store: content addressing, idempotence, byte bound with LRU eviction, persistence,
per-owner records and quotas, and uploads in progress bounded apart from the store."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import time
from pathlib import Path

import pytest

from server.storage.key import KeyTooLarge, QuotaExceeded, ReceivingFull, StoreFull, TooManyKeys
from server.storage.keys import FileKeyStore

pytestmark = pytest.mark.fast


async def _chunks(data: bytes):
    for start in range(0, len(data), 7):
        yield data[start : start + 7]


def put(
    store: FileKeyStore, data: bytes, spec: str | None = None, owner: str | None = None, **bounds
):
    upload = asyncio.run(store.receive(_chunks(data), limit=10_000))
    assert upload.size == len(data)
    return store.add(upload, spec, owner, **bounds)


def test_key_id_is_sha256_and_upload_is_idempotent(tmp_path: Path) -> None:
    store = FileKeyStore(tmp_path, max_bytes=1000)
    stored, created = put(store, b"a" * 100, "spec")
    assert stored.key_id == hashlib.sha256(b"a" * 100).hexdigest()
    assert created
    again, created_again = put(store, b"a" * 100, None)
    assert not created_again and again.key_id == stored.key_id
    assert again.client_specs == ("spec",)
    assert len(store) == 1 and store.total_bytes == 100
    assert list(tmp_path.glob("upload-*")) == []


def test_identical_bytes_serve_every_spec_they_were_uploaded_for(tmp_path: Path) -> None:
    """Circuits without bootstrapping share the same tiny key bytes, hence the same id."""
    store = FileKeyStore(tmp_path, max_bytes=1000)
    first, _ = put(store, b"e" * 64, "linear-a")
    second, created = put(store, b"e" * 64, "linear-b")
    assert not created and second.key_id == first.key_id
    assert second.client_specs == ("linear-a", "linear-b")
    found = FileKeyStore(tmp_path, max_bytes=1000).get(first.key_id)
    assert found is not None and found.fits("linear-a") and found.fits("linear-b")
    assert not found.fits("xgb")


def test_least_recently_used_key_is_evicted_first(tmp_path: Path) -> None:
    store = FileKeyStore(tmp_path, max_bytes=250)
    first, _ = put(store, b"1" * 100)
    second, _ = put(store, b"2" * 100)
    past = time.time() - 100
    os.utime(second.path, (past, past))
    os.utime(first.path, (past + 50, past + 50))
    assert store.get(first.key_id) is not None  # used now: the newest
    third, _ = put(store, b"3" * 100)
    assert store.get(second.key_id) is None
    assert store.get(first.key_id) is not None and store.get(third.key_id) is not None
    assert store.total_bytes == 200


def test_store_survives_a_new_instance(tmp_path: Path) -> None:
    stored, _ = put(FileKeyStore(tmp_path, max_bytes=1000), b"k" * 10, "s")
    reopened = FileKeyStore(tmp_path, max_bytes=1000)
    found = reopened.get(stored.key_id)
    assert found is not None and found.client_specs == ("s",)
    assert found.path.read_bytes() == b"k" * 10


def test_limits(tmp_path: Path) -> None:
    store = FileKeyStore(tmp_path, max_bytes=50)
    with pytest.raises(KeyTooLarge):
        asyncio.run(store.receive(_chunks(b"x" * 100), limit=20))
    assert list(tmp_path.glob("upload-*")) == []
    with pytest.raises(KeyTooLarge):
        asyncio.run(store.receive(_chunks(b"x" * 100), limit=1000))
    assert list(tmp_path.glob("upload-*")) == []
    assert store.receiving_bytes == 0


def test_bad_key_ids_are_unknown(tmp_path: Path) -> None:
    store = FileKeyStore(tmp_path, max_bytes=50)
    for key_id in ("", "../x", "A" * 64, "0" * 64):
        assert store.get(key_id) is None


def test_keys_of_work_in_flight_are_never_evicted(tmp_path: Path) -> None:
    """Keys named by queued or running jobs, and keys a run is using, stay; others go."""
    pinned: set[str] = set()
    store = FileKeyStore(tmp_path, max_bytes=250, pinned_by_jobs=lambda: pinned)
    job_key, _ = put(store, b"j" * 100)
    run_key, _ = put(store, b"r" * 100)
    pinned.add(job_key.key_id)
    with store.in_use(run_key.key_id):
        with pytest.raises(StoreFull):
            put(store, b"n" * 100)
        assert store.get(job_key.key_id) is not None
        assert store.get(run_key.key_id) is not None
        assert store.receiving_bytes == 0 and list(tmp_path.glob("upload-*")) == []
    third, _ = put(store, b"3" * 100)
    assert store.get(run_key.key_id) is None
    assert store.get(job_key.key_id) is not None and store.get(third.key_id) is not None
    assert store.total_bytes == 200


def test_uploads_in_progress_have_their_own_bound_and_never_evict(tmp_path: Path) -> None:
    """Two uploads streaming at once cannot together pass the bound of bytes being received;
    neither counts toward the store or evicts the key it holds (only `add` does)."""
    store = FileKeyStore(tmp_path, max_bytes=150, max_receiving_bytes=150)
    held, _ = put(store, b"h" * 100, owner="alice")

    async def both() -> list[object]:
        gate = asyncio.Event()

        async def slow(data: bytes):
            yield data[:60]
            await gate.wait()
            yield data[60:]

        first = asyncio.ensure_future(store.receive(slow(b"a" * 100), limit=1000))
        second = asyncio.ensure_future(store.receive(slow(b"b" * 100), limit=1000))
        await asyncio.sleep(0.01)
        assert store.receiving_bytes == 120
        gate.set()
        return await asyncio.gather(first, second, return_exceptions=True)

    results = asyncio.run(both())
    refused = [r for r in results if isinstance(r, ReceivingFull)]
    received = [r for r in results if not isinstance(r, Exception)]
    assert len(refused) == 1 and len(received) == 1
    assert store.receiving_bytes == 100
    assert store.status(held.key_id) is not None, "a key was evicted for an unchecked upload"
    store.discard(received[0])
    assert store.receiving_bytes == 0 and store.total_bytes == 100
    assert store.get(held.key_id, "alice") is not None
    # A checked key that is added makes room: the least recently used key goes then.
    added, _ = put(store, b"n" * 100, owner="bob")
    assert store.status(held.key_id) is None and store.total_bytes == 100
    assert store.get(added.key_id, "bob") is not None


def test_owners_have_their_own_records_of_shared_bytes(tmp_path: Path) -> None:
    """The same bytes uploaded by two owners: new for each, each seeing and moving its own
    times only; another token can neither see nor touch the key."""
    store = FileKeyStore(tmp_path, max_bytes=1000)
    alice, alice_new = put(store, b"s" * 64, "linear", owner="alice")
    time.sleep(0.05)
    bob, bob_new = put(store, b"s" * 64, "linear", owner="bob")
    assert alice_new and bob_new and bob.key_id == alice.key_id
    assert bob.created > alice.created
    again, again_new = put(store, b"s" * 64, "linear", owner="bob")
    assert not again_new and again.created == bob.created
    mtime = alice.path.stat().st_mtime
    assert store.get(alice.key_id, "mallory") is None
    assert alice.path.stat().st_mtime == mtime, "a non-owner's use moved the key's last use"
    time.sleep(0.05)
    used = store.get(alice.key_id, "bob")
    assert used is not None and used.last_used > bob.last_used
    seen_by_alice = FileKeyStore(tmp_path, max_bytes=1000).status(alice.key_id, "alice")
    assert seen_by_alice is not None
    assert (seen_by_alice.created, seen_by_alice.last_used) == (alice.created, alice.last_used)
    assert store.status(alice.key_id, "bob").last_used == used.last_used
    assert store.delete(alice.key_id, "bob")
    assert store.status(alice.key_id, "alice").created == alice.created


def test_a_sidecar_without_owner_records_still_reads(tmp_path: Path) -> None:
    """Sidecars written before owner records list owners without times: each owner sees the
    key's creation, never another's use."""
    store = FileKeyStore(tmp_path, max_bytes=1000)
    stored, _ = put(store, b"o" * 10, "s", owner="alice")
    meta_path = tmp_path / f"{stored.key_id}.json"
    meta = json.loads(meta_path.read_text())
    legacy = {"checked_specs": ["s"], "owners": ["alice", "bob"], "bytes": 10, "created": 5.0}
    meta_path.write_text(json.dumps(legacy))
    reopened = FileKeyStore(tmp_path, max_bytes=1000)
    for owner in ("alice", "bob"):
        seen = reopened.status(stored.key_id, owner)
        assert seen is not None and (seen.created, seen.last_used) == (5.0, 5.0)
    assert reopened.get(stored.key_id, "bob").fits("s")
    assert reopened.status(stored.key_id, "alice").last_used == 5.0
    assert meta["owner_records"]["alice"]["created"] == stored.created


def test_quotas_count_keys_and_bytes_per_owner(tmp_path: Path) -> None:
    store = FileKeyStore(tmp_path, max_bytes=1000)
    put(store, b"1" * 10, owner="alice", owner_quota=100, owner_max_keys=2)
    put(store, b"2" * 10, owner="alice", owner_quota=100, owner_max_keys=2)
    with pytest.raises(TooManyKeys):
        put(store, b"3" * 10, owner="alice", owner_quota=100, owner_max_keys=2)
    # Bytes the owner already holds are no new key; another owner has its own count.
    assert not put(store, b"2" * 10, owner="alice", owner_quota=100, owner_max_keys=2)[1]
    assert put(store, b"3" * 10, owner="bob", owner_quota=100, owner_max_keys=2)[1]
    with pytest.raises(QuotaExceeded):
        put(store, b"4" * 200, owner="bob", owner_quota=100, owner_max_keys=2)
    assert store.owner_usage("alice") == (2, 20) and store.owner_usage("bob") == (1, 10)
    assert store.receiving_bytes == 0 and list(tmp_path.glob("upload-*")) == []
