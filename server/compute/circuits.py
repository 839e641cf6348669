"""What runs inside an FHE worker process: circuit runs and key checks, with per-process caches.

Each worker keeps its loaded circuits (compiled once per host into the circuit cache, through
`concrete.compiler` only) and a bounded LRU of deserialized evaluation keys, so a request pays
neither for loading server.zip nor for deserializing keys it has seen recently.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cachetools

from fhe.contract.keyset import short_reason
from fhe.contract.signals import ignore_sigpipe
from server.compute.compiled_circuit import (
    CircuitUnavailable,
    CompiledCircuit,
    deserialize_keys,
    probe_host,
)

_circuits: dict[str, CompiledCircuit | CircuitUnavailable] = {}
_loading = threading.Lock()
_cache_dir: Path | None = None
_keys: cachetools.LRUCache[str, Any] = cachetools.LRUCache(maxsize=4)
_key_reader: Callable[[str], bytes] | None = None


class BadInput(Exception):
    """The client's bytes could not be used (malformed ciphertext or keys)."""


class StoreUnavailable(Exception):
    """The shared key store did not answer; the run may be tried again later."""


class KeyMissing(LookupError):
    """The key store holds no key of this id (never uploaded, evicted or deleted): the caller
    uploads it again. A class of its own, so a bug's KeyError is never taken for it."""


def _exit_with_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(0)


def prepare(
    key_cache_entries: int,
    threads: int | None = None,
    database_url: str | None = None,
    cache_dir: Path | None = None,
) -> None:
    """Start a worker process (a child of the API's pool, or a Celery worker's pool child): set
    the key cache bound, the threads one run may use and where compiled circuits are kept, and
    import Concrete's compiler once, before any request.

    Concrete parallelizes a run with OpenMP, which reads OMP_NUM_THREADS when it starts, so the
    bound is set before Concrete is imported. A watchdog thread ends the process if its parent
    dies without stopping it.
    """
    global _keys, _key_reader, _cache_dir
    _keys = cachetools.LRUCache(maxsize=key_cache_entries)
    _cache_dir = cache_dir
    if database_url:  # imported only then: the stores load SQLAlchemy and Alembic
        from server.storage.stores import key_reader

        reader = key_reader(database_url)
        _key_reader = reader.read if reader is not None else None
    if threads is not None:
        os.environ["OMP_NUM_THREADS"] = str(threads)
    threading.Thread(target=_exit_with_parent, args=(os.getppid(),), daemon=True).start()
    import concrete.compiler  # noqa: F401

    ignore_sigpipe()


def _circuit_cache() -> Path:
    if _cache_dir is None:
        raise CircuitUnavailable("this worker was started without a circuit cache directory")
    return _cache_dir


def _circuit(bundle_dir: str) -> CompiledCircuit:
    """The bundle's circuit, loaded once per process (compiled first if the cache lacks it); a
    bundle that cannot load raises CircuitUnavailable, remembered: its files do not change."""
    with _loading:
        if bundle_dir not in _circuits:
            try:
                _circuits[bundle_dir] = CompiledCircuit(
                    Path(bundle_dir) / "server.zip", _circuit_cache()
                )
            except CircuitUnavailable as error:
                _circuits[bundle_dir] = error
        loaded = _circuits[bundle_dir]
    if isinstance(loaded, CircuitUnavailable):
        raise CircuitUnavailable(str(loaded))
    return loaded


def _deserialize_keys(data: bytes) -> Any:
    try:
        return deserialize_keys(data)
    except RuntimeError as error:
        raise BadInput(
            f"evaluation keys could not be deserialized: {short_reason(error)}"
        ) from None


def _read_keys(key_id: str, key_path: str) -> bytes:
    """A key's bytes: its file, or the shared store; KeyMissing when neither holds it."""
    try:
        if key_path:
            return Path(key_path).read_bytes()
        if _key_reader is not None:
            return _key_reader(key_id)
    except FileNotFoundError:
        pass
    except Exception as error:  # the database, not the caller: worth trying again
        raise StoreUnavailable(f"the key store did not answer: {type(error).__name__}") from None
    raise KeyMissing(key_id)


def _evaluation_keys(key_id: str, key_path: str) -> tuple[Any, bool]:
    """The deserialized keys and whether they were already in this process's cache (a key is
    immutable once stored, so a cached one is never stale)."""
    keys = _keys.get(key_id)
    if keys is not None:
        return keys, True
    keys = _deserialize_keys(_read_keys(key_id, key_path))
    _keys[key_id] = keys
    return keys, False


def check_keys(key_path: str) -> None:
    """Raise BadInput unless the file holds deserializable evaluation keys."""
    _deserialize_keys(Path(key_path).read_bytes())


def warm(bundle_dirs: list[str]) -> dict[str, str | None]:
    """Load circuits ahead of the first request; returns why each one that cannot load does not
    (None for those that do)."""
    reasons: dict[str, str | None] = {}
    for bundle_dir in bundle_dirs:
        try:
            _circuit(bundle_dir)
            reasons[bundle_dir] = None
        except CircuitUnavailable as error:
            reasons[bundle_dir] = str(error)
    return reasons


def load_compiler() -> None:
    """Import Concrete's compiler (the first task of the start-up compiling child)."""
    import concrete.compiler  # noqa: F401


def compile_circuit(bundle_dir: str, cache_dir: str) -> str | None:
    """Compile one bundle's circuit into the cache unless it is there (in a process of its own,
    at start-up); returns why it cannot load, or None."""
    try:
        CompiledCircuit(Path(bundle_dir) / "server.zip", Path(cache_dir))
    except CircuitUnavailable as error:
        return str(error)
    return None


def host_problem(cache_dir: str) -> str | None:
    """Why this host cannot compile any circuit (no linker, say), or None."""
    return probe_host(Path(cache_dir))


def run_circuit(
    bundle_dir: str, key_id: str, key_path: str, ciphertext: bytes
) -> tuple[bytes, float, bool]:
    """Evaluate the bundle's circuit on one serialized ciphertext; returns the result, the
    seconds it took and whether the keys were already deserialized here."""
    circuit = _circuit(bundle_dir)
    keys, cached = _evaluation_keys(key_id, key_path)
    started = time.perf_counter()
    try:
        result = circuit.run(ciphertext, keys)
    except (RuntimeError, ValueError, TypeError) as error:
        raise BadInput(f"ciphertext could not be evaluated: {short_reason(error)}") from None
    finally:
        ignore_sigpipe()
    return result, time.perf_counter() - started, cached
