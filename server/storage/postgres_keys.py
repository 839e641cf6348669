"""Evaluation keys in the shared database, so that every replica and worker reads the same store.

The same contract as the embedded `FileKeyStore`: content-addressed ids, owners per token (each with
its own `created` and `last_used` in `key_owners`; the key's `last_used`, any owner's latest, orders
eviction), a bound in bytes with least-recently-used eviction that never takes a key that queued or
running jobs need (the jobs of every replica, read from the same database), quotas per token in
bytes and in keys. The bound, the quotas and each write are checked under one advisory lock, so
replicas cannot pass them together; only a checked key being added evicts.

Key bytes stream in and out in 1 MiB rows (`key_chunks`): an upload is spooled to a local file
while it arrives and checked there, then copied into the database a chunk at a time, so no replica
holds a whole key in memory to store it. A key is immutable once stored; deleting it (eviction,
quota, explicit DELETE) deletes its rows, which every replica and worker then sees.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import Engine, all_, delete, func, insert, literal, select, text, update
from sqlalchemy.engine import Connection

from fhe.contract.atomic import open_atomic
from server.storage.database import STORE_LOCK, UNREACHABLE, shared_state, unavailable
from server.storage.key import (
    KeyPinned,
    StoredKey,
    StoreFull,
    Upload,
    check_quota,
    is_key_id,
)
from server.storage.key_base import KeyStoreBase
from server.storage.tables import jobs, key_chunks, key_owners, keys

CHUNK_BYTES = 1 << 20
LOCK_WAIT = "30s"
TOUCH_EVERY_SECONDS = 30.0
"""A key's last use is written at most this often (a predict should not always write a row)."""


def read_key(connection: Connection, key_id: str) -> Iterator[bytes]:
    """A stored key's bytes, a chunk at a time (server-side cursor)."""
    rows = connection.execution_options(stream_results=True, yield_per=4).execute(
        select(key_chunks.c.data).where(key_chunks.c.key_id == key_id).order_by(key_chunks.c.seq)
    )
    for (data,) in rows:
        yield bytes(data)


def read_whole_key(connection: Connection, key_id: str) -> bytes:
    """A stored key's bytes as one object, through a temporary file, so that memory holds the
    whole key once (not its chunks and their join); FileNotFoundError when it is not stored."""
    with tempfile.TemporaryFile() as spool:
        wrote = 0
        for chunk in read_key(connection, key_id):
            spool.write(chunk)
            wrote += len(chunk)
        if not wrote:
            raise FileNotFoundError(f"evaluation key {key_id}")
        spool.seek(0)
        return spool.read()


def take_store_lock(connection: Connection) -> None:
    """Wait (at most LOCK_WAIT) for the store lock of this transaction; past that the database
    answers an error that becomes 503, rather than a request hanging on another replica."""
    connection.execute(text(f"SET LOCAL lock_timeout = '{LOCK_WAIT}'"))
    connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": STORE_LOCK})


class PostgresKeyStore(KeyStoreBase):
    """Keys in Postgres; the same methods as the embedded `FileKeyStore`, with no file per key
    (`StoredKey.path` is None: read the bytes with `key_file`, or by id in a worker)."""

    shares_state = True

    def __init__(
        self,
        engine: Engine,
        spool_dir: Path,
        max_bytes: int,
        max_receiving_bytes: int | None = None,
    ) -> None:
        super().__init__(spool_dir, max_bytes, max_receiving_bytes)
        self.engine = engine

    @property
    def total_bytes(self) -> int:
        """Bytes of all stored keys."""
        return self.totals()[1]

    def __len__(self) -> int:
        return self.totals()[0]

    def _pinned(self, connection: Connection) -> set[str]:
        """Keys that queued or running jobs of any replica need, or runs of this one use."""
        rows = connection.execute(
            select(jobs.c.key_id)
            .distinct()
            .where(jobs.c.status.in_(("queued", "running")), jobs.c.key_id.is_not(None))
        )
        with self._lock:
            return {row[0] for row in rows} | set(self._in_use)

    @shared_state
    def totals(self) -> tuple[int, int, int]:
        """Keys stored, their bytes, and the store's bound."""
        with self.engine.connect() as connection:
            count, stored = connection.execute(
                select(func.count(), func.coalesce(func.sum(keys.c.size), 0))
            ).one()
        return int(count), int(stored), self.max_bytes

    @shared_state
    def ping(self) -> None:
        """Raise when the database does not answer."""
        with self.engine.connect() as connection:
            connection.execute(select(1))

    @shared_state
    def owner_usage(self, owner: str) -> tuple[int, int]:
        """How many keys `owner` holds and their bytes (what its quotas count)."""
        with self.engine.connect() as connection:
            return self._owner_usage(connection, owner)

    @staticmethod
    def _owner_usage(connection: Connection, owner: str) -> tuple[int, int]:
        count, held = connection.execute(
            select(func.count(), func.coalesce(func.sum(keys.c.size), 0))
            .select_from(keys.join(key_owners))
            .where(key_owners.c.owner == owner)
        ).one()
        return int(count), int(held)

    def _stored(
        self, connection: Connection, key_id: str, owner: str | None = None
    ) -> StoredKey | None:
        """The key as `owner` sees it: its own times (without an owner, the key's)."""
        row = connection.execute(select(keys).where(keys.c.key_id == key_id)).first()
        if row is None:
            return None
        records = {
            record.owner: record
            for record in connection.execute(
                select(key_owners).where(key_owners.c.key_id == key_id)
            )
        }
        created, last_used = row.created, row.last_used
        if owner is not None:
            record = records.get(owner)
            created = record.created if record is not None else None
            last_used = record.last_used if record is not None else None
        return StoredKey(
            key_id,
            int(row.size),
            tuple(row.checked_specs),
            None,
            tuple(sorted(records)),
            created,
            last_used,
        )

    @shared_state
    def get(self, key_id: str, owner: str | None = None) -> StoredKey | None:
        """The stored key, marked as used now by `owner` (only its own last use, and the key's
        for eviction, move), or None when unknown, evicted, deleted or not `owner`'s."""
        if not is_key_id(key_id):
            return None
        now = time.time()
        stale = now - TOUCH_EVERY_SECONDS
        with self.engine.begin() as connection:
            stored = self._stored(connection, key_id, owner)
            if stored is None or not stored.usable_by(owner):
                return None
            connection.execute(
                update(keys)
                .where(keys.c.key_id == key_id, keys.c.last_used < stale)
                .values(last_used=now)
            )
            if owner is not None and (stored.last_used is None or stored.last_used < stale):
                connection.execute(
                    update(key_owners)
                    .where(key_owners.c.key_id == key_id, key_owners.c.owner == owner)
                    .values(last_used=now)
                )
        return stored

    @shared_state
    def status(self, key_id: str, owner: str | None = None) -> StoredKey | None:
        """The stored key with when `owner` stored and last used it (without an owner: anyone),
        without marking it used."""
        if not is_key_id(key_id):
            return None
        with self.engine.connect() as connection:
            return self._stored(connection, key_id, owner)

    @contextmanager
    def key_file(self, key_id: str) -> Iterator[Path]:
        """A stored key spooled to a local file a chunk at a time, to read without holding it in
        memory; removed afterwards. FileNotFoundError when it is not stored."""
        handle = tempfile.NamedTemporaryFile(dir=self.spool_dir, prefix="check-", delete=False)  # noqa: SIM115
        path = Path(handle.name)
        try:
            try:
                with handle, self.engine.connect() as connection:
                    wrote = 0
                    for chunk in read_key(connection, key_id):
                        handle.write(chunk)
                        wrote += len(chunk)
            except UNREACHABLE:
                raise unavailable() from None
            if not wrote:
                raise FileNotFoundError(f"evaluation key {key_id}")
            yield path
        finally:
            path.unlink(missing_ok=True)

    @shared_state
    def add(
        self,
        upload: Upload,
        client_spec: str | None,
        owner: str | None = None,
        owner_quota: int | None = None,
        owner_max_keys: int | None = None,
    ) -> tuple[StoredKey, bool]:
        """Store a checked, spooled upload for `owner`, checked against `client_spec`: the
        quotas and the bound are checked and least recently used unpinned keys evicted under the
        store lock, then the bytes copied in chunks, all in one transaction. Returns the key as
        `owner` sees it and whether it is new for `owner` (without one: its bytes are new)."""
        key_id, size = upload.key_id, upload.size
        evicted: list[str] = []
        try:
            with self.engine.begin() as connection:
                take_store_lock(connection)
                existing = self._stored(connection, key_id)
                owned = existing is not None and owner in existing.owners
                if owner is not None and not owned:
                    usage = self._owner_usage(connection, owner)
                    check_quota(*usage, size, owner_quota, owner_max_keys)
                now = time.time()
                if existing is None:
                    evicted = self._make_room(connection, size)
                    specs = [client_spec] if client_spec else []
                    connection.execute(
                        insert(keys).values(
                            key_id=key_id,
                            size=size,
                            created=now,
                            last_used=now,
                            checked_specs=specs,
                        )
                    )
                    self._copy_in(connection, key_id, upload.path)
                else:
                    connection.execute(
                        update(keys).where(keys.c.key_id == key_id).values(last_used=now)
                    )
                    if client_spec:
                        self._record_spec(connection, key_id, client_spec)
                if owner is not None and not owned:
                    connection.execute(
                        insert(key_owners).values(
                            key_id=key_id, owner=owner, created=now, last_used=now
                        )
                    )
                elif owner is not None:
                    connection.execute(
                        update(key_owners)
                        .where(key_owners.c.key_id == key_id, key_owners.c.owner == owner)
                        .values(last_used=now)
                    )
                stored = self._stored(connection, key_id, owner)
        finally:
            self.discard(upload)
        self._notify(evicted)
        assert stored is not None
        return stored, (not owned if owner is not None else existing is None)

    def _make_room(self, connection: Connection, size: int) -> list[str]:
        """Evict least recently used, unpinned keys until `size` more bytes fit (lock held);
        StoreFull when the keys that queued or running work needs leave no room."""
        total = int(
            connection.execute(select(func.coalesce(func.sum(keys.c.size), 0))).scalar_one()
        )
        if total + size <= self.max_bytes:
            return []
        pinned = self._pinned(connection)
        dropped: list[str] = []
        rows = connection.execute(select(keys.c.key_id, keys.c.size).order_by(keys.c.last_used))
        for key_id, key_size in rows.all():
            if total + size <= self.max_bytes:
                break
            if key_id in pinned:
                continue
            connection.execute(delete(keys).where(keys.c.key_id == key_id))
            total -= int(key_size)
            dropped.append(key_id)
        if total + size > self.max_bytes:
            raise StoreFull(
                f"the key store ({self.max_bytes} bytes) is full of keys that queued or running "
                "work needs; try again when it has finished"
            )
        return dropped

    @staticmethod
    def _copy_in(connection: Connection, key_id: str, path: Path) -> None:
        """Copy the spooled file into the key's chunk rows, one chunk in memory at a time."""
        with path.open("rb") as handle:
            seq = 0
            while chunk := handle.read(CHUNK_BYTES):
                connection.execute(insert(key_chunks).values(key_id=key_id, seq=seq, data=chunk))
                seq += 1

    @staticmethod
    def _record_spec(connection: Connection, key_id: str, client_spec: str) -> None:
        connection.execute(
            update(keys)
            .where(keys.c.key_id == key_id, literal(client_spec) != all_(keys.c.checked_specs))
            .values(checked_specs=func.array_append(keys.c.checked_specs, client_spec))
        )

    @shared_state
    def add_spec(self, key_id: str, client_spec: str) -> None:
        """Record that the stored key has been checked against `client_spec`'s key set."""
        with self.engine.begin() as connection:
            self._record_spec(connection, key_id, client_spec)

    @shared_state
    def delete(self, key_id: str, owner: str | None) -> bool:
        """Take `owner`'s claim on a key away; the bytes go when no owner is left (without
        access control, at once). False when the owner holds no such key; KeyPinned while
        queued or running work needs the key."""
        if not is_key_id(key_id):
            return False
        with self.engine.begin() as connection:
            take_store_lock(connection)
            stored = self._stored(connection, key_id)
            if stored is None or (owner is not None and owner not in stored.owners):
                return False
            if key_id in self._pinned(connection):
                raise KeyPinned(
                    f"evaluation key {key_id} is needed by queued or running work; delete it "
                    "when that work has finished"
                )
            left = [o for o in stored.owners if o != owner] if owner is not None else []
            if left:
                connection.execute(
                    delete(key_owners).where(
                        key_owners.c.key_id == key_id, key_owners.c.owner == owner
                    )
                )
                return True
            connection.execute(delete(keys).where(keys.c.key_id == key_id))
        self._notify([key_id])
        return True


class PostgresKeyReader:
    """A worker process's reader of stored keys by id, on an engine of its own (one connection):
    workers read the same store as the API, and a deleted key is gone for them too."""

    def __init__(self, database_url: str) -> None:
        from server.storage.database import engine_for

        self.engine = engine_for(database_url, pool_size=1)

    def exists(self, key_id: str) -> bool:
        """Whether the store still holds the key."""
        with self.engine.connect() as connection:
            found = connection.execute(select(keys.c.key_id).where(keys.c.key_id == key_id))
            return found.first() is not None

    def read(self, key_id: str) -> bytes:
        """The key's bytes; FileNotFoundError when the store does not hold it."""
        with self.engine.connect() as connection:
            return read_whole_key(connection, key_id)

    def copy_to(self, key_id: str, path: Path) -> None:
        """Write the key's bytes to `path` a chunk at a time (through a temporary file beside
        it); FileNotFoundError when the store does not hold it."""
        wrote = 0
        with self.engine.connect() as connection, open_atomic(path) as handle:
            for chunk in read_key(connection, key_id):
                handle.write(chunk)
                wrote += len(chunk)
            if not wrote:
                raise FileNotFoundError(f"evaluation key {key_id}")
