"""Scale-out on Celery: FHE runs on `fhe-server worker` processes on any number of machines.

Redis is the broker, the result store and the shared key store. The API's key store is the one
source of truth: it publishes a key to Redis (with a TTL) when a run needs it, deletes it from
Redis when it evicts it, and publishes it again whenever a worker reports it missing. A worker
fetches a key by id the first time it needs it and keeps it on its own disk, bounded in bytes with
LRU eviction, and drops its copy as soon as Redis no longer has the key.

Tasks are acknowledged late and rejected when their worker is lost, with a prefetch of one, so the
task of a killed worker is delivered again to another. Each delivery is counted in Redis: a task
whose run has killed two worker processes is dead-lettered (kept in a Redis list for the
operator) and fails with a clear error instead of killing every worker that takes it. Circuits run
in a prefork child process, so a run that crashes costs that child, and Celery starts another.

`CeleryExecutor` has the same `call` as the local `FHEExecutor`, so the predict route and the
job runner do not know which one runs their circuits.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from pathlib import Path
from typing import Any

from celery import Celery
from celery.exceptions import TimeoutError as CeleryTimeout

from fhe.bundle import client_spec_hash
from server import worker
from server.executor import Busy, RunRefused, TimedOut

log = logging.getLogger("fhe_server.celery")

KEY_PREFIX = "fhe:key:"
DELIVERIES_PREFIX = "fhe:deliveries:"
DEAD_LETTER = "fhe:dead-letter"
TASK_RUN = "fhe.run_circuit"
TASK_CHECK_KEYS = "fhe.check_keys"
REDIS_TIMEOUT = 10.0
"""Seconds before a Redis call that gets no answer fails, rather than hanging its caller."""
MAX_DELIVERIES = 2
"""Deliveries of one task before it is dead-lettered: the first run and one retry."""


def make_celery(redis_url: str, visibility_timeout: float, result_ttl: float) -> Celery:
    """The Celery application both the API and the workers use."""
    app = Celery("fhe_server", broker=redis_url, backend=redis_url)
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        result_expires=int(result_ttl),
        broker_transport_options={
            "visibility_timeout": visibility_timeout,
            "unacked_restore_interval": 2,
            "unacked_restore_throttle": 1,
        },
        result_backend_transport_options={"visibility_timeout": visibility_timeout},
        broker_connection_retry_on_startup=True,
        # A worker's child imports Concrete when it starts, which takes seconds on a busy machine.
        worker_proc_alive_timeout=300,
        worker_hijack_root_logger=False,
    )
    return app


class WorkerState:
    """What a worker process knows: where bundles are, its bounded key cache, and Redis."""

    def __init__(
        self, models_dir: Path, key_dir: Path, redis_url: str, max_key_bytes: int = 8 << 30
    ) -> None:
        import redis

        self.models_dir = models_dir
        self.key_dir = key_dir
        self.key_dir.mkdir(parents=True, exist_ok=True)
        self.max_key_bytes = max_key_bytes
        self.redis = redis.Redis.from_url(
            redis_url, socket_timeout=REDIS_TIMEOUT, socket_connect_timeout=REDIS_TIMEOUT
        )

    def key_path(self, key_id: str) -> Path:
        """The key's file in this worker's cache, fetched from Redis the first time.

        A key Redis no longer has (the API evicted it, or its TTL passed) is dropped from the
        cache too, and reported unknown: the API publishes it again if it still holds it.
        """
        path = self.key_dir / f"{key_id}.keys"
        if not self.redis.exists(KEY_PREFIX + key_id):
            path.unlink(missing_ok=True)
            raise KeyError(key_id)
        if path.is_file():
            os.utime(path)
            return path
        data = self.redis.get(KEY_PREFIX + key_id)
        if data is None:
            raise KeyError(key_id)
        partial = path.with_suffix(f".{os.getpid()}.partial")
        partial.write_bytes(data)
        partial.replace(path)
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


@cache
def bundle_client_spec(bundle: Path) -> str:
    """The sha256 of a bundle's client.zip, computed once per worker process."""
    return client_spec_hash(bundle)


def _error(status: int, code: str, message: str) -> dict[str, Any]:
    return {"error": {"status": status, "code": code, "message": message}}


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
            return _error(404, "unknown_model", f"worker {host} has no {model!r}")
        if client_spec and bundle_client_spec(bundle) != client_spec:
            return _error(
                503,
                "model_mismatch",
                f"worker {host} holds another bundle under the name {model!r} (client spec "
                f"{bundle_client_spec(bundle)}, the API serves {client_spec}); the operator "
                "must deploy the same models directory to the API and every worker",
            )
        deliveries = state.deliveries(task.request.id, delivery_ttl)
        if deliveries > MAX_DELIVERIES:
            state.dead_letter(task.request.id, model, key_id, deliveries)
            log.error("task %s dead-lettered after %d deliveries", task.request.id, deliveries)
            return _error(
                422,
                "dead_lettered",
                f"this run stopped {MAX_DELIVERIES} FHE workers and was set aside: the ciphertext "
                "or keys do not fit this model's circuit; other requests were not affected",
            )
        try:
            key_path = state.key_path(key_id)
        except KeyError:
            return _error(404, "unknown_key", f"evaluation key {key_id} is not in the key store")
        try:
            result, seconds = worker.run_circuit(
                str(bundle), key_id, str(key_path), base64.b64decode(ciphertext_b64)
            )
        except worker.BadInput as error:
            return _error(400, "malformed_ciphertext", str(error))
        return {"result": base64.b64encode(result).decode(), "seconds": seconds}

    @app.task(name=TASK_CHECK_KEYS, bind=True)
    def check_keys(task: Any, key_id: str) -> dict[str, Any]:
        state = state_of()
        deliveries = state.deliveries(task.request.id, delivery_ttl)
        if deliveries > MAX_DELIVERIES:
            state.dead_letter(task.request.id, "", key_id, deliveries)
            return _error(
                400,
                "malformed_keys",
                f"deserializing these evaluation keys stopped {MAX_DELIVERIES} FHE workers",
            )
        try:
            worker.check_keys(str(state.key_path(key_id)))
        except KeyError:
            return _error(404, "unknown_key", f"evaluation key {key_id} is not in the key store")
        except worker.BadInput as error:
            return _error(400, "malformed_keys", str(error))
        return {"ok": True}


class TaskFailed(RuntimeError):
    """A worker answered with an error (status, code, message)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code = status, code


class CeleryExecutor:
    """Sends FHE work to Celery workers and waits for it without blocking the event loop.

    It offers the local pool's `run_circuit` and `check_keys`, so callers do not know which one
    runs their circuits.
    """

    def __init__(
        self, app: Celery, redis_url: str, capacity: int, timeout: float, key_ttl: float
    ) -> None:
        import redis

        self.app = app
        self.redis = redis.Redis.from_url(
            redis_url, socket_timeout=REDIS_TIMEOUT, socket_connect_timeout=REDIS_TIMEOUT
        )
        self.capacity = capacity
        self.timeout = timeout
        self.key_ttl = key_ttl
        self.in_flight = 0
        self.workers = capacity
        self._waiters = ThreadPoolExecutor(max_workers=capacity, thread_name_prefix="celery-wait")

    def follow(self, keystore: Any) -> None:
        """Delete a key from Redis as soon as the API's store evicts it (in a waiter thread,
        so the event loop never waits on Redis)."""
        keystore.evicted.append(lambda key_id: self._waiters.submit(self.forget_key, key_id))

    def forget_key(self, key_id: str) -> None:
        """Take a key out of the shared store (workers drop their copies on next use)."""
        try:
            self.redis.delete(KEY_PREFIX + key_id)
        except Exception:  # Redis down: the TTL removes it later
            log.warning("could not delete key %s from Redis", key_id, exc_info=True)

    def _publish_key(self, key_id: str, path: Path) -> None:
        """Put a key into the shared store unless it is there, and renew its TTL."""
        name = KEY_PREFIX + key_id
        if not self.redis.expire(name, int(self.key_ttl)):
            try:
                data = path.read_bytes()
            except FileNotFoundError:
                raise KeyError(key_id) from None
            self.redis.set(name, data, ex=int(self.key_ttl))

    def _send_and_wait(self, name: str, args: list[Any]) -> dict[str, Any]:
        try:
            answer = self.app.send_task(name, args=args).get(timeout=self.timeout)
        except CeleryTimeout:
            raise TimedOut(
                f"no FHE worker answered within {self.timeout:g} s; the run may still finish, "
                "try again later"
            ) from None
        error = answer.get("error")
        if error:
            raise TaskFailed(error["status"], error["code"], error["message"])
        return answer

    async def _task(self, key_id: str, key_path: str, name: str, args: list[Any]) -> Any:
        """Publish the key, send one task and wait for it; Busy past the in-flight bound.

        A key the worker could not find is published again and the task sent once more. Worker
        errors come back as the local pool's: KeyError for an unknown key, BadInput for a
        malformed input, RunRefused for the rest.
        """
        if self.in_flight >= self.capacity:
            raise Busy(f"{self.in_flight} FHE requests are running or queued; try again shortly")
        self.in_flight += 1
        loop = asyncio.get_running_loop()

        async def publish_and_send() -> dict[str, Any]:
            await loop.run_in_executor(self._waiters, self._publish_key, key_id, Path(key_path))
            return await loop.run_in_executor(self._waiters, self._send_and_wait, name, args)

        try:
            try:
                return await publish_and_send()
            except TaskFailed as failed:
                if failed.code != "unknown_key" or not Path(key_path).is_file():
                    raise
                log.info("key %s was missing in Redis; published again", key_id)
                return await publish_and_send()
        except TaskFailed as failed:
            if failed.code == "unknown_key":
                raise KeyError(str(failed)) from None
            if failed.code in ("malformed_ciphertext", "malformed_keys"):
                raise worker.BadInput(str(failed)) from None
            raise RunRefused(failed.status, failed.code, str(failed)) from None
        finally:
            self.in_flight -= 1

    async def run_circuit(
        self, bundle_dir: str, key_id: str, key_path: str, ciphertext: bytes
    ) -> tuple[bytes, float]:
        """Evaluate the model's circuit on a worker, which must hold the same bundle (its
        client spec hash is checked there)."""
        bundle = Path(bundle_dir)
        payload = [
            bundle.name,
            key_id,
            base64.b64encode(ciphertext).decode(),
            bundle_client_spec(bundle),
        ]
        answer = await self._task(key_id, key_path, TASK_RUN, payload)
        return base64.b64decode(answer["result"]), float(answer["seconds"])

    async def check_keys(self, key_id: str, key_path: str) -> None:
        """Have a worker deserialize the keys; keys that did not pass are taken out of the
        shared store again, whatever stopped them."""
        try:
            await self._task(key_id, key_path, TASK_CHECK_KEYS, [key_id])
        except BaseException:
            self._waiters.submit(self.forget_key, key_id)
            raise

    def warm(self, bundle_dirs: list[str]) -> None:
        """Workers load their own circuits; nothing to do in the API."""

    def close(self) -> None:
        self._waiters.shutdown(wait=False, cancel_futures=True)
