"""The one atomic writer: readers see a file's old content or its new, never half of it.

Everything is written to a temporary file beside the target, then renamed over it. Each write
has a temporary file of its own (`.<name>.<random>.partial`), so writers of the same path in
several threads or processes never truncate each other's; stores sweep `*.partial` leftovers of
a crash.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any


def partial_path(path: Path) -> Path:
    """A temporary path beside `path`, new at each call (64 random bits: no two writes share
    one). Not created here, so a file made at it takes its mode from whoever creates it."""
    return path.with_name(f".{path.name}.{secrets.token_hex(8)}.partial")


def _fsync(path: Path) -> None:
    """Flush a written file to the disk so that it survives a crash."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


@contextlib.contextmanager
def atomic_path(path: Path, sync: bool = False, exclusive: bool = False) -> Iterator[Path]:
    """A temporary path beside `path` to write (for tools that write by name); on a clean exit
    it becomes `path` (fsync'ed first when `sync`), on an error it is removed.

    `exclusive` keeps a `path` that exists already (another process wrote it first) instead of
    replacing it.
    """
    partial = partial_path(path)
    try:
        yield partial
        if sync:
            _fsync(partial)
        if exclusive:
            with contextlib.suppress(FileExistsError):
                os.link(partial, path)
        else:
            os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


@contextlib.contextmanager
def open_atomic(
    path: Path,
    mode: str = "wb",
    sync: bool = False,
    exclusive: bool = False,
    permissions: int = 0o666,
    **options: Any,
) -> Iterator[IO[Any]]:
    """`path` opened for writing a stream (bytes, or text with `mode="w"` and `open` options),
    through `atomic_path`; `permissions` (before the umask) apply from the first byte. The
    temporary file is created anew (O_EXCL): never one another writer holds."""
    if mode not in ("w", "wb"):
        raise ValueError(f"open_atomic writes ('w' or 'wb'), not {mode!r}")
    with atomic_path(path, sync=sync, exclusive=exclusive) as partial:
        descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, permissions)
        with open(descriptor, mode, **options) as handle:
            yield handle


def write_atomic(path: Path, data: bytes | str, sync: bool = True) -> None:
    """Write `data` (bytes, or text as UTF-8) at once, optionally fsync'ed to survive a crash."""
    with open_atomic(path, sync=sync) as handle:
        handle.write(data.encode() if isinstance(data, str) else data)
