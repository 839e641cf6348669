"""What both key stores do alike: receive uploads into local spool files under a bound of their
own, pin keys that runs use, and tell listeners which keys left the store.

An upload streams into `<spool_dir>/upload-*` while it is hashed (its sha256 is the key id), and
is checked there before a store `add`s it; its bytes count toward `max_receiving_bytes` (the
spool's disk), never toward the store's bound, until it is added or discarded, so an upload still
arriving never evicts a stored key.
"""

from __future__ import annotations

import hashlib
import tempfile
import threading
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from server.storage.key import KeyTooLarge, ReceivingFull, Upload


class KeyStoreBase:
    """The spool, the pins of runs and the eviction listeners of a key store; subclasses store
    the keys (`FileKeyStore`, `PostgresKeyStore`)."""

    shares_state = False
    """See `server.storage.protocols`; the Postgres store sets it."""

    def __init__(self, spool_dir: Path, max_bytes: int, max_receiving_bytes: int | None) -> None:
        self.spool_dir = spool_dir
        self.max_bytes = max_bytes
        self.max_receiving_bytes = max_receiving_bytes or max_bytes
        spool_dir.mkdir(parents=True, exist_ok=True)
        for pattern in ("upload-*", "check-*"):
            for stale in spool_dir.glob(pattern):
                stale.unlink(missing_ok=True)
        self._lock = threading.Lock()
        self._pending: dict[Path, int] = {}
        self._in_use: Counter[str] = Counter()
        self.evicted: list[Callable[[str], None]] = []

    @property
    def receiving_bytes(self) -> int:
        """Bytes of uploads received here and not yet stored or discarded."""
        with self._lock:
            return sum(self._pending.values())

    @contextmanager
    def in_use(self, key_id: str) -> Iterator[None]:
        """Pin a key against eviction (by this process) while one of its runs uses it."""
        with self._lock:
            self._in_use[key_id] += 1
        try:
            yield
        finally:
            with self._lock:
                self._in_use[key_id] -= 1
                if self._in_use[key_id] <= 0:
                    del self._in_use[key_id]

    async def receive(self, chunks: AsyncIterator[bytes], limit: int) -> Upload:
        """Stream an upload into a spool file while hashing it; refuse past `limit` bytes, past
        the whole store, or past the bound of bytes being received at once.

        Its bytes count toward that bound until it is `add`ed or `discard`ed; they never evict.
        """
        digest = hashlib.sha256()
        size = 0
        # Kept on success (the caller adds or discards it), removed on any failure.
        handle = tempfile.NamedTemporaryFile(dir=self.spool_dir, prefix="upload-", delete=False)  # noqa: SIM115
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
        """Count `size` more bytes of the upload at `path` against the uploads' own bound."""
        with self._lock:
            receiving = sum(self._pending.values())
            if receiving + size > self.max_receiving_bytes:
                raise ReceivingFull(
                    f"evaluation key uploads in progress fill the {self.max_receiving_bytes} "
                    "bytes this server receives at once; try again shortly"
                )
            self._pending[path] = self._pending.get(path, 0) + size

    def _notify(self, key_ids: list[str]) -> None:
        """Tell the listeners (the Celery executor's Redis copy) which keys left the store."""
        for key_id in key_ids:
            for listener in self.evicted:
                listener(key_id)
