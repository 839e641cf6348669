"""`fhe-server`: serve the REST API over the models in a directory."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Optional

import typer

from server.settings import ServerSettings

app = typer.Typer(add_completion=False, help="Encrypted inference server (Concrete-ML).")


@app.callback()
def main() -> None:
    """Encrypted inference server: FHE models over ciphertext."""


@app.command()
def serve(
    models: Annotated[Optional[Path], typer.Option(help="model bundles directory")] = None,
    host: Annotated[Optional[str], typer.Option(help="interface [127.0.0.1]")] = None,
    port: Annotated[Optional[int], typer.Option(help="TCP port [8000]")] = None,
    data_dir: Annotated[Optional[Path], typer.Option(help="where keys and jobs are kept")] = None,
    workers: Annotated[
        Optional[int], typer.Option(help="FHE runs at once (worker processes) [cores / 2]")
    ] = None,
    threads: Annotated[
        Optional[int], typer.Option(help="threads per FHE run [cores / runs]")
    ] = None,
    dev: Annotated[
        bool,
        typer.Option("--dev", help="development mode: no API tokens, every caller trusted"),
    ] = False,
    backend: Annotated[
        Optional[str], typer.Option(help="embedded (own worker pool) or celery [embedded]")
    ] = None,
    redis: Annotated[
        Optional[str],
        typer.Option(help="Redis URL for --backend celery [redis://127.0.0.1:6379/0]"),
    ] = None,
) -> None:
    """Start the API. Unset flags come from FHE_SERVER_* variables, then the defaults."""
    import uvicorn

    from server.app import create_app
    from server.errors import ConfigurationError

    given = {"models_dir": models, "host": host, "port": port, "data_dir": data_dir}
    given["workers"], given["fhe_threads"] = workers, threads
    given["dev_mode"] = dev or None
    given["backend"], given["redis_url"] = backend, redis
    settings = ServerSettings(**{key: value for key, value in given.items() if value is not None})
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    runs = (
        f"FHE on Celery workers via {settings.redis_shown()}"
        if settings.backend == "celery"
        else f"{settings.workers} FHE run(s) at once x {settings.threads_per_run()} thread(s)"
    )
    typer.echo(
        f"fhe-server: models from {settings.models_dir}, keys in {settings.data_dir}, "
        f"{runs}, http://{settings.host}:{settings.port}",
        err=True,
    )
    try:
        app = create_app(settings)
    except ConfigurationError as error:
        typer.echo(f"fhe-server: {error}", err=True)
        raise typer.Exit(2) from None
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_level="info",
        timeout_graceful_shutdown=settings.graceful_shutdown_seconds,
    )


@app.command()
def compile(
    models: Annotated[Optional[Path], typer.Option(help="model bundles directory")] = None,
    cache: Annotated[
        Optional[Path], typer.Option(help="compiled circuit cache [DATA_DIR/circuits]")
    ] = None,
    data_dir: Annotated[Optional[Path], typer.Option(help="where keys and jobs are kept")] = None,
) -> None:
    """Compile every FHE bundle's circuit for this host into the cache (as `serve` does at
    start-up), so that a server or worker sharing the cache starts without compiling. Exits 1
    when a circuit cannot be compiled, with the reason."""
    import time

    from server.compute import circuits
    from server.models.registry import FHEModel, ModelRegistry

    given = {"models_dir": models, "circuit_cache_dir": cache, "data_dir": data_dir}
    settings = ServerSettings(**{key: value for key, value in given.items() if value is not None})
    target = settings.circuit_cache()
    failed = 0
    for model in ModelRegistry.scan(settings.models_dir).all():
        if not isinstance(model, FHEModel):
            continue
        started = time.perf_counter()
        reason = model.reason or model.circuit_error
        if reason is None:
            reason = circuits.compile_circuit(str(model.path), str(target))
        seconds = time.perf_counter() - started
        if reason is None:
            typer.echo(f"{model.name}: ready in {target} ({seconds:.2f} s)")
        else:
            failed += 1
            typer.echo(f"{model.name}: cannot load: {reason}", err=True)
    if failed:
        host = circuits.host_problem(str(target))
        if host:
            typer.echo(f"fhe-server: {host}", err=True)
        raise typer.Exit(1)


@app.command()
def worker(
    redis: Annotated[
        Optional[str], typer.Option(help="Redis URL [redis://127.0.0.1:6379/0]")
    ] = None,
    models: Annotated[Optional[Path], typer.Option(help="model bundles directory")] = None,
    data_dir: Annotated[Optional[Path], typer.Option(help="where fetched keys are cached")] = None,
    name: Annotated[Optional[str], typer.Option(help="worker name [fhe-PID@HOST]")] = None,
    metrics_port: Annotated[
        Optional[int],
        typer.Option(
            help="serve Prometheus /metrics on this port [FHE_SERVER_WORKER_METRICS_PORT]"
        ),
    ] = None,
) -> None:
    """Run FHE work for `fhe-server serve --backend celery`, one circuit at a time.

    Start one per machine (Concrete uses every core for one run); stop it with SIGTERM. Circuits
    run in one child process: a run that crashes it costs only that child, which Celery replaces.
    """
    import os
    import shutil
    import socket
    import threading

    given = {"redis_url": redis, "models_dir": models, "data_dir": data_dir}
    settings = ServerSettings(**{key: value for key, value in given.items() if value is not None})
    metrics_port = metrics_port or settings.worker_metrics_port
    if metrics_port:
        # The run's child process records metrics too: multiprocess mode, set up before
        # prometheus_client is first imported in this process.
        metrics_dir = settings.data_dir / f"worker-metrics-{os.getpid()}"
        shutil.rmtree(metrics_dir, ignore_errors=True)
        metrics_dir.mkdir(parents=True)
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
        from prometheus_client import CollectorRegistry, start_http_server
        from prometheus_client.multiprocess import MultiProcessCollector

        registry = CollectorRegistry()
        MultiProcessCollector(registry)
        start_http_server(metrics_port, addr=settings.host, registry=registry)

    from celery.signals import worker_process_init

    from server.compute import circuits
    from server.compute.celery_app import make_celery
    from server.compute.celery_worker import WorkerState, register_tasks
    from server.cpu_quota import available_cpus

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    celery = make_celery(
        settings.redis_url, settings.celery_visibility_timeout, settings.celery_task_timeout
    )
    state = WorkerState(
        settings.models_dir,
        settings.data_dir / "worker-keys",
        settings.redis_url,
        settings.keystore_max_bytes,
        settings.database(),
    )
    register_tasks(celery, lambda: state, settings.job_ttl_seconds)

    # The CPUs this process may use (its cgroup quota and affinity), not the node's cores.
    threads = settings.fhe_threads or available_cpus()

    @worker_process_init.connect
    def load_concrete(**_: object) -> None:
        """Import Concrete in the child only: its runtime does not survive a fork. The one run
        at a time may use every core unless FHE_SERVER_FHE_THREADS says otherwise. Circuits are
        loaded (compiled into the cache first if it lacks them) in the background, so the child
        starts within Celery's start-up bound."""
        circuits.prepare(settings.key_cache_entries, threads, cache_dir=settings.circuit_cache())
        bundles = [str(path.parent) for path in sorted(settings.models_dir.glob("*/server.zip"))]
        threading.Thread(target=circuits.warm, args=(bundles,), daemon=True).start()

    hostname = name or f"fhe-{os.getpid()}@{socket.gethostname()}"
    typer.echo(
        f"fhe-server worker {hostname}: models from {settings.models_dir}, "
        f"{settings.redis_shown()}, 1 FHE run at once x {threads} thread(s)",
        err=True,
    )
    celery.worker_main(
        ["worker", "--pool", "prefork", "--concurrency", "1", "--loglevel", "INFO", "-n", hostname]
    )


if __name__ == "__main__":
    app()
