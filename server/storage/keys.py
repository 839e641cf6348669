"""Content-addressed, persistent store of evaluation keys, bounded in bytes with LRU eviction.

A key's id is the sha256 of its serialized bytes, so uploads are idempotent. Files live under
`<root>/<key_id>.keys` with a `.json` sidecar; a file's mtime is its last use, so the LRU order
survives a restart. The sidecar lists every client spec whose key set the bytes have been checked
against (`checked_specs`; circuits without bootstrapping have identical, near-empty evaluation
keys, so one id may serve several) and every owner (API token name) that uploaded them: only they
may use the key. Sidecars written before keys were checked structurally carry no checked specs,
so such keys are checked again on first use.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from server.storage.atomic import write_atomic

KEY_ID_PATTERN = re.compile(r"^[0-9a-f]{64}$")


class KeyTooLarge(ValueError):
    """The upload exceeds the per-upload limit or the whole store."""


class StoreFull(RuntimeError):
    """Every stored key that could make room is pinned by work in flight; try again later."""


class QuotaExceeded(RuntimeError):
    """The owner's stored keys would pass its quota."""


class KeyPinned(RuntimeError):
    """The key cannot be deleted while queued or running work needs it."""


@dataclass(frozen=True)
class StoredKey:
    """One stored key: its id, size, the client specs it was checked for, its file (None in a
    shared database: workers read it by id), owners, and when it was stored and last used."""

    key_id: str
    size: int
    client_specs: tuple[str, ...]
    path: Path | None
    owners: tuple[str, ...] = ()
    created: float | None = None
    last_used: float | None = None

    def fits(self, client_spec: str | None) -> bool:
        """True when the key has been checked against this client spec's key set."""
        return client_spec in self.client_specs

    def usable_by(self, owner: str | None) -> bool:
        """True when `owner` uploaded these bytes (any caller, without access control)."""
        return owner is None or owner in self.owners


def _owners(meta: dict) -> tuple[str, ...]:
    return tuple(meta.get("owners", []))


def _created(meta: dict) -> float | None:
    created = meta.get("created")
    return float(created) if isinstance(created, int | float) else None


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


def is_key_id(text: str) -> bool:
    """True when `text` has the shape of a key id (and is safe as a file name)."""
    return bool(KEY_ID_PATTERN.match(text))


@dataclass(frozen=True)
class Upload:
    """Evaluation keys received into a temporary file: its path, sha256 (the key id), size."""

    path: Path
    key_id: str
    size: int


class KeyStore:
    """Keys on local disk; thread-safe within one process (`PostgresKeyStore` has the same
    methods for many replicas).

    Keys that work in flight needs are pinned and never evicted: the keys of queued and running
    jobs (asked of `pinned_by_jobs`) and of runs holding `in_use`. Uploads still streaming count
    toward the bound, so concurrent uploads cannot overshoot it.
    """

    def __init__(
        self,
        root: Path,
        max_bytes: int,
        pinned_by_jobs: Callable[[], set[str]] | None = None,
    ) -> None:
        self.root = root
        self.max_bytes = max_bytes
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._sizes: dict[str, int] = {}
        self._owners: dict[str, tuple[str, ...]] = {}
        self._pending: dict[Path, int] = {}
        self._in_use: Counter[str] = Counter()
        self.pinned_by_jobs = pinned_by_jobs or set
        self.evicted: list[Callable[[str], None]] = []
        for path in self.root.glob("*.keys"):
            if is_key_id(path.stem):
                self._sizes[path.stem] = path.stat().st_size
                self._owners[path.stem] = _owners(_read_meta(self._paths(path.stem)[1]))
        for stale in self.root.glob("upload-*"):
            stale.unlink(missing_ok=True)

    @property
    def total_bytes(self) -> int:
        """Bytes of all stored keys."""
        return sum(self._sizes.values())

    @property
    def receiving_bytes(self) -> int:
        """Bytes of uploads received and not yet stored or discarded (they count toward the
        bound)."""
        return sum(self._pending.values())

    @contextmanager
    def in_use(self, key_id: str) -> Iterator[None]:
        """Pin a key against eviction while a run uses it."""
        with self._lock:
            self._in_use[key_id] += 1
        try:
            yield
        finally:
            with self._lock:
                self._in_use[key_id] -= 1
                if self._in_use[key_id] <= 0:
                    del self._in_use[key_id]

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

    def owner_bytes(self, owner: str) -> int:
        """Bytes of the keys `owner` has uploaded (what its quota counts)."""
        with self._lock:
            return sum(
                size for key, size in self._sizes.items() if owner in self._owners.get(key, ())
            )

    def _paths(self, key_id: str) -> tuple[Path, Path]:
        return self.root / f"{key_id}.keys", self.root / f"{key_id}.json"

    def get(self, key_id: str) -> StoredKey | None:
        """The stored key, marked as just used, or None when unknown or evicted."""
        if not is_key_id(key_id):
            return None
        with self._lock:
            if key_id not in self._sizes:
                return None
            data_path, meta_path = self._paths(key_id)
            try:
                os.utime(data_path)
            except FileNotFoundError:
                self._forget(key_id)
                gone = True
            else:
                gone = False
                meta = _read_meta(meta_path)
                size = self._sizes[key_id]
        if gone:
            self._notify([key_id])
            return None
        return StoredKey(
            key_id, size, _specs(meta), data_path, _owners(meta), _created(meta), time.time()
        )

    def read_bytes(self, key_id: str) -> bytes:
        """A stored key's whole bytes; FileNotFoundError when it is gone."""
        return self._paths(key_id)[0].read_bytes()

    def status(self, key_id: str) -> StoredKey | None:
        """The stored key with when it was created and last used, without marking it used."""
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
            meta = _read_meta(meta_path)
            size = self._sizes[key_id]
        return StoredKey(
            key_id, size, _specs(meta), data_path, _owners(meta), _created(meta), last_used
        )

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
                write_atomic(meta_path, json.dumps(meta).encode(), sync=False)
                self._owners[key_id] = left
                return True
            self._forget(key_id)
        self._notify([key_id])
        return True

    async def receive(self, chunks: AsyncIterator[bytes], limit: int) -> Upload:
        """Stream an upload into a temporary file while hashing it; refuse past `limit` bytes.

        Its bytes count toward the bound until it is `add`ed or `discard`ed.
        """
        digest = hashlib.sha256()
        size = 0
        # Kept on success (the caller adds or discards it), removed on any failure.
        handle = tempfile.NamedTemporaryFile(dir=self.root, prefix="upload-", delete=False)  # noqa: SIM115
        path = Path(handle.name)
        try:
            with handle:
                async for chunk in chunks:
                    if size + len(chunk) > limit:
                        raise KeyTooLarge(f"evaluation keys exceed the limit of {limit} bytes")
                    if size + len(chunk) > self.max_bytes:
                        raise KeyTooLarge(
                            f"evaluation keys exceed the whole store ({self.max_bytes} bytes)"
                        )
                    self._reserve(path, len(chunk))
                    size += len(chunk)
                    digest.update(chunk)
                    handle.write(chunk)
        except BaseException:
            self.discard(Upload(path, "", size))
            raise
        return Upload(path, digest.hexdigest(), size)

    def discard(self, upload: Upload) -> None:
        """Drop a received upload that will not be stored, and release its bytes (idempotent)."""
        upload.path.unlink(missing_ok=True)
        with self._lock:
            self._pending.pop(upload.path, None)

    def _reserve(self, path: Path, size: int) -> None:
        """Count `size` more bytes of the upload at `path`, evicting unpinned keys to make room
        for them."""
        with self._lock:
            receiving = sum(self._pending.values())
            if receiving + size > self.max_bytes:
                raise StoreFull(
                    f"other evaluation key uploads in progress fill the store's {self.max_bytes} "
                    "bytes; try again shortly"
                )
            self._pending[path] = self._pending.get(path, 0) + size
            try:
                evicted = self._evict(keep=None)
            except BaseException:
                self._pending[path] -= size
                raise
            if self.total_bytes + receiving + size > self.max_bytes:
                self._pending[path] -= size
                full = True
            else:
                full = False
        self._notify(evicted)
        if full:
            raise StoreFull(
                f"the key store ({self.max_bytes} bytes) is full of keys that queued or running "
                "work needs; try again when it has finished"
            )

    def add(
        self,
        upload: Upload,
        client_spec: str | None,
        owner: str | None = None,
        owner_quota: int | None = None,
    ) -> tuple[StoredKey, bool]:
        """Move a received upload into the store, recording `client_spec` (checked) and `owner`.

        `owner_quota` bounds the bytes of keys the owner holds, checked under the store's lock so
        parallel uploads cannot pass it together. Returns the stored key and whether its bytes
        are new here. The upload's bytes stop counting as pending whatever happens.
        """
        key_id, size = upload.key_id, upload.size
        data_path, meta_path = self._paths(key_id)
        evicted: list[str] = []
        try:
            with self._lock:
                self._pending.pop(upload.path, None)
                created = key_id not in self._sizes
                owned = not created and owner in self._owners.get(key_id, ())
                if owner is not None and owner_quota is not None and not owned:
                    held = sum(
                        n for key, n in self._sizes.items() if owner in self._owners.get(key, ())
                    )
                    if held + size > owner_quota:
                        raise QuotaExceeded(
                            f"this token holds {held} bytes of keys; {size} more would pass its "
                            f"quota of {owner_quota}"
                        )
                if created:
                    specs = (client_spec,) if client_spec else ()
                    owners = (owner,) if owner else ()
                    os.replace(upload.path, data_path)
                    meta = {
                        "checked_specs": list(specs),
                        "owners": list(owners),
                        "bytes": size,
                        "created": time.time(),
                    }
                    try:
                        write_atomic(meta_path, json.dumps(meta).encode(), sync=False)
                    except BaseException:
                        data_path.unlink(missing_ok=True)
                        raise
                    self._sizes[key_id] = size
                    self._owners[key_id] = owners
                    evicted = self._evict(keep=key_id)
                else:
                    os.utime(data_path)
                    specs, owners = self._record(key_id, client_spec, owner)
        finally:
            upload.path.unlink(missing_ok=True)
        self._notify(evicted)
        return StoredKey(key_id, size, specs, data_path, owners), created

    def add_spec(self, key_id: str, client_spec: str) -> None:
        """Record that the stored key has been checked against `client_spec`'s key set."""
        with self._lock:
            if key_id in self._sizes:
                self._record(key_id, client_spec, None)

    def _record(
        self, key_id: str, client_spec: str | None, owner: str | None
    ) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """Add a spec and an owner to a stored key's sidecar; returns both lists (lock held)."""
        meta_path = self._paths(key_id)[1]
        meta = _read_meta(meta_path)
        specs, owners = _specs(meta), _owners(meta)
        if client_spec and client_spec not in specs:
            specs = (*specs, client_spec)
        if owner and owner not in owners:
            owners = (*owners, owner)
        if (specs, owners) != (_specs(meta), _owners(meta)):
            meta.update(checked_specs=list(specs), owners=list(owners))
            write_atomic(meta_path, json.dumps(meta).encode(), sync=False)
            self._owners[key_id] = owners
        return specs, owners

    def _evict(self, keep: str | None) -> list[str]:
        """Drop least recently used, unpinned keys until the store and the uploads in progress
        fit its bound (lock held); returns the ids dropped, to `_notify` once the lock is free."""
        receiving = sum(self._pending.values())
        if self.total_bytes + receiving <= self.max_bytes:
            return []
        pinned = self._pinned()
        by_age = sorted(
            (key for key in self._sizes if key != keep and key not in pinned),
            key=lambda key: self._mtime(key),
        )
        dropped = []
        for key_id in by_age:
            if self.total_bytes + receiving <= self.max_bytes:
                break
            self._forget(key_id)
            dropped.append(key_id)
        return dropped

    def _notify(self, key_ids: list[str]) -> None:
        """Tell the listeners (the Celery executor's Redis copy) which keys left the store."""
        for key_id in key_ids:
            for listener in self.evicted:
                listener(key_id)

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
