"""Scale-out on Celery: FHE runs on `fhe-server worker` processes on any number of machines.

Redis is the broker, the result store and the shared key store. The API's key store is the one
source of truth: it publishes a key to Redis (with a TTL) when a run needs it, deletes it from
Redis when it evicts it, and publishes it again whenever a worker reports it missing. A worker
fetches a key by id the first time it needs it and keeps it on its own disk, bounded in bytes with
LRU eviction, and drops its copy as soon as Redis no longer has the key.

Redis runs with `maxmemory` and the `noeviction` policy, so it never drops a queued task to make
room; the API stops sending runs past a high-water mark of it (503 busy, jobs stay queued). A run
that Redis loses (a flush, a restart without its data, an outage past the grace) is run again:
a job goes back to the queue, a synchronous request gets 503 busy.

Tasks are acknowledged late and rejected when their worker is lost, with a prefetch of one, so the
task of a killed worker is delivered again to another. Each delivery is counted in Redis: a task
whose run has killed two worker processes is dead-lettered (kept in a Redis list for the
operator) and fails with a clear error instead of killing every worker that takes it. Circuits run
in a prefork child process, so a run that crashes costs that child, and Celery starts another.

`CeleryExecutor` has the same `call` as the local `FHEExecutor`, so the predict route and the
job runner do not know which one runs their circuits.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

from celery import Celery

from fhe.contract.bundle import client_spec_hash

KEY_PREFIX = "fhe:key:"
DELIVERIES_PREFIX = "fhe:deliveries:"
DEAD_LETTER = "fhe:dead-letter"
SENT_PREFIX = "fhe:sent:"
"""A marker the API sets for each task it sends and deletes once answered: gone while the API
still waits means Redis was flushed or restarted empty, and the run was lost with it."""
TASK_RUN = "fhe.run_circuit"
TASK_CHECK_KEYS = "fhe.check_keys"
REDIS_TIMEOUT = 10.0
"""Seconds before a Redis call that gets no answer fails, rather than hanging its caller."""
MAX_DELIVERIES = 2
"""Deliveries of one task before it is dead-lettered: the first run and one retry."""


def make_celery(redis_url: str, visibility_timeout: float, result_ttl: float) -> Celery:
    """The Celery application both the API and the workers use. The API forgets each result
    once it has it, so `result_ttl` only bounds results nobody waited for (pass the API's task
    timeout: past it no one will)."""
    app = Celery("fhe_server", broker=redis_url, backend=redis_url)
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        result_expires=int(result_ttl),
        # A worker that finishes while Redis is down keeps trying to store its answer (about
        # five minutes) rather than dropping it: the API is still waiting for it.
        result_backend_always_retry=True,
        result_backend_max_retries=40,
        result_backend_max_sleep_between_retries_ms=10_000,
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


@cache
def bundle_client_spec(bundle: Path) -> str:
    """The sha256 of a bundle's client.zip, computed once per worker process."""
    return client_spec_hash(bundle)
