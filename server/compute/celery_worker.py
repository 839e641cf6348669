"""The worker side of Celery mode: the tasks `fhe-server worker` runs, and what a worker keeps (its
bounded key cache fetched from the shared database, or from Redis without one, delivery counts,
the dead-letter list)."""

from __future__ import annotations

import base64
import json
import logging
import os
import socket
import time
from pathlib import Path
from typing import Any

import redis
from celery import Celery

from fhe.contract.atomic import write_atomic
from server import errors, metrics
from server.compute import circuits
from server.compute.celery_app import (
    DEAD_LETTER,
    DELIVERIES_PREFIX,
    KEY_PREFIX,
    MAX_DELIVERIES,
    REDIS_TIMEOUT,
    TASK_CHECK_KEYS,
    TASK_RUN,
    bundle_client_spec,
)
from server.compute.compiled_circuit import CircuitUnavailable

log = logging.getLogger("fhe_server.celery")


class WorkerState:
    """What a worker process knows: where bundles are, its bounded key cache, and Redis."""

    def __init__(
        self,
        models_dir: Path,
        key_dir: Path,
        redis_url: str,
        max_key_bytes: int = 8 << 30,
        database_url: str | None = None,
    ) -> None:
        import redis

        self.reader = None
        if database_url:  # imported only then: the stores load SQLAlchemy and Alembic
            from server.storage.stores import key_reader

            self.reader = key_reader(database_url)
        self.models_dir = models_dir
        self.key_dir = key_dir
        self.key_dir.mkdir(parents=True, exist_ok=True)
        self.max_key_bytes = max_key_bytes
        self.redis = redis.Redis.from_url(
            redis_url, socket_timeout=REDIS_TIMEOUT, socket_connect_timeout=REDIS_TIMEOUT
        )

    def key_path(self, key_id: str, shared: bool = True) -> Path:
        """The key's file in this worker's cache, fetched the first time from the shared
        database (when one is configured and `shared`) or from Redis.

        A key the store no longer has (evicted, deleted, or its Redis TTL passed) is dropped
        from the cache too, and reported unknown: the API publishes it to Redis again if it
        still holds it.
        """
        path = self.key_dir / f"{key_id}.keys"
        if shared and self.reader is not None:
            if not self.reader.exists(key_id):
                path.unlink(missing_ok=True)
                raise circuits.KeyMissing(key_id)
            if not path.is_file():
                try:
                    self.reader.copy_to(key_id, path)
                except FileNotFoundError:
                    raise circuits.KeyMissing(key_id) from None
                self._evict(keep=path)
            os.utime(path)
            return path
        if not self.redis.exists(KEY_PREFIX + key_id):
            path.unlink(missing_ok=True)
            raise circuits.KeyMissing(key_id)
        if path.is_file():
            os.utime(path)
            return path
        data = self.redis.get(KEY_PREFIX + key_id)
        if data is None:
            raise circuits.KeyMissing(key_id)
        write_atomic(path, data, sync=False)
        self._evict(keep=path)
        return path

    def cached_bytes(self) -> int:
        """Bytes of the keys this worker holds on disk."""
        return sum(p.stat().st_size for p in self.key_dir.glob("*.keys"))

    def _evict(self, keep: Path) -> None:
        """Drop least recently used cached keys until the cache fits its bound."""
        files = sorted(
            (p for p in self.key_dir.glob("*.keys") if p != keep), key=lambda p: p.stat().st_mtime
        )
        total = self.cached_bytes()
        for path in files:
            if total <= self.max_key_bytes:
                break
            total -= path.stat().st_size
            path.unlink(missing_ok=True)

    def deliveries(self, task_id: str, ttl: float) -> int:
        """Count one more delivery of a task (kept in Redis, so every worker sees it)."""
        name = DELIVERIES_PREFIX + task_id
        count = int(self.redis.incr(name))
        self.redis.expire(name, int(ttl))
        return count

    def dead_letter(self, task_id: str, model: str, key_id: str, deliveries: int) -> None:
        """Set a task aside for the operator instead of running it again."""
        entry = {
            "task_id": task_id,
            "model": model,
            "key_id": key_id,
            "deliveries": deliveries,
            "time": time.time(),
        }
        self.redis.rpush(DEAD_LETTER, json.dumps(entry))
        self.redis.ltrim(DEAD_LETTER, -1000, -1)


def _error(error: type[errors.ServiceError], message: str) -> dict[str, Any]:
    """A task's refusal: the code of a domain error (the API raises that error again), with
    its status for readers of the result that do not know the class."""
    return {"error": {"status": error.status, "code": error.code, "message": message}}


def register_tasks(app: Celery, state_of: Any, delivery_ttl: float = 86400) -> None:
    """Declare the worker tasks; `state_of()` gives the worker's WorkerState."""

    @app.task(name=TASK_RUN, bind=True)
    def run_circuit(
        task: Any, model: str, key_id: str, ciphertext_b64: str, client_spec: str | None = None
    ) -> dict[str, Any]:
        state = state_of()
        bundle = state.models_dir / model
        host = socket.gethostname()
        if not (bundle / "server.zip").is_file():
            return _error(errors.UnknownModel, f"worker {host} has no {model!r}")
        if client_spec and bundle_client_spec(bundle) != client_spec:
            return _error(
                errors.ModelMismatch,
                f"worker {host} holds another bundle under the name {model!r} (client spec "
                f"{bundle_client_spec(bundle)}, the API serves {client_spec}); the operator "
                "must deploy the same models directory to the API and every worker",
            )
        try:
            deliveries = state.deliveries(task.request.id, delivery_ttl)
        except redis.RedisError as error:  # full (noeviction refuses writes) or unreachable
            return _error(errors.Busy, f"worker {host} cannot count the delivery: {error}")
        if deliveries > MAX_DELIVERIES:
            state.dead_letter(task.request.id, model, key_id, deliveries)
            metrics.DEAD_LETTERS.inc()
            log.error("task %s dead-lettered after %d deliveries", task.request.id, deliveries)
            return _error(
                errors.DeadLettered,
                f"this run stopped {MAX_DELIVERIES} FHE workers and was set aside: the ciphertext "
                "or keys do not fit this model's circuit; other requests were not affected",
            )
        try:
            key_path = state.key_path(key_id)
        except circuits.KeyMissing:
            return _error(errors.UnknownKey, f"evaluation key {key_id} is not in the key store")
        except Exception as error:  # the shared database did not answer: worth trying again
            log.warning("key %s could not be read: %s", key_id, error)
            return _error(errors.StateUnavailable, f"worker {host} cannot read the key store")
        try:
            result, seconds, cached = circuits.run_circuit(
                str(bundle), key_id, str(key_path), base64.b64decode(ciphertext_b64)
            )
        except circuits.BadInput as error:
            return _error(errors.MalformedCiphertext, str(error))
        except CircuitUnavailable as error:
            return _error(errors.CircuitUnavailable, f"worker {host}: {error}")
        metrics.record_run(model, seconds, cached)
        return {
            "result": base64.b64encode(result).decode(),
            "seconds": seconds,
            "key_cached": cached,
        }

    @app.task(name=TASK_CHECK_KEYS, bind=True)
    def check_keys(task: Any, key_id: str) -> dict[str, Any]:
        state = state_of()
        try:
            deliveries = state.deliveries(task.request.id, delivery_ttl)
        except redis.RedisError as error:  # full (noeviction refuses writes) or unreachable
            return _error(errors.Busy, f"the worker cannot count the delivery: {error}")
        if deliveries > MAX_DELIVERIES:
            state.dead_letter(task.request.id, "", key_id, deliveries)
            metrics.DEAD_LETTERS.inc()
            return _error(
                errors.UnprocessableKeys,
                f"deserializing these evaluation keys stopped {MAX_DELIVERIES} FHE workers",
            )
        try:
            # Keys are checked before they are stored: this one comes through Redis.
            circuits.check_keys(str(state.key_path(key_id, shared=False)))
        except circuits.KeyMissing:
            return _error(errors.UnknownKey, f"evaluation key {key_id} is not in the key store")
        except circuits.BadInput as error:
            return _error(errors.MalformedKeys, str(error))
        return {"ok": True}
