"""What an operator watches: Prometheus metrics of the API and the FHE workers.

Counters and histograms live in prometheus_client's default registry and are updated where things
happen (a request, a circuit run, a key check). Gauges of shared state (jobs by state, stored
keys) are read from the stores when Prometheus scrapes, so every replica reports the same figures
from the same database. A process whose children record metrics too (a Celery worker's prefork
children) runs in prometheus_client's multiprocess mode: `PROMETHEUS_MULTIPROC_DIR` must be set
before prometheus_client is first imported there.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

disable_created_metrics()

RUN_BUCKETS = (
    *(0.005, 0.01, 0.02, 0.03, 0.05, 0.1, 0.2, 0.3, 0.5, 1, 2, 3, 5),
    *(10, 20, 30, 50, 100, 200, 300, 600),
)
"""Seconds of one FHE circuit run, from a bootstrap-free linear model to a 10-minute circuit.
Neighbouring bounds are at most 2x apart, so a p95 read from the buckets is within 2x of the
truth: FheRunSlow (p95 over 3x the model card's) stays silent at 1.5x and fires at 10x."""
REQUEST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
WAIT_BUCKETS = (0.1, 0.5, 1, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200)

CONTENT_TYPE = CONTENT_TYPE_LATEST

RUN_SECONDS = Histogram(
    "fhe_run_seconds",
    "Seconds of one FHE circuit run, by model, recorded once where it ran: by the API's own "
    "pool (backend embedded) or by the Celery worker that ran it",
    ["model"],
    buckets=RUN_BUCKETS,
)
RUN_TURNAROUND = Histogram(
    "fhe_run_turnaround_seconds",
    "Seconds from the API asking for an FHE run to its answer (waiting for a turn and a worker "
    "included), by model, recorded by the API",
    ["model"],
    buckets=REQUEST_BUCKETS,
)
REQUESTS = Counter("fhe_requests", "HTTP requests answered, by route and status", ["route", "code"])
REQUEST_SECONDS = Histogram(
    "fhe_request_seconds",
    "Seconds to answer an HTTP request, by route",
    ["route"],
    buckets=REQUEST_BUCKETS,
)
QUEUE_WAIT = Histogram(
    "fhe_queue_wait_seconds",
    "Seconds a job waited before its first run started (an FHE job: until its turn for a "
    "worker, not its claim)",
    buckets=WAIT_BUCKETS,
)
KEY_CACHE_HITS = Counter(
    "fhe_key_cache_hits", "FHE runs whose evaluation keys were already deserialized in the worker"
)
KEY_CACHE_MISSES = Counter(
    "fhe_key_cache_misses", "FHE runs that had to read and deserialize their evaluation keys"
)
WORKER_CRASHES = Counter(
    "fhe_worker_crashes", "FHE worker processes that died while running a request"
)
DEAD_LETTERS = Counter("fhe_dead_letters", "Runs set aside after they stopped FHE workers twice")
KEY_CHECKS = Counter(
    "fhe_key_checks", "Evaluation keys checked against a model's key set, by result", ["result"]
)
CLEAR_SECONDS = Histogram(
    "fhe_clear_predict_seconds",
    "Seconds of one clear-model prediction, by model",
    ["model"],
    buckets=REQUEST_BUCKETS,
)

JOB_STATES = ("queued", "running", "done", "failed")


def record_run(model: str, seconds: float, key_cached: bool | None) -> None:
    """Count one finished circuit run and whether its keys were already in the worker's cache."""
    RUN_SECONDS.labels(model=model).observe(seconds)
    if key_cached is True:
        KEY_CACHE_HITS.inc()
    elif key_cached is False:
        KEY_CACHE_MISSES.inc()


class CardCollector(Collector):
    """`fhe_model_expected_run_seconds{model}`: the p90 seconds of one run that each FHE model's
    card states (measured when the bundle was built), which FheRunSlow compares runs with.
    Models whose card states none are left out (the alert falls back to a fixed bound)."""

    def __init__(self, expected: Callable[[], dict[str, float]]) -> None:
        self.expected = expected

    def collect(self) -> Iterable[Metric]:
        """The gauge, one sample per model with a measured run time."""
        gauge = GaugeMetricFamily(
            "fhe_model_expected_run_seconds",
            "Seconds of one FHE run the model's card states (p90 measured at build time)",
            labels=["model"],
        )
        for model, seconds in sorted(self.expected().items()):
            gauge.add_metric([model], seconds)
        yield gauge


class StateCollector(Collector):
    """Gauges read from the shared stores at scrape time: jobs by state, keys and their bytes,
    FHE runs in flight in this process, and the backlog: work waiting for a worker."""

    def __init__(
        self,
        job_counts: Callable[[], dict[str, int]],
        key_totals: Callable[[], tuple[int, int, int]],
        in_flight: Callable[[], int],
        waiting: Callable[[], int] = lambda: 0,
        broker_queued: Callable[[], int] = lambda: 0,
    ) -> None:
        self.job_counts = job_counts
        self.key_totals = key_totals
        self.in_flight = in_flight
        self.waiting = waiting
        self.broker_queued = broker_queued

    def collect(self) -> Iterable[Metric]:
        """The gauges; while a store does not answer, its gauges are left out and
        `fhe_state_up` is 0 (a scrape never fails with the database)."""
        backlog = GaugeMetricFamily(
            "fhe_backlog",
            "Work waiting for an FHE worker, by part: jobs_queued (shared: unclaimed jobs), "
            "broker (shared: runs sent to Celery that no worker has started), turns (this "
            "replica: synchronous runs and claimed jobs waiting for their turn)",
            labels=["part"],
        )
        try:
            counts = self.job_counts()
            keys, stored, bound = self.key_totals()
        except Exception:  # the stores' outage shows as fhe_state_up 0, not as a failed scrape
            yield GaugeMetricFamily(
                "fhe_state_up", "Whether the job and key stores answered this scrape", value=0
            )
        else:
            yield from self._state(counts, keys, stored, bound)
            backlog.add_metric(["jobs_queued"], counts.get("queued", 0))
        with contextlib.suppress(Exception):  # a broker that does not answer: part left out
            backlog.add_metric(["broker"], self.broker_queued())
        backlog.add_metric(["turns"], self.waiting())
        yield backlog
        yield GaugeMetricFamily(
            "fhe_runs_in_flight",
            "FHE runs this replica has sent and not yet answered",
            value=self.in_flight(),
        )

    @staticmethod
    def _state(counts: dict[str, int], keys: int, stored: int, bound: int) -> Iterable[Metric]:
        yield GaugeMetricFamily(
            "fhe_state_up", "Whether the job and key stores answered this scrape", value=1
        )
        jobs = GaugeMetricFamily(
            "fhe_jobs", "Jobs by state (shared by every replica)", labels=["state"]
        )
        for state in JOB_STATES:
            jobs.add_metric([state], counts.get(state, 0))
        yield jobs
        yield GaugeMetricFamily("fhe_keys", "Evaluation keys stored", value=keys)
        yield GaugeMetricFamily(
            "fhe_key_store_bytes", "Bytes of evaluation keys stored", value=stored
        )
        yield GaugeMetricFamily(
            "fhe_key_store_max_bytes", "The key store's bound before LRU eviction", value=bound
        )


def exposition(*extra: CollectorRegistry) -> bytes:
    """The Prometheus text of this process (or, in multiprocess mode, of all its processes),
    followed by the registries given."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        text = generate_latest(registry)
    else:
        text = generate_latest(REGISTRY)
    return text + b"".join(generate_latest(registry) for registry in extra)


def route_of(scope: dict[str, Any]) -> str:
    """The route template that answered (`/v1/jobs/{job_id}`), never the raw path, so label
    values stay bounded whatever paths callers send."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else "unmatched"


class RequestMetrics:
    """ASGI middleware: counts every HTTP answer by route template and status, and times it."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = {"code": 500}

        async def sending(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            route = route_of(scope)
            REQUESTS.labels(route=route, code=str(status["code"])).inc()
            REQUEST_SECONDS.labels(route=route).observe(time.perf_counter() - started)
