"""Content-addressed, persistent store of evaluation keys, bounded in bytes with LRU eviction.

A key's id is the sha256 of its serialized bytes, so uploads are idempotent. Files live under
`<root>/<key_id>.keys` with a `.json` sidecar; a file's mtime is its last use, so the LRU order
survives a restart. The sidecar lists every client spec whose key set the bytes have been checked
against (`checked_specs`; circuits without bootstrapping have identical, near-empty evaluation
keys, so one id may serve several) and every owner (API token name) that uploaded them: only they
may use the key. Each owner has its own record (`owner_records`: when it uploaded the key and last
used it), so one tenant never sees or moves another's; the bytes stay shared, and the file's mtime
(any owner's last use) orders eviction. Sidecars written before keys were checked structurally
carry no checked specs, so such keys are checked again on first use; those written before owner
records list owners without times.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from fhe.contract.atomic import write_atomic
from server.storage.key import (
    KeyPinned,
    StoredKey,
    StoreFull,
    Upload,
    check_quota,
    is_key_id,
)
from server.storage.key_base import KeyStoreBase


def _owners(meta: dict) -> tuple[str, ...]:
    return tuple(meta.get("owners", []))


def _time(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) else None


def _created(meta: dict) -> float | None:
    return _time(meta.get("created"))


def _owner_times(meta: dict, owner: str) -> tuple[float | None, float | None]:
    """When `owner` uploaded the key and last used it; a sidecar without owner records gives
    the key's creation for both (never another owner's use)."""
    record = meta.get("owner_records", {}).get(owner)
    if not isinstance(record, dict):
        return _created(meta), _created(meta)
    return _time(record.get("created")), _time(record.get("last_used"))


def _set_owner_times(meta: dict, owner: str, created: float | None, last_used: float) -> None:
    records = meta.setdefault("owner_records", {})
    records[owner] = {"created": created, "last_used": last_used}


def _specs(meta: dict) -> tuple[str, ...]:
    """The client specs a sidecar records the keys as checked against."""
    return tuple(meta.get("checked_specs", []))


def _read_meta(path: Path) -> dict:
    """A sidecar's content; an unreadable one counts as empty (nothing checked, no owner)."""
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return meta if isinstance(meta, dict) else {}


class FileKeyStore(KeyStoreBase):
    """Keys on local disk; thread-safe within one process (the embedded `KeyStore`).

    Keys that work in flight needs are pinned and never evicted: the keys of queued and running
    jobs (asked of `pinned_by_jobs`) and of runs holding `in_use`. Only a checked key being
    `add`ed evicts others: uploads still streaming count toward a bound of their own
    (`max_receiving_bytes`, the spool's disk), never toward the store's.
    """

    def __init__(
        self,
        root: Path,
        max_bytes: int,
        pinned_by_jobs: Callable[[], set[str]] | None = None,
        max_receiving_bytes: int | None = None,
    ) -> None:
        super().__init__(root, max_bytes, max_receiving_bytes)
        self.root = root
        self._sizes: dict[str, int] = {}
        self._owners: dict[str, tuple[str, ...]] = {}
        self.pinned_by_jobs = pinned_by_jobs or set
        for path in self.root.glob("*.keys"):
            if is_key_id(path.stem):
                self._sizes[path.stem] = path.stat().st_size
                self._owners[path.stem] = _owners(_read_meta(self._paths(path.stem)[1]))

    @property
    def total_bytes(self) -> int:
        """Bytes of all stored keys."""
        return sum(self._sizes.values())

    def _pinned(self) -> set[str]:
        return set(self._in_use) | set(self.pinned_by_jobs())

    def totals(self) -> tuple[int, int, int]:
        """Keys stored, their bytes, and the store's bound (what the metrics report)."""
        with self._lock:
            return len(self._sizes), sum(self._sizes.values()), self.max_bytes

    def ping(self) -> None:
        """Raise when the key directory cannot be read."""
        os.stat(self.root)

    def __len__(self) -> int:
        return len(self._sizes)

    def owner_usage(self, owner: str) -> tuple[int, int]:
        """How many keys `owner` holds and their bytes (what its quotas count)."""
        with self._lock:
            return self._usage(owner)

    def _usage(self, owner: str) -> tuple[int, int]:
        held = [size for key, size in self._sizes.items() if owner in self._owners.get(key, ())]
        return len(held), sum(held)

    def _paths(self, key_id: str) -> tuple[Path, Path]:
        return self.root / f"{key_id}.keys", self.root / f"{key_id}.json"

    def _view(self, key_id: str, meta: dict, owner: str | None, touched: float) -> StoredKey:
        """The stored key as `owner` sees it: its own times (without an owner, the key's
        creation and `touched`, its file's last use by anyone)."""
        created: float | None = _created(meta)
        last_used: float | None = touched
        if owner is not None:
            created, last_used = _owner_times(meta, owner)
        return StoredKey(
            key_id,
            self._sizes.get(key_id, int(meta.get("bytes", 0))),
            _specs(meta),
            self._paths(key_id)[0],
            _owners(meta),
            created,
            last_used,
        )

    def get(self, key_id: str, owner: str | None = None) -> StoredKey | None:
        """The stored key, marked as used now by `owner` (only its own last use moves), or None
        when unknown, evicted, or not `owner`'s."""
        if not is_key_id(key_id):
            return None
        with self._lock:
            if key_id not in self._sizes:
                return None
            if owner is not None and owner not in self._owners.get(key_id, ()):
                return None
            data_path, meta_path = self._paths(key_id)
            now = time.time()
            try:
                os.utime(data_path, (now, now))
            except FileNotFoundError:
                self._forget(key_id)
                gone = True
            else:
                gone = False
                meta = _read_meta(meta_path)
                if owner is not None:
                    _set_owner_times(meta, owner, _owner_times(meta, owner)[0], now)
                    write_atomic(meta_path, json.dumps(meta).encode(), sync=False)
                stored = self._view(key_id, meta, owner, now)
        if gone:
            self._notify([key_id])
            return None
        return stored

    @contextmanager
    def key_file(self, key_id: str) -> Iterator[Path]:
        """A stored key's file, to read without holding it in memory; FileNotFoundError when
        it is gone."""
        path = self._paths(key_id)[0]
        if not path.is_file():
            raise FileNotFoundError(f"evaluation key {key_id}")
        yield path

    def status(self, key_id: str, owner: str | None = None) -> StoredKey | None:
        """The stored key with when `owner` stored and last used it (without an owner: anyone),
        without marking it used."""
        if not is_key_id(key_id):
            return None
        with self._lock:
            if key_id not in self._sizes:
                return None
            data_path, meta_path = self._paths(key_id)
            try:
                last_used = data_path.stat().st_mtime
            except FileNotFoundError:
                return None
            return self._view(key_id, _read_meta(meta_path), owner, last_used)

    def delete(self, key_id: str, owner: str | None) -> bool:
        """Take `owner`'s claim on a key away; the bytes go when no owner is left (without
        access control, at once). False when the owner holds no such key; KeyPinned while
        queued or running work needs the key."""
        if not is_key_id(key_id):
            return False
        with self._lock:
            if key_id not in self._sizes:
                return False
            owners = self._owners.get(key_id, ())
            if owner is not None and owner not in owners:
                return False
            if key_id in self._pinned():
                raise KeyPinned(
                    f"evaluation key {key_id} is needed by queued or running work; delete it "
                    "when that work has finished"
                )
            left = tuple(o for o in owners if o != owner) if owner is not None else ()
            if left:
                meta_path = self._paths(key_id)[1]
                meta = _read_meta(meta_path)
                meta["owners"] = list(left)
                meta.get("owner_records", {}).pop(owner, None)
                write_atomic(meta_path, json.dumps(meta).encode(), sync=False)
                self._owners[key_id] = left
                return True
            self._forget(key_id)
        self._notify([key_id])
        return True

    def add(
        self,
        upload: Upload,
        client_spec: str | None,
        owner: str | None = None,
        owner_quota: int | None = None,
        owner_max_keys: int | None = None,
    ) -> tuple[StoredKey, bool]:
        """Move a checked upload into the store, recording `client_spec` (checked) and `owner`.

        `owner_quota` and `owner_max_keys` bound the bytes and the number of keys the owner
        holds, checked under the store's lock so parallel uploads cannot pass them together.
        New bytes evict least recently used, unpinned keys to make room (StoreFull, nothing
        changed, when pinned keys leave none). Returns the key as `owner` sees it and whether it
        is new for `owner` (without an owner: whether its bytes are new here). The upload's bytes
        stop counting as received whatever happens.
        """
        key_id, size = upload.key_id, upload.size
        data_path, meta_path = self._paths(key_id)
        evicted: list[str] = []
        try:
            with self._lock:
                self._pending.pop(upload.path, None)
                new_bytes = key_id not in self._sizes
                owned = not new_bytes and owner in self._owners.get(key_id, ())
                if owner is not None and not owned:
                    check_quota(*self._usage(owner), size, owner_quota, owner_max_keys)
                now = time.time()
                if new_bytes:
                    evicted = self._make_room(size)
                    # A move, not a write: the spooled upload is already whole on this disk.
                    os.replace(upload.path, data_path)
                    meta: dict = {
                        "checked_specs": [client_spec] if client_spec else [],
                        "owners": [owner] if owner else [],
                        "bytes": size,
                        "created": now,
                    }
                    if owner is not None:
                        _set_owner_times(meta, owner, now, now)
                    try:
                        write_atomic(meta_path, json.dumps(meta).encode(), sync=False)
                    except BaseException:
                        data_path.unlink(missing_ok=True)
                        raise
                    self._sizes[key_id] = size
                    self._owners[key_id] = _owners(meta)
                else:
                    os.utime(data_path, (now, now))
                    meta = self._record(key_id, client_spec, owner, now)
                stored = self._view(key_id, meta, owner, now)
        finally:
            upload.path.unlink(missing_ok=True)
        self._notify(evicted)
        return stored, (not owned if owner is not None else new_bytes)

    def add_spec(self, key_id: str, client_spec: str) -> None:
        """Record that the stored key has been checked against `client_spec`'s key set."""
        with self._lock:
            if key_id in self._sizes:
                self._record(key_id, client_spec, None, None)

    def _record(
        self, key_id: str, client_spec: str | None, owner: str | None, now: float | None
    ) -> dict:
        """Add a spec to a stored key's sidecar, and `owner` (used `now`); returns the sidecar
        (lock held)."""
        meta_path = self._paths(key_id)[1]
        meta = _read_meta(meta_path)
        specs, owners = _specs(meta), _owners(meta)
        changed = False
        if client_spec and client_spec not in specs:
            meta["checked_specs"] = [*specs, client_spec]
            changed = True
        if owner and now is not None:
            created = _owner_times(meta, owner)[0] if owner in owners else now
            if owner not in owners:
                meta["owners"] = [*owners, owner]
            _set_owner_times(meta, owner, created, now)
            changed = True
        if changed:
            write_atomic(meta_path, json.dumps(meta).encode(), sync=False)
            self._owners[key_id] = _owners(meta)
        return meta

    def _make_room(self, size: int) -> list[str]:
        """Drop least recently used, unpinned keys until `size` more bytes fit the bound (lock
        held); StoreFull, dropping none, when the pinned keys leave no room. Returns the ids
        dropped, to `_notify` once the lock is free."""
        excess = self.total_bytes + size - self.max_bytes
        if excess <= 0:
            return []
        pinned = self._pinned()
        by_age = sorted(
            (key for key in self._sizes if key not in pinned), key=lambda key: self._mtime(key)
        )
        victims: list[str] = []
        for key_id in by_age:
            if excess <= 0:
                break
            victims.append(key_id)
            excess -= self._sizes[key_id]
        if excess > 0:
            raise StoreFull(
                f"the key store ({self.max_bytes} bytes) is full of keys that queued or running "
                "work needs; try again when it has finished"
            )
        for key_id in victims:
            self._forget(key_id)
        return victims

    def _mtime(self, key_id: str) -> float:
        try:
            return self._paths(key_id)[0].stat().st_mtime
        except FileNotFoundError:
            return 0.0

    def _forget(self, key_id: str) -> None:
        self._sizes.pop(key_id, None)
        self._owners.pop(key_id, None)
        for path in self._paths(key_id):
            path.unlink(missing_ok=True)
