"""The FastAPI application: model listing and cards, key upload, encrypted prediction, jobs."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Header, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from fhe.bundle import CLIENT_ZIP
from server import worker
from server.access import Access, authenticate, owner_of
from server.body import BodyTimeout, check_declared_length
from server.callbacks import CallbackSender, callbacks_router
from server.clear_model import ClearModel
from server.clear_routes import clear_router, native_answer, single_model_from_env
from server.errors import APIError, install_error_handlers
from server.executor import Busy, FHEExecutor, RunRefused, TimedOut, WorkerCrashed
from server.fhe_call import (
    evaluate,
    find_model,
    fitting_specs,
    key_mismatch,
    keyset_differences,
    read_fhe_request,
    ready_fhe,
)
from server.job_routes import execute_job, jobs_router
from server.job_runner import JobPolicy, JobRunner
from server.jobs import JobStore
from server.keystore import (
    KeyStore,
    KeyTooLarge,
    QuotaExceeded,
    StoredKey,
    StoreFull,
    Upload,
)
from server.registry import FHEModel, ModelRegistry
from server.settings import ServerSettings

log = logging.getLogger("fhe_server")


def fhe_executor(settings: ServerSettings) -> Any:
    """This server's worker pool, or (backend celery) the Celery workers behind Redis."""
    if settings.backend == "celery":
        from server.celery_backend import CeleryExecutor, make_celery

        celery = make_celery(
            settings.redis_url, settings.celery_visibility_timeout, settings.job_ttl_seconds
        )
        return CeleryExecutor(
            celery,
            settings.redis_url,
            settings.celery_max_in_flight,
            settings.celery_task_timeout,
            settings.celery_key_ttl_seconds,
        )
    return FHEExecutor(settings.workers, settings.max_queue, settings.key_cache_entries)


def create_app(settings: ServerSettings | None = None) -> FastAPI:
    """Build the app; the registry, key store and worker pool start with its lifespan."""
    settings = settings or ServerSettings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.settings = settings
        app.state.registry = ModelRegistry.scan(settings.models_dir, settings.policy)
        single = single_model_from_env(settings)
        app.state.single_model = single.name if single else None
        if single is not None:
            app.state.registry.add(single)
        app.state.jobs = JobStore(settings.data_dir / "jobs", settings.job_max_attempts)
        app.state.keystore = KeyStore(
            settings.data_dir / "keys",
            settings.keystore_max_bytes,
            pinned_by_jobs=app.state.jobs.key_ids_in_flight,
        )
        app.state.executor = fhe_executor(settings)
        app.state.executor.follow(app.state.keystore)
        for model in app.state.registry.all():
            status = "ready" if model.ready else f"unloadable: {model.reason}"
            log.warning("model %s (%s): %s", model.name, model.kind, status)
        app.state.executor.warm([str(m.path) for m in app.state.registry.all() if m.ready])
        app.state.job_runner = JobRunner(
            app.state.jobs,
            lambda job, payload: execute_job(app.state, job, payload),
            JobPolicy(
                concurrency=settings.job_concurrency or app.state.executor.workers,
                ttl_seconds=settings.job_ttl_seconds,
                callback_attempts=settings.callback_attempts,
                callback_backoff_seconds=settings.callback_backoff_seconds,
            ),
            CallbackSender.from_settings(settings),
        )
        await app.state.job_runner.start()
        try:
            yield
        finally:
            await app.state.job_runner.stop()
            app.state.executor.close()
            app.state.jobs.close()

    app = FastAPI(
        title="fhe-server",
        summary="Predictions over encrypted data with Concrete-ML",
        version="0.1.0",
        lifespan=lifespan,
        dependencies=[Depends(authenticate)],
    )
    app.state.access = Access(settings.tokens, settings.dev_mode)
    app.add_middleware(
        BodyTimeout,
        idle_seconds=settings.body_timeout_seconds,
        total_seconds=settings.body_deadline_seconds,
    )
    install_error_handlers(app)
    app.include_router(clear_router(settings))
    app.include_router(jobs_router(settings))
    app.include_router(callbacks_router(settings))

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        """Liveness."""
        return {"status": "ok"}

    @app.get("/v1/models")
    async def list_models(request: Request) -> dict[str, list[dict]]:
        """Every model with its kind, task, labels and status (unloadable ones with the reason)."""
        return {"models": [model.summary() for model in request.app.state.registry.all()]}

    @app.get("/v1/models/{name}")
    async def model_card(request: Request, name: str) -> dict:
        """The model card as JSON: metrics, versions, client spec hash, card text."""
        return find_model(request.app.state, name).card()

    @app.get("/v1/models/{name}/client.zip", response_class=FileResponse)
    async def client_spec(request: Request, name: str) -> FileResponse:
        """The FHE client spec clients generate keys and encrypt with."""
        model = ready_fhe(find_model(request.app.state, name))
        return FileResponse(
            model.path / CLIENT_ZIP,
            media_type="application/zip",
            filename=f"{model.name}-client.zip",
            headers={"X-Client-Spec": model.client_spec or ""},
        )

    @app.get("/v1/models/{name}/embedder-delta", response_class=FileResponse)
    async def embedder_delta(request: Request, name: str) -> FileResponse:
        """The fine-tuned tensors of the model's client-side embedder (safetensors)."""
        model = ready_fhe(find_model(request.app.state, name))
        info = model.metadata.embedding if model.metadata else None
        if info is None or not info.delta_file:
            raise APIError(
                404, "no_embedder_delta", f"model {name!r} uses the base embedder, unchanged"
            )
        return FileResponse(
            model.path / info.delta_file,
            media_type="application/octet-stream",
            filename=f"{model.name}-{info.delta_file}",
            headers={"X-Content-SHA256": info.delta_sha256 or ""},
        )

    @app.post("/v1/keys", status_code=201)
    async def upload_keys(
        request: Request,
        x_client_spec: Annotated[str | None, Header()] = None,
    ) -> JSONResponse:
        """Store serialized evaluation keys (raw bytes); the key id is their sha256.

        With `X-Client-Spec`, the keys are checked against that client spec's key set (the
        number and parameters of every bootstrap and key-switch key) before they are stored.
        """
        state = request.app.state
        spec_model: FHEModel | None = None
        if x_client_spec:
            spec_model = next(
                (
                    m
                    for m in state.registry.all()
                    if isinstance(m, FHEModel) and m.ready and m.client_spec == x_client_spec
                ),
                None,
            )
            if spec_model is None:
                raise APIError(
                    409,
                    "unknown_client_spec",
                    f"no model here has client spec {x_client_spec}; download client.zip again",
                )
        limit = settings.max_key_bytes
        check_declared_length(request, limit, "evaluation keys")
        try:
            upload = await state.keystore.receive(request.stream(), limit)
        except KeyTooLarge as error:
            raise APIError(413, "too_large", str(error)) from None
        except StoreFull as error:
            raise APIError(
                503, "key_store_full", str(error), headers={"Retry-After": "30"}
            ) from None
        try:
            stored, created = await _store_upload(request, upload, spec_model, x_client_spec)
        except BaseException:
            state.keystore.discard(upload)
            raise
        body = {
            "key_id": stored.key_id,
            "bytes": stored.size,
            "client_spec": x_client_spec,
            "client_specs": list(stored.client_specs),
        }
        return JSONResponse(body, status_code=201 if created else 200)

    async def _store_upload(
        request: Request, upload: Upload, spec_model: FHEModel | None, client_spec: str | None
    ) -> tuple[StoredKey, bool]:
        """Check a received upload (non-empty, fitting the named client spec or, without one,
        some model here, deserializable, within the token's quota) and store it; raises the
        APIError a caller should see."""
        state = request.app.state
        if upload.size == 0:
            raise APIError(400, "empty_body", "the body must hold serialized evaluation keys")
        existing = state.keystore.get(upload.key_id)
        owner = owner_of(request)
        if owner is not None and (existing is None or not existing.usable_by(owner)):
            held = state.keystore.owner_bytes(owner)
            if held + upload.size > settings.token_max_key_bytes:
                raise quota_exceeded(held, upload.size)
        checked: list[str] = []
        if spec_model is not None and not (existing and existing.fits(client_spec)):
            differences = await run_in_threadpool(keyset_differences, spec_model, upload.path)
            if differences:
                raise key_mismatch(spec_model, upload.key_id, differences)
            checked = [spec_model.client_spec]
        elif spec_model is None:
            models = [m for m in state.registry.all() if isinstance(m, FHEModel) and m.ready]
            checked = await run_in_threadpool(fitting_specs, models, upload)
        if existing is None:
            await _check_deserializes(upload)
        try:
            stored, created = state.keystore.add(
                upload, checked[0] if checked else None, owner, settings.token_max_key_bytes
            )
        except QuotaExceeded as error:
            raise APIError(403, "key_quota_exceeded", str(error)) from None
        for spec in checked[1:]:
            state.keystore.add_spec(stored.key_id, spec)
        return state.keystore.get(stored.key_id) or stored, created

    def quota_exceeded(held: int, size: int) -> APIError:
        """403 key_quota_exceeded with what the token holds and its quota."""
        return APIError(
            403,
            "key_quota_exceeded",
            f"this token holds {held} bytes of keys; {size} more would pass its quota of "
            f"{settings.token_max_key_bytes}",
        )

    async def _check_deserializes(upload: Upload) -> None:
        """Have a worker deserialize the keys, mapping what can go wrong to the caller's error."""
        try:
            await app.state.executor.check_keys(upload.key_id, str(upload.path))
        except worker.BadInput as error:
            raise APIError(400, "malformed_keys", str(error)) from None
        except WorkerCrashed as error:
            raise APIError(
                400, "malformed_keys", f"the evaluation keys crashed a worker: {error}"
            ) from None
        except (Busy, KeyError) as error:
            raise APIError(503, "busy", str(error), headers={"Retry-After": "5"}) from None
        except TimedOut as error:
            raise APIError(504, "fhe_timeout", str(error), headers={"Retry-After": "30"}) from None
        except RunRefused as error:
            raise APIError(error.status, error.code, str(error)) from None

    @app.post(
        "/v1/models/{name}/predict",
        response_class=Response,
        responses={200: {"content": {"application/octet-stream": {}}}},
    )
    async def predict(
        request: Request,
        name: str,
        x_key_id: Annotated[str | None, Header()] = None,
        x_client_spec: Annotated[str | None, Header()] = None,
    ) -> Response:
        """FHE: one ciphertext (raw bytes) in, the encrypted result out. Clear: JSON
        `{"inputs": ...}` in, `{"output": ..., "warnings": [...]}` out."""
        received = time.perf_counter()
        found = find_model(request.app.state, name)
        if isinstance(found, ClearModel):
            return await native_answer(found, request, settings.max_json_bytes)
        model = ready_fhe(found)
        key, ciphertext = await read_fhe_request(
            request,
            model,
            x_key_id,
            x_client_spec,
            settings.max_ciphertext_bytes,
            owner_of(request),
        )
        result, seconds = await evaluate(request.app.state, model, key, ciphertext)
        total = time.perf_counter() - received
        return Response(
            content=result,
            media_type="application/octet-stream",
            headers={"X-FHE-Seconds": f"{seconds:.4f}", "X-Server-Seconds": f"{total:.4f}"},
        )

    return app
