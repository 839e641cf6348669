"""The key store: content addressing, idempotence, byte bound with LRU eviction, persistence."""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from pathlib import Path

import pytest

from server.storage.keys import KeyStore, KeyTooLarge, StoreFull

pytestmark = pytest.mark.fast


async def _chunks(data: bytes):
    for start in range(0, len(data), 7):
        yield data[start : start + 7]


def put(store: KeyStore, data: bytes, spec: str | None = None):
    upload = asyncio.run(store.receive(_chunks(data), limit=10_000))
    assert upload.size == len(data)
    return store.add(upload, spec)


def test_key_id_is_sha256_and_upload_is_idempotent(tmp_path: Path) -> None:
    store = KeyStore(tmp_path, max_bytes=1000)
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
    store = KeyStore(tmp_path, max_bytes=1000)
    first, _ = put(store, b"e" * 64, "linear-a")
    second, created = put(store, b"e" * 64, "linear-b")
    assert not created and second.key_id == first.key_id
    assert second.client_specs == ("linear-a", "linear-b")
    found = KeyStore(tmp_path, max_bytes=1000).get(first.key_id)
    assert found is not None and found.fits("linear-a") and found.fits("linear-b")
    assert not found.fits("xgb")


def test_least_recently_used_key_is_evicted_first(tmp_path: Path) -> None:
    store = KeyStore(tmp_path, max_bytes=250)
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
    stored, _ = put(KeyStore(tmp_path, max_bytes=1000), b"k" * 10, "s")
    reopened = KeyStore(tmp_path, max_bytes=1000)
    found = reopened.get(stored.key_id)
    assert found is not None and found.client_specs == ("s",)
    assert found.path.read_bytes() == b"k" * 10


def test_limits(tmp_path: Path) -> None:
    store = KeyStore(tmp_path, max_bytes=50)
    with pytest.raises(KeyTooLarge):
        asyncio.run(store.receive(_chunks(b"x" * 100), limit=20))
    assert list(tmp_path.glob("upload-*")) == []
    with pytest.raises(KeyTooLarge):
        asyncio.run(store.receive(_chunks(b"x" * 100), limit=1000))
    assert list(tmp_path.glob("upload-*")) == []
    assert store.receiving_bytes == 0


def test_bad_key_ids_are_unknown(tmp_path: Path) -> None:
    store = KeyStore(tmp_path, max_bytes=50)
    for key_id in ("", "../x", "A" * 64, "0" * 64):
        assert store.get(key_id) is None


def test_keys_of_work_in_flight_are_never_evicted(tmp_path: Path) -> None:
    """Keys named by queued or running jobs, and keys a run is using, stay; others go."""
    pinned: set[str] = set()
    store = KeyStore(tmp_path, max_bytes=250, pinned_by_jobs=lambda: pinned)
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


def test_uploads_in_progress_count_toward_the_bound(tmp_path: Path) -> None:
    """Two uploads streaming at once cannot together pass the store's bound."""
    store = KeyStore(tmp_path, max_bytes=150)

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
    refused = [r for r in results if isinstance(r, StoreFull)]
    received = [r for r in results if not isinstance(r, Exception)]
    assert len(refused) == 1 and len(received) == 1
    assert store.receiving_bytes == 100
    store.add(received[0], None)
    assert store.receiving_bytes == 0 and store.total_bytes == 100
