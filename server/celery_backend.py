"""Scale-out on Celery: FHE runs on `fhe-server worker` processes on any number of machines.

Redis is the broker, the result store and the shared key store: the API writes each uploaded
evaluation key to Redis once, and a worker fetches a key by id the first time it needs it and
keeps it on its own disk. Tasks are acknowledged late and rejected when their worker is lost,
with a prefetch of one, so the task of a killed worker is delivered again to another.

`CeleryExecutor` has the same `call` as the local `FHEExecutor`, so the predict route and the
job runner do not know which one runs their circuits.
"""

from __future__ import annotations

import asyncio
import base64
import os
import socket
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from celery import Celery

from server import worker
from server.executor import Busy

KEY_PREFIX = "fhe:key:"
TASK_RUN = "fhe.run_circuit"
TASK_CHECK_KEYS = "fhe.check_keys"


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
        worker_hijack_root_logger=False,
    )
    return app


class WorkerState:
    """What a worker process knows: where bundles are, where it caches keys, and Redis."""

    def __init__(self, models_dir: Path, key_dir: Path, redis_url: str) -> None:
        import redis

        self.models_dir = models_dir
        self.key_dir = key_dir
        self.key_dir.mkdir(parents=True, exist_ok=True)
        self.redis = redis.Redis.from_url(redis_url)

    def key_path(self, key_id: str) -> Path:
        """The key's file in this worker's cache, fetched from Redis the first time."""
        path = self.key_dir / f"{key_id}.keys"
        if path.is_file():
            return path
        data = self.redis.get(KEY_PREFIX + key_id)
        if data is None:
            raise KeyError(key_id)
        partial = path.with_suffix(f".{os.getpid()}.partial")
        partial.write_bytes(data)
        partial.replace(path)
        return path


def _error(status: int, code: str, message: str) -> dict[str, Any]:
    return {"error": {"status": status, "code": code, "message": message}}


def register_tasks(app: Celery, state_of: Any) -> None:
    """Declare the worker tasks; `state_of()` gives the worker's WorkerState."""

    @app.task(name=TASK_RUN)
    def run_circuit(model: str, key_id: str, ciphertext_b64: str) -> dict[str, Any]:
        state = state_of()
        bundle = state.models_dir / model
        if not (bundle / "server.zip").is_file():
            return _error(404, "unknown_model", f"worker {socket.gethostname()} has no {model!r}")
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

    @app.task(name=TASK_CHECK_KEYS)
    def check_keys(key_id: str) -> dict[str, Any]:
        state = state_of()
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

    def __init__(self, app: Celery, redis_url: str, capacity: int, timeout: float) -> None:
        import redis

        self.app = app
        self.redis = redis.Redis.from_url(redis_url)
        self.capacity = capacity
        self.timeout = timeout
        self.in_flight = 0
        self.workers = capacity
        self._published: set[str] = set()
        self._waiters = ThreadPoolExecutor(max_workers=capacity, thread_name_prefix="celery-wait")

    def _publish_key(self, key_id: str, path: Path) -> None:
        """Put a key into the shared store once (keys are content-addressed); remembered here,
        so a run costs no Redis round trip for a key this API has already published."""
        if key_id in self._published:
            return
        if not self.redis.exists(KEY_PREFIX + key_id):
            self.redis.set(KEY_PREFIX + key_id, path.read_bytes())
        self._published.add(key_id)

    def _send_and_wait(self, name: str, args: list[Any]) -> dict[str, Any]:
        answer = self.app.send_task(name, args=args).get(timeout=self.timeout)
        error = answer.get("error")
        if error:
            raise TaskFailed(error["status"], error["code"], error["message"])
        return answer

    async def _task(self, key_id: str, key_path: str, name: str, args: list[Any]) -> Any:
        """Publish the key, send one task and wait for it; Busy past the in-flight bound.

        Worker errors come back as the local pool's: KeyError for an unknown key, BadInput for
        the rest.
        """
        if self.in_flight >= self.capacity:
            raise Busy(f"{self.in_flight} FHE requests are running or queued; try again shortly")
        self.in_flight += 1
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._waiters, self._publish_key, key_id, Path(key_path))
            return await loop.run_in_executor(self._waiters, self._send_and_wait, name, args)
        except TaskFailed as failed:
            if failed.code == "unknown_key":
                raise KeyError(str(failed)) from None
            raise worker.BadInput(str(failed)) from None
        finally:
            self.in_flight -= 1

    async def run_circuit(
        self, bundle_dir: str, key_id: str, key_path: str, ciphertext: bytes
    ) -> tuple[bytes, float]:
        """Evaluate the model's circuit on a worker (which has the model under the same name)."""
        payload = [Path(bundle_dir).name, key_id, base64.b64encode(ciphertext).decode()]
        answer = await self._task(key_id, key_path, TASK_RUN, payload)
        return base64.b64decode(answer["result"]), float(answer["seconds"])

    async def check_keys(self, key_id: str, key_path: str) -> None:
        """Have a worker deserialize the keys; malformed ones are taken out of the shared store."""
        try:
            await self._task(key_id, key_path, TASK_CHECK_KEYS, [key_id])
        except worker.BadInput:
            self.redis.delete(KEY_PREFIX + key_id)
            self._published.discard(key_id)
            raise

    def warm(self, bundle_dirs: list[str]) -> None:
        """Workers load their own circuits; nothing to do in the API."""

    def close(self) -> None:
        self._waiters.shutdown(wait=False, cancel_futures=True)
