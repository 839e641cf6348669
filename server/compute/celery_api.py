"""The API side of Celery mode: send FHE work to the workers and wait for it. Without a shared
database the keys go to the workers through Redis, kept in step with the API's own key store;
with one, workers read them from the database and Redis is the broker only (a key passes through
it only to be checked before it is stored)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import redis
from celery import Celery
from celery.exceptions import TimeoutError as CeleryTimeout
from kombu.exceptions import OperationalError
from redis.backoff import NoBackoff
from redis.retry import Retry

from server import errors
from server.compute import BrokerLost, Busy, InFlight, RunRefused, TimedOut, circuits
from server.compute.celery_app import (
    KEY_PREFIX,
    REDIS_TIMEOUT,
    SENT_PREFIX,
    TASK_CHECK_KEYS,
    TASK_RUN,
    bundle_client_spec,
)

log = logging.getLogger("fhe_server.celery")

POLL_SECONDS = 1.0
"""How often a waiting run checks that Redis still holds its task."""
UNREACHABLE = (redis.ConnectionError, redis.TimeoutError, OperationalError)
"""What a call to a Redis that is down or restarting raises (directly, or through kombu)."""


@contextlib.contextmanager
def broker_errors() -> Iterator[None]:
    """Turn a full or unreachable Redis into Busy (503, a job stays queued), never a failure."""
    try:
        yield
    except redis.exceptions.OutOfMemoryError:
        raise Busy("the broker (Redis) is full; try again shortly") from None
    except redis.ResponseError as error:
        if not str(error).startswith("OOM"):
            raise
        raise Busy("the broker (Redis) is full; try again shortly") from None
    except UNREACHABLE as error:
        raise Busy(f"the broker (Redis) does not answer ({type(error).__name__})") from None


def failed_on_the_broker(result: Any) -> bool:
    """Whether the task itself ended failed (its worker raised a Redis error, which `get`
    raises again at once), rather than Redis being out of reach of this process now."""
    with contextlib.suppress(*UNREACHABLE, RuntimeError):
        return result.state == "FAILURE"
    return False


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
        self,
        app: Celery,
        redis_url: str,
        capacity: int,
        timeout: float,
        key_ttl: float,
        grace: float = 60.0,
        high_water: float = 0.9,
    ) -> None:
        self.app = app
        self.redis = redis.Redis.from_url(
            redis_url, socket_timeout=REDIS_TIMEOUT, socket_connect_timeout=REDIS_TIMEOUT
        )
        self.timeout = timeout
        self.key_ttl = key_ttl
        # Whether the key store is shared with the workers (they then read keys from it, not
        # from Redis): the store's answer, set when the API's store is opened (`follow`).
        self.shared_keys = False
        self.grace = grace
        self.high_water = high_water
        # Scrapes read the queue's length with no retry and a short timeout: a Redis that stops
        # answering must not hold the threads that serve /metrics for long.
        self.probe = redis.Redis.from_url(
            redis_url, socket_timeout=1, socket_connect_timeout=1, retry=Retry(NoBackoff(), 0)
        )
        self.in_flight = InFlight(capacity)
        self.workers = capacity
        self._waiters = ThreadPoolExecutor(max_workers=capacity, thread_name_prefix="celery-wait")
        # Readiness pings and key deletions never wait behind the runs' threads (which all may
        # be waiting for answers when the replica is busy).
        self._control = ThreadPoolExecutor(max_workers=2, thread_name_prefix="celery-control")

    def follow(self, keystore: Any) -> None:
        """Delete a key from Redis as soon as the API's store evicts it (in a waiter thread,
        so the event loop never waits on Redis), and learn from the store whether workers read
        keys from it (`shares_state`)."""
        self.shared_keys = keystore.shares_state
        keystore.evicted.append(lambda key_id: self._control.submit(self.forget_key, key_id))

    def forget_key(self, key_id: str) -> None:
        """Take a key out of the shared store (workers drop their copies on next use)."""
        try:
            self.redis.delete(KEY_PREFIX + key_id)
        except Exception:  # Redis down: the TTL removes it later
            log.warning("could not delete key %s from Redis", key_id, exc_info=True)

    def _publish_key(self, key_id: str, path: Path) -> None:
        """Put a key into the shared store unless it is there, and renew its TTL."""
        name = KEY_PREFIX + key_id
        with broker_errors():
            if self.redis.expire(name, int(self.key_ttl)):
                return
            try:
                data = path.read_bytes()
            except FileNotFoundError:
                raise circuits.KeyMissing(key_id) from None
            self._check_room(len(data))
            self.redis.set(name, data, ex=int(self.key_ttl))

    def _check_room(self, adding: int = 0) -> None:
        """Busy when Redis would pass the high-water mark of its maxmemory with `adding` more
        bytes: what is left is for the answers of the runs already sent (Redis refuses writes
        when full, it never evicts a task)."""
        memory = self.redis.info("memory")
        limit, used = int(memory.get("maxmemory", 0)), int(memory.get("used_memory", 0))
        if limit and used + adding >= limit * self.high_water:
            raise Busy(
                f"the broker (Redis) holds {used >> 20} MiB of its {limit >> 20} MiB; try again "
                "shortly"
            )

    def _send_and_wait(self, name: str, args: list[Any]) -> dict[str, Any]:
        task_id = str(uuid.uuid4())
        marker = SENT_PREFIX + task_id
        with broker_errors():
            self._check_room()
            self.redis.set(marker, b"1", ex=int(self.timeout + self.grace) + 60)
            result = self.app.send_task(name, args=args, task_id=task_id)
        try:
            answer = self._wait(result, marker)
        finally:
            # The answer is the API's now (a job's result goes to the job store): Redis keeps
            # none; one written after a time-out expires with `result_expires`.
            with contextlib.suppress(*UNREACHABLE):
                result.forget()
                self.redis.delete(marker)
        error = answer.get("error")
        if error:
            raise TaskFailed(error["status"], error["code"], error["message"])
        return answer

    def _wait(self, result: Any, marker: str) -> dict[str, Any]:
        """The task's answer; BrokerLost once Redis no longer holds the task (flushed or
        restarted empty) or has not answered for `grace` seconds; TimedOut past the timeout."""
        deadline = time.monotonic() + self.timeout
        unreachable_since: float | None = None
        while True:
            asked = time.monotonic()
            try:
                return result.get(timeout=POLL_SECONDS)
            except CeleryTimeout:
                pass
            except (*UNREACHABLE, RuntimeError) as error:
                # Celery's result consumer gives up reconnecting with a bare RuntimeError whose
                # cause is the connection error: an unreachable Redis like the others.
                if isinstance(error, RuntimeError) and not isinstance(error.__cause__, UNREACHABLE):
                    raise
                if failed_on_the_broker(result):
                    raise BrokerLost(
                        "the worker lost the broker (Redis) during this run; it is sent again"
                    ) from None
                time.sleep(max(0.0, POLL_SECONDS - (time.monotonic() - asked)))
            now = time.monotonic()
            if now >= deadline:
                raise TimedOut(
                    f"no FHE worker answered within {self.timeout:g} s; the run may still "
                    "finish, try again later"
                )
            try:
                sent = self.redis.exists(marker)
            except UNREACHABLE:
                unreachable_since = unreachable_since or now
                if now - unreachable_since >= self.grace:
                    raise BrokerLost(
                        f"the broker (Redis) has not answered for {self.grace:g} s; the run "
                        "is sent again"
                    ) from None
                continue
            unreachable_since = None
            if not sent:
                raise BrokerLost(
                    "the broker (Redis) lost this run (flushed or restarted without its data); "
                    "it is sent again"
                )

    async def _task(self, key_id: str, key_path: str, name: str, args: list[Any]) -> Any:
        """Publish the key, send one task and wait for it; Busy past the in-flight bound.

        A key the worker could not find is published again and the task sent once more. Worker
        errors come back as the local pool's: KeyMissing for an unknown key, BadInput for a
        malformed input, RunRefused for the rest.
        """
        loop = asyncio.get_running_loop()

        async def publish_and_send() -> dict[str, Any]:
            if key_path:  # a file of the API's own store, or an upload being checked
                await loop.run_in_executor(self._waiters, self._publish_key, key_id, Path(key_path))
            return await loop.run_in_executor(self._waiters, self._send_and_wait, name, args)

        with self.in_flight.slot():
            try:
                try:
                    return await publish_and_send()
                except TaskFailed as failed:
                    if (
                        failed.code != errors.UnknownKey.code
                        or not key_path
                        or not Path(key_path).is_file()
                    ):
                        raise
                    log.info("key %s was missing in Redis; published again", key_id)
                    return await publish_and_send()
            except TaskFailed as failed:
                if failed.code == errors.UnknownKey.code:
                    raise circuits.KeyMissing(str(failed)) from None
                if failed.code == errors.Busy.code:  # the worker found Redis full or out of reach
                    raise Busy(str(failed)) from None
                if failed.code in (errors.MalformedCiphertext.code, errors.MalformedKeys.code):
                    raise circuits.BadInput(str(failed)) from None
                if failed.code == errors.StateUnavailable.code:
                    raise circuits.StoreUnavailable(str(failed)) from None
                raise RunRefused(failed.code, str(failed)) from None

    async def run_circuit(
        self, bundle_dir: str, key_id: str, key_path: str, ciphertext: bytes
    ) -> tuple[bytes, float, bool | None]:
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
        cached = answer.get("key_cached")
        return (
            base64.b64decode(answer["result"]),
            float(answer["seconds"]),
            cached if isinstance(cached, bool) else None,
        )

    async def check_keys(self, key_id: str, key_path: str) -> None:
        """Have a worker deserialize the keys; keys that did not pass are taken out of Redis
        again, whatever stopped them (and, with a shared database, all keys are: workers read
        them from the database once stored, so Redis held this copy only for the check)."""
        try:
            await self._task(key_id, key_path, TASK_CHECK_KEYS, [key_id])
        except circuits.KeyMissing:  # this API published the keys: the broker lost them
            self._control.submit(self.forget_key, key_id)
            raise BrokerLost(
                f"the broker lost evaluation key {key_id} before a worker checked it"
            ) from None
        except BaseException:
            self._control.submit(self.forget_key, key_id)
            raise
        if self.shared_keys:
            self._control.submit(self.forget_key, key_id)

    async def ping(self) -> str | None:
        """The broker answers a PING (in a waiter thread, bounded by the Redis timeout)."""
        loop = asyncio.get_running_loop()
        answered = await loop.run_in_executor(self._control, self.redis.ping)
        return None if answered else "the broker did not answer PING"

    def queued(self) -> int:
        """Tasks in the broker's queue that no worker has taken yet (each worker takes one at a
        time, so this is runs sent and not started), at every priority level."""
        queue = self.app.conf.task_default_queue
        names = [queue, *(f"{queue}\x06\x16{level}" for level in (3, 6, 9))]
        pipe = self.probe.pipeline(transaction=False)
        for name in names:
            pipe.llen(name)
        return sum(int(length) for length in pipe.execute())

    def warm(self, bundle_dirs: list[str]) -> None:
        """Workers load their own circuits; nothing to do in the API."""

    def close(self) -> None:
        self._waiters.shutdown(wait=False, cancel_futures=True)
        self._control.shutdown(wait=False, cancel_futures=True)
