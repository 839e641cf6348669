"""The FastAPI application: settings, the services' lifespan, routers, error handlers."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import Depends, FastAPI
from fastapi.middleware.cors import CORSMiddleware
from prometheus_client import CollectorRegistry

from server.allow_list import AllowList
from server.compute import make_compute
from server.compute.clear_workers import ClearWorkers
from server.compute.compilation import CircuitCompilation
from server.compute.fair_share import FairShare
from server.deps import Access, authenticate
from server.errors import ConfigurationError, install_error_handlers
from server.executors import READINESS, run_in
from server.inference import Inference
from server.jobs.callbacks import CallbackSender, signing_key
from server.jobs.queue import JobQueue
from server.jobs.runner import JobPolicy, JobRunner
from server.key_uploads import KeyUploads
from server.metrics import CardCollector, RequestMetrics, StateCollector
from server.models.clear import ClearModel
from server.models.clear_worker import ClearSource, InputBounds
from server.models.registry import FHEModel, ModelRegistry, single_model
from server.readiness import Readiness
from server.routes import callbacks, hf_compat, jobs, keys, models, operations, predict
from server.routes.body import BodyTimeout
from server.settings import ServerSettings
from server.storage.job import JobLimits
from server.storage.stores import open_stores

log = logging.getLogger("fhe_server")

COMPUTE_HEADERS = ["x-compute-time", "x-compute-type"]


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Start the registry, stores, compute backend, services and job runner; stop them after."""
    settings: ServerSettings = app.state.settings
    # The compiling child and the FHE workers start first: they load Concrete's compiler while
    # this process reads its models directory (on two cores, the two overlap).
    compilation = CircuitCompilation(settings.circuit_cache())
    compilation.start()
    compute = make_compute(settings)
    try:  # neither may outlive a start-up that fails
        registry = ModelRegistry.scan(settings.models_dir, settings.policy)
        single = single_model(
            settings.task, settings.model_id, settings.models_dir, settings.policy
        )
        app.state.single_model = single.name if single else None
        if single is not None:
            registry.add(single)
        for model in registry.all():
            status = "ready" if model.ready else f"unloadable: {model.reason}"
            log.warning("model %s (%s): %s", model.name, model.kind, status)
        job_store, key_store, engine = open_stores(settings)
    except BaseException:
        compilation.close()
        compute.close()
        raise
    clear_workers = ClearWorkers(
        settings.clear_workers,
        settings.clear_timeout_seconds,
        InputBounds(
            settings.clear_max_rows, settings.clear_max_cells, settings.clear_max_text_chars
        ),
        settings.clear_max_queue,
        settings.token_max_queue,
        [ClearSource.of(m) for m in registry.all() if isinstance(m, ClearModel) and m.ready],
    )
    compute.follow(key_store)
    fhe_models = [m for m in registry.all() if isinstance(m, FHEModel) and m.ready]
    # The workers load circuits at once (from the cache when a restart finds them there) while
    # the compiling child tries each one for readiness and the listing.
    compute.warm([str(m.path) for m in fhe_models])
    compiling = asyncio.create_task(compilation.run(fhe_models))
    fhe_share = FairShare(
        compute.workers if settings.backend == "embedded" else settings.celery_max_in_flight,
        settings.max_queue,
        settings.token_max_queue,
        "FHE runs",
    )
    inference = Inference(
        registry,
        key_store,
        compute,
        fhe_share,
        clear_workers,
        workers_record_runs=settings.backend == "celery",
    )
    callback_key = signing_key(settings)
    allow = AllowList.parse(settings.callback_allow)
    runner = JobRunner(
        job_store,
        inference.run_job,
        JobPolicy(
            concurrency=settings.job_concurrency or compute.workers,
            ttl_seconds=settings.job_ttl_seconds,
            callback_attempts=settings.callback_attempts,
            callback_backoff_seconds=settings.callback_backoff_seconds,
            lease_seconds=settings.job_lease_seconds,
        ),
        CallbackSender(allow, callback_key, settings.callback_timeout_seconds),
    )
    app.state.registry = registry
    app.state.inference = inference
    app.state.callback_key = callback_key
    app.state.key_uploads = KeyUploads(
        registry,
        key_store,
        compute,
        fhe_share,
        settings.max_key_bytes,
        settings.token_max_key_bytes,
        settings.token_max_keys,
    )
    app.state.job_queue = JobQueue(
        job_store,
        runner,
        allow,
        settings.public_base_url(),
        JobLimits(
            settings.token_max_jobs_in_flight,
            settings.max_queued_jobs,
            settings.token_max_stored_bytes,
        ),
    )
    expected = {m.name: m.expected_run_seconds for m in fhe_models if m.expected_run_seconds}
    app.state.metrics_registry.register(CardCollector(lambda: expected))
    app.state.metrics_registry.register(
        StateCollector(
            job_store.counts_by_status,
            key_store.totals,
            lambda: compute.in_flight.count,
            waiting=lambda: fhe_share.waiting,
            broker_queued=compute.queued,
        )
    )
    app.state.readiness = Readiness(
        {
            "jobs": lambda: run_in(READINESS, job_store.ping),
            "keys": lambda: run_in(READINESS, key_store.ping),
            "compute": compute.ping,
            "clear": clear_workers.ping,
            "circuits": compilation.check,
        },
        explained={"circuits"},
    )
    await runner.start()
    drain_on_signals(runner)
    try:
        yield
    finally:
        compiling.cancel()
        compilation.close()
        await runner.stop()
        compute.close()
        await asyncio.to_thread(clear_workers.close)
        job_store.close()
        if engine is not None:
            engine.dispose()


def drain_on_signals(runner: JobRunner) -> None:
    """On SIGTERM or SIGINT, stop claiming jobs at once, then let uvicorn's handler (installed
    before the lifespan starts) begin its graceful stop: requests in progress may take up to
    FHE_SERVER_GRACEFUL_SHUTDOWN_SECONDS, and no new job starts meanwhile."""
    for signum in (signal.SIGTERM, signal.SIGINT):
        previous = signal.getsignal(signum)
        if not callable(previous):
            continue

        def handler(number: int, frame: object, previous: Any = previous) -> None:
            runner.drain()
            previous(number, frame)

        try:
            signal.signal(signum, handler)
        except ValueError:  # not the main thread (an in-process test client): nothing to chain
            return


def create_app(settings: ServerSettings | None = None) -> FastAPI:
    """Build the app; the registry, stores and worker pool start with its lifespan."""
    settings = settings or ServerSettings()
    placeholders = settings.placeholder_secrets()
    if placeholders:
        raise ConfigurationError(
            f"{', '.join(placeholders)} still hold the example value from deployment/ "
            "('replace-with-...'): set real secrets (see deployment/kubernetes/secret.example.env)"
        )
    app = FastAPI(
        title="fhe-server",
        summary="Predictions over encrypted data with Concrete-ML",
        version="0.1.0",
        lifespan=lifespan,
        dependencies=[Depends(authenticate)],
    )
    app.state.settings = settings
    app.state.metrics_registry = CollectorRegistry()
    app.state.access = Access(settings.tokens, settings.dev_mode)
    app.add_middleware(
        BodyTimeout,
        idle_seconds=settings.body_timeout_seconds,
        total_seconds=settings.body_deadline_seconds,
    )
    app.add_middleware(
        CORSMiddleware,
        allow_origins=settings.cors_allow_origins,
        allow_methods=["*"],
        allow_headers=["*"],
        expose_headers=COMPUTE_HEADERS,
    )
    app.add_middleware(RequestMetrics)
    install_error_handlers(app)
    for module in (operations, hf_compat, models, keys, predict, jobs, callbacks):
        app.include_router(module.router)
    return app
