"""The domain errors: one class per stable code, each carrying its HTTP status, and the one place
that turns them (and the framework's own errors) into JSON answers.

Services raise these; only `install_error_handlers` knows about FastAPI, and imports it lazily, so
code below the routes (and worker processes) never loads the web framework.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:
    from fastapi import FastAPI


class ConfigurationError(Exception):
    """The operator's settings cannot work (no tokens without --dev, an unsupported TASK, ...)."""


class ServiceError(Exception):
    """An error a caller should see: `{"error": message, "code": code, ...extra}` with a status.

    Each subclass fixes one status and one stable code; an error that comes back from elsewhere
    with only its code (a Celery worker's answer) becomes its class through `from_code`, so a code
    has the same status wherever it is raised.
    """

    status: ClassVar[int] = 500
    code: ClassVar[str] = "internal_error"

    def __init__(
        self, message: str, headers: dict[str, str] | None = None, **extra: object
    ) -> None:
        if "status" in extra or "code" in extra:
            raise TypeError("a domain error's status and code are its class's")
        super().__init__(message)
        self.message = message
        self.headers = headers
        self.extra = extra


class EmptyBody(ServiceError):
    """The body is empty where bytes are required."""

    status, code = 400, "empty_body"


class InvalidInputsError(ServiceError):
    """A JSON body that is not the inputs a clear model takes."""

    status, code = 400, "invalid_inputs"


class MalformedCiphertext(ServiceError):
    """The ciphertext does not deserialize or cannot be evaluated."""

    status, code = 400, "malformed_ciphertext"


class MalformedKeys(ServiceError):
    """The bytes are not (deserializable) evaluation keys."""

    status, code = 400, "malformed_keys"


class MissingKeyId(ServiceError):
    """The X-Key-Id header is missing."""

    status, code = 400, "missing_key_id"


class MissingClientSpec(ServiceError):
    """The X-Client-Spec header is missing."""

    status, code = 400, "missing_client_spec"


class ModelUnloadable(ServiceError):
    """The model exists but cannot load (the listing says why)."""

    status, code = 400, "model_unloadable"


class NotFHE(ServiceError):
    """An FHE-only operation on a clear model."""

    status, code = 400, "not_fhe"


class PredictionFailedError(ServiceError):
    """A clear model could not predict on these inputs."""

    status, code = 400, "prediction_failed"


class Unauthorized(ServiceError):
    """No API token, or an unknown one."""

    status, code = 401, "unauthorized"


class KeyQuotaExceeded(ServiceError):
    """The token's stored keys would pass its quota."""

    status, code = 403, "key_quota_exceeded"


class UnknownJob(ServiceError):
    """No such job (or it is another token's, or expired)."""

    status, code = 404, "unknown_job"


class UnknownKey(ServiceError):
    """The key id is unknown or was evicted: upload the keys again."""

    status, code = 404, "unknown_key"


class UnknownModel(ServiceError):
    """No model of that name."""

    status, code = 404, "unknown_model"


class NoEmbedderDelta(ServiceError):
    """The bundle's embedder is the base one, unchanged."""

    status, code = 404, "no_embedder_delta"


class NoEmbedderExport(ServiceError):
    """The bundle ships no ONNX export of its embedder (a client with torch makes its own)."""

    status, code = 404, "no_embedder_export"


class NoPreprocessing(ServiceError):
    """The bundle has no client-side preprocessing (not tabular, or its columns go in as is)."""

    status, code = 404, "no_preprocessing"


class NoProjection(ServiceError):
    """The bundle's circuit takes the whole embedding: no client-side reduction to download."""

    status, code = 404, "no_projection"


class ClientSpecMismatch(ServiceError):
    """The client encrypted for another client.zip."""

    status, code = 409, "client_spec_mismatch"


class KeySpecMismatch(ServiceError):
    """The evaluation keys do not fit the model's key set."""

    status, code = 409, "key_spec_mismatch"


class KeyInUse(ServiceError):
    """The key cannot be deleted while the owner's queued or running jobs need it."""

    status, code = 409, "key_in_use"


class UnknownClientSpec(ServiceError):
    """No model here has the client spec a key upload names."""

    status, code = 409, "unknown_client_spec"


class ModelChanged(ServiceError):
    """A job's model changed kind since it was accepted."""

    status, code = 409, "model_changed"


class JobNotFinished(ServiceError):
    """A result asked for before the job ended."""

    status, code = 409, "job_not_finished"


class JobFailed(ServiceError):
    """A result asked for of a job that failed."""

    status, code = 409, "job_failed"


class TooLarge(ServiceError):
    """A body over its limit."""

    status, code = 413, "too_large"


class InputsTooLarge(ServiceError):
    """A clear request asks for more rows, cells or characters than the server's bounds."""

    status, code = 413, "inputs_too_large"


class PredictionCrashed(ServiceError):
    """A clear prediction killed its worker process (only this request failed)."""

    status, code = 422, "prediction_crashed"


class PredictionTimeout(ServiceError):
    """A clear prediction passed the time limit; its worker was stopped."""

    status, code = 422, "prediction_timeout"


class UnprocessableCiphertext(ServiceError):
    """The run killed the worker running it (only this request failed)."""

    status, code = 422, "unprocessable_ciphertext"


class TooManyJobs(ServiceError):
    """The token has its limit of jobs queued or running."""

    status, code = 429, "too_many_jobs"


class TooManyRequests(ServiceError):
    """The token already has its share of requests waiting for a worker."""

    status, code = 429, "too_many_requests"


class StoredBytesExceeded(ServiceError):
    """The token's stored job inputs and results fill its share of the disk."""

    status, code = 429, "stored_bytes_exceeded"


class KeyCountExceeded(ServiceError):
    """The token holds as many evaluation keys as it may: delete one before uploading another."""

    status, code = 429, "key_count_exceeded"


class Busy(ServiceError):
    """Every worker is busy and the queue is full; try again."""

    status, code = 503, "busy"


class CircuitUnavailable(ServiceError):
    """The model's circuit cannot be compiled or loaded on this server (the listing says why)."""

    status, code = 503, "circuit_unavailable"


class NotReady(ServiceError):
    """A store or the broker this replica needs cannot be reached (readiness fails)."""

    status, code = 503, "not_ready"


class StateUnavailable(ServiceError):
    """The shared database did not answer; the request changed nothing and may be retried."""

    status, code = 503, "state_unavailable"


class KeyStoreFull(ServiceError):
    """Only keys pinned by work in flight could make room."""

    status, code = 503, "key_store_full"


class FHETimeout(ServiceError):
    """No worker answered in time."""

    status, code = 504, "fhe_timeout"


class BodyTimedOut(ServiceError):
    """The client stopped sending its body, or trickles it too slowly."""

    status, code = 408, "body_timeout"


class UnprocessableKeys(ServiceError):
    """Evaluation keys that stopped the worker deserializing them (a crash, or a run dead-lettered
    after stopping several): like a ciphertext that does, 422."""

    status, code = 422, "unprocessable_keys"


class DeadLettered(ServiceError):
    """A run that stopped several Celery workers in turn and was set aside."""

    status, code = 422, "dead_lettered"


class InvalidCallbackURL(ServiceError):
    """A job's callback URL that is no absolute http(s) URL this server can call."""

    status, code = 400, "invalid_callback_url"


class CallbackNotAllowed(ServiceError):
    """A job's callback URL that resolves to an address callbacks may not reach."""

    status, code = 400, "callback_not_allowed"


class ModelMismatch(ServiceError):
    """Celery mode: a worker holds another bundle under the model's name."""

    status, code = 503, "model_mismatch"


class WorkerError(ServiceError):
    """A worker answered with a code this API does not know (another version of the server)."""

    status, code = 502, "worker_error"


def _all_classes(base: type[ServiceError]) -> list[type[ServiceError]]:
    return [base, *(c for sub in base.__subclasses__() for c in _all_classes(sub))]


def from_code(code: str, message: str) -> ServiceError:
    """The domain error whose stable code is `code` (502 worker_error for a code not known here):
    its status is the class's, whatever status came with the code."""
    for cls in _all_classes(ServiceError):
        if cls.code == code and cls is not ServiceError:
            return cls(message)
    return WorkerError(f"{code}: {message}")


def install_error_handlers(app: FastAPI) -> None:
    """Every error, ours or the framework's, leaves as JSON with an `error` message."""
    from fastapi import Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException as StarletteHTTPException

    from fhe.contract.wire import ErrorBody

    def answer(message: str, code: str, **extra: object) -> dict[str, object]:
        """The error body (fhe.contract.wire.ErrorBody, which /openapi.json declares)."""
        return ErrorBody(error=message, code=code, **extra).model_dump(mode="json")

    @app.exception_handler(ServiceError)
    async def service_error(_: Request, error: ServiceError) -> JSONResponse:
        body = answer(error.message, error.code, **error.extra)
        headers = dict(error.headers or {})
        if isinstance(error, BodyTimedOut):
            headers["Connection"] = "close"
        return JSONResponse(body, status_code=error.status, headers=headers or None)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, error: StarletteHTTPException) -> JSONResponse:
        body = answer(str(error.detail), f"http_{error.status_code}")
        return JSONResponse(body, status_code=error.status_code, headers=error.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, error: RequestValidationError) -> JSONResponse:
        messages = "; ".join(
            f"{'.'.join(str(part) for part in item['loc'])}: {item['msg']}"
            for item in error.errors()
        )
        return JSONResponse(answer(messages, "invalid_request"), status_code=422)
