"""The key store: content addressing, idempotence, byte bound with LRU eviction, persistence."""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from pathlib import Path

import pytest

from server.keystore import KeyStore, KeyTooLarge


async def _chunks(data: bytes):
    for start in range(0, len(data), 7):
        yield data[start : start + 7]


def put(store: KeyStore, data: bytes, spec: str | None = None):
    upload, key_id, size = asyncio.run(store.receive(_chunks(data), limit=10_000))
    assert size == len(data)
    return store.add(upload, key_id, spec)


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
    upload, key_id, _ = asyncio.run(store.receive(_chunks(b"x" * 100), limit=1000))
    with pytest.raises(KeyTooLarge):
        store.add(upload, key_id, None)
    assert not upload.exists()


def test_bad_key_ids_are_unknown(tmp_path: Path) -> None:
    store = KeyStore(tmp_path, max_bytes=50)
    for key_id in ("", "../x", "A" * 64, "0" * 64):
        assert store.get(key_id) is None
