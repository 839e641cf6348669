"""Content-addressed, persistent store of evaluation keys, bounded in bytes with LRU eviction.

A key's id is the sha256 of its serialized bytes, so uploads are idempotent. Files live under
`<root>/<key_id>.keys` with a `.json` sidecar; a file's mtime is its last use, so the LRU order
survives a restart. The sidecar lists every client spec the bytes were uploaded for (circuits
without bootstrapping have identical, near-empty evaluation keys, so one id may serve several)
and every owner (API token name) that uploaded them: only they may use the key.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

KEY_ID_PATTERN = re.compile(r"^[0-9a-f]{64}$")


class KeyTooLarge(ValueError):
    """The upload exceeds the per-upload limit or the whole store."""


@dataclass(frozen=True)
class StoredKey:
    """One stored key: its id, size, the client specs it was uploaded for, and its file."""

    key_id: str
    size: int
    client_specs: tuple[str, ...]
    path: Path
    owners: tuple[str, ...] = ()

    def fits(self, client_spec: str | None) -> bool:
        """True when the key was uploaded for this spec, or for no particular spec."""
        return not self.client_specs or client_spec in self.client_specs

    def usable_by(self, owner: str | None) -> bool:
        """True when `owner` uploaded these bytes (any caller, without access control)."""
        return owner is None or owner in self.owners


def _owners(meta: dict) -> tuple[str, ...]:
    return tuple(meta.get("owners", []))


def _specs(meta: dict) -> tuple[str, ...]:
    """The client specs recorded in a sidecar (older sidecars hold a single `client_spec`)."""
    specs = meta.get("client_specs")
    if specs is None:
        specs = [meta["client_spec"]] if meta.get("client_spec") else []
    return tuple(specs)


def is_key_id(text: str) -> bool:
    """True when `text` has the shape of a key id (and is safe as a file name)."""
    return bool(KEY_ID_PATTERN.match(text))


class KeyStore:
    """Keys on local disk; thread-safe within one process."""

    def __init__(self, root: Path, max_bytes: int) -> None:
        self.root = root
        self.max_bytes = max_bytes
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._sizes: dict[str, int] = {}
        self._owners: dict[str, tuple[str, ...]] = {}
        for path in self.root.glob("*.keys"):
            if is_key_id(path.stem):
                self._sizes[path.stem] = path.stat().st_size
                try:
                    self._owners[path.stem] = _owners(
                        json.loads(self._paths(path.stem)[1].read_text())
                    )
                except (OSError, json.JSONDecodeError):
                    self._owners[path.stem] = ()
        for stale in self.root.glob("upload-*"):
            stale.unlink(missing_ok=True)

    @property
    def total_bytes(self) -> int:
        """Bytes of all stored keys."""
        return sum(self._sizes.values())

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
                meta = json.loads(meta_path.read_text())
            except (FileNotFoundError, json.JSONDecodeError):
                self._forget(key_id)
                return None
            return StoredKey(key_id, self._sizes[key_id], _specs(meta), data_path, _owners(meta))

    async def receive(self, chunks: AsyncIterator[bytes], limit: int) -> tuple[Path, str, int]:
        """Stream an upload into a temporary file while hashing it; refuse past `limit` bytes."""
        digest = hashlib.sha256()
        size = 0
        # Kept on success (the caller moves it into the store), removed on any failure.
        handle = tempfile.NamedTemporaryFile(dir=self.root, prefix="upload-", delete=False)  # noqa: SIM115
        path = Path(handle.name)
        try:
            with handle:
                async for chunk in chunks:
                    size += len(chunk)
                    if size > limit:
                        raise KeyTooLarge(f"evaluation keys exceed the limit of {limit} bytes")
                    digest.update(chunk)
                    handle.write(chunk)
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        return path, digest.hexdigest(), size

    def add(
        self, upload: Path, key_id: str, client_spec: str | None, owner: str | None = None
    ) -> tuple[StoredKey, bool]:
        """Move a received upload into the store, recording `client_spec` and `owner` for it.

        Returns the stored key and whether its bytes are new here.
        """
        size = upload.stat().st_size
        if size > self.max_bytes:
            upload.unlink(missing_ok=True)
            raise KeyTooLarge(
                f"evaluation keys of {size} bytes exceed the store ({self.max_bytes})"
            )
        data_path, meta_path = self._paths(key_id)
        with self._lock:
            created = key_id not in self._sizes
            if created:
                specs = (client_spec,) if client_spec else ()
                owners = (owner,) if owner else ()
                meta = {
                    "client_specs": list(specs),
                    "owners": list(owners),
                    "bytes": size,
                    "created": time.time(),
                }
                meta_path.write_text(json.dumps(meta))
                os.replace(upload, data_path)
                self._sizes[key_id] = size
                self._owners[key_id] = owners
                self._evict(keep=key_id)
            else:
                upload.unlink(missing_ok=True)
                os.utime(data_path)
                meta = json.loads(meta_path.read_text())
                specs, owners = _specs(meta), _owners(meta)
                if client_spec and client_spec not in specs:
                    specs = (*specs, client_spec)
                if owner and owner not in owners:
                    owners = (*owners, owner)
                if (specs, owners) != (_specs(meta), _owners(meta)):
                    meta.update(client_specs=list(specs), owners=list(owners))
                    meta.pop("client_spec", None)
                    meta_path.write_text(json.dumps(meta))
                    self._owners[key_id] = owners
        return StoredKey(key_id, size, specs, data_path, owners), created

    def _evict(self, keep: str) -> None:
        """Drop least recently used keys until the store fits its bound."""
        if self.total_bytes <= self.max_bytes:
            return
        by_age = sorted(
            (key for key in self._sizes if key != keep),
            key=lambda key: self._mtime(key),
        )
        for key_id in by_age:
            if self.total_bytes <= self.max_bytes:
                break
            self._forget(key_id)

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
