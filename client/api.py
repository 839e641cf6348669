"""HTTP access to fhe-server: one method per route, errors turned into typed exceptions.

Retries come from tenacity: a `503 busy` or a `429 too_many_requests` (this token's share of the
workers is waiting) with `Retry-After` is tried again after the pause the server asks for (any
method: the server did nothing with the request), and a GET whose connection failed after a
doubling pause; the bounds are in `ClientSettings`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

import httpx
from pydantic import TypeAdapter, ValidationError
from tenacity import (
    RetryCallState,
    Retrying,
    before_sleep_log,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential,
)

from client.errors import ServerError, UnknownKey
from client.settings import ClientSettings
from fhe.contract.model_card import ModelSummary
from fhe.contract.wire import (
    ErrorBody,
    Health,
    JobList,
    JobStatus,
    KeyStatus,
    KeyUpload,
    ModelCard,
    ModelList,
)

log = logging.getLogger(__name__)

T = TypeVar("T")
CARD: TypeAdapter[ModelCard] = TypeAdapter(ModelCard)


def _typed(response: httpx.Response, read: Callable[[bytes], T]) -> T:
    """A JSON answer read as its wire model (fhe.contract.wire); `malformed_answer` when it is
    not one."""
    try:
        return read(response.content)
    except ValidationError as error:
        where = f"{response.request.method} {response.request.url.path}"
        raise ServerError(
            response.status_code, "malformed_answer", f"the answer to {where} is malformed: {error}"
        ) from None


RETRIED_CONNECTION_ERRORS = (httpx.NetworkError, httpx.RemoteProtocolError)
"""Failures of a GET worth another try: no connection, or one the server dropped (no timeouts)."""


def _error_of(response: httpx.Response) -> ServerError:
    """The typed exception of an error answer, with its code and Retry-After seconds."""
    try:
        body = ErrorBody.model_validate_json(response.content)
        message, code = body.error, body.code
    except ValidationError:  # not the API's error body: a proxy's page, or no body
        message, code = response.text or response.reason_phrase, ""
    kind = UnknownKey if code == "unknown_key" else ServerError
    retry_after = response.headers.get("Retry-After")
    seconds = float(retry_after) if retry_after and retry_after.isdigit() else None
    return kind(response.status_code, code, message, seconds)


@dataclass(frozen=True)
class PredictAnswer:
    """An encrypted result and the server's own timing."""

    ciphertext: bytes
    fhe_seconds: float
    server_seconds: float


class FHEServerAPI:
    """A thin client of the REST API (httpx); raw bytes for keys and ciphertexts.

    Unset arguments come from `settings` (by default `ClientSettings()`: FHE_SERVER_URL,
    FHE_API_TOKEN, FHE_CLIENT_*); no token is needed for a server in development mode.
    """

    def __init__(
        self,
        base_url: str | None = None,
        timeout: float | None = None,
        token: str | None = None,
        settings: ClientSettings | None = None,
    ) -> None:
        self.settings = settings or ClientSettings()
        self.base_url = (base_url or self.settings.server_url).rstrip("/")
        token = token or self.settings.token()
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(
            base_url=self.base_url,
            timeout=self.settings.timeout_seconds if timeout is None else timeout,
            headers=headers,
        )
        self._backoff = wait_exponential(
            multiplier=self.settings.retry_backoff_seconds,
            max=self.settings.retry_max_wait_seconds,
        )

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def __enter__(self) -> FHEServerAPI:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _retryable(self, method: str, error: BaseException) -> bool:
        """A 503 busy or 429 too_many_requests asking for a pause within the bound, or a GET
        whose connection failed."""
        if isinstance(error, ServerError):
            return (
                (error.status, error.code) in ((503, "busy"), (429, "too_many_requests"))
                and error.retry_after is not None
                and error.retry_after <= self.settings.retry_max_wait_seconds
            )
        return method == "GET" and isinstance(error, RETRIED_CONNECTION_ERRORS)

    def _pause(self, state: RetryCallState) -> float:
        """The server's Retry-After when it gave one, else the doubling backoff."""
        error = state.outcome.exception() if state.outcome else None
        if isinstance(error, ServerError) and error.retry_after is not None:
            return error.retry_after
        return self._backoff(state)

    def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """One try: the answer when it is a success, else its error raised."""
        response = self._http.request(method, path, **kwargs)
        if response.is_success:
            return response
        raise _error_of(response)

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """One request, retried as above; a connection that stays failed is `unreachable`."""
        retrying = Retrying(
            stop=stop_after_attempt(self.settings.retry_attempts),
            wait=self._pause,
            retry=retry_if_exception(partial(self._retryable, method)),
            before_sleep=before_sleep_log(log, logging.INFO),
            reraise=True,
        )
        try:
            return retrying(self._send, method, path, **kwargs)
        except httpx.TransportError as error:
            raise ServerError(
                0, "unreachable", f"cannot reach fhe-server at {self.base_url}: {error}"
            ) from None

    def health(self) -> Health:
        """GET /healthz."""
        return _typed(self._request("GET", "/healthz"), Health.model_validate_json)

    def models(self) -> list[ModelSummary]:
        """The server's models: name, kind, task, labels, status."""
        return _typed(self._request("GET", "/v1/models"), ModelList.model_validate_json).models

    def model(self, name: str) -> ModelCard:
        """One model's card: an encrypted or a clear model's, told apart by `kind`."""
        return _typed(self._request("GET", f"/v1/models/{name}"), CARD.validate_json)

    def client_spec(self, name: str) -> bytes:
        """The model's client.zip."""
        return self._request("GET", f"/v1/models/{name}/client.zip").content

    def embedder_delta(self, name: str) -> bytes:
        """The fine-tuned tensors of the model's embedder (only for fine-tuned bundles)."""
        return self._request("GET", f"/v1/models/{name}/embedder-delta").content

    def embedder_onnx(self, name: str) -> bytes:
        """The model's embedder as an ONNX file (only where the card has one)."""
        return self._request("GET", f"/v1/models/{name}/embedder-onnx").content

    def tokenizer(self, name: str) -> bytes:
        """The tokenizer of the model's ONNX embedder."""
        return self._request("GET", f"/v1/models/{name}/tokenizer").content

    def plain_preprocessing(self, name: str) -> bytes:
        """The client-side preprocessing of a tabular model as plain parameters (JSON)."""
        return self._request("GET", f"/v1/models/{name}/preprocessing.json").content

    def projection(self, name: str) -> bytes:
        """The client-side reduction of a text model's embedding (only where the card has one)."""
        return self._request("GET", f"/v1/models/{name}/projection").content

    def preprocessing(self, name: str) -> bytes:
        """The client-side preprocessing of a tabular model (skops)."""
        return self._request("GET", f"/v1/models/{name}/preprocessing").content

    def upload_keys(self, serialized_keys: bytes, client_spec: str | None = None) -> KeyUpload:
        """Upload evaluation keys; returns the key id (their sha256) and size."""
        headers = {"Content-Type": "application/octet-stream"}
        if client_spec:
            headers["X-Client-Spec"] = client_spec
        answer = self._request("POST", "/v1/keys", content=serialized_keys, headers=headers)
        return _typed(answer, KeyUpload.model_validate_json)

    def key_status(self, key_id: str) -> KeyStatus | None:
        """What the server holds of one of this token's keys (bytes, client specs, models,
        last use); None when it holds none (upload it again)."""
        try:
            answer = self._request("GET", f"/v1/keys/{key_id}")
        except ServerError as error:
            if error.status == 404:  # unknown_key, or a server from before key status
                return None
            raise
        return _typed(answer, KeyStatus.model_validate_json)

    def delete_key(self, key_id: str) -> None:
        """Delete one of this token's keys from the server."""
        self._request("DELETE", f"/v1/keys/{key_id}")

    def predict(self, name: str, ciphertext: bytes, key_id: str, client_spec: str) -> PredictAnswer:
        """Run the model on one ciphertext; returns the encrypted result."""
        response = self._request(
            "POST",
            f"/v1/models/{name}/predict",
            content=ciphertext,
            headers={
                "Content-Type": "application/octet-stream",
                "X-Key-Id": key_id,
                "X-Client-Spec": client_spec,
            },
        )
        return PredictAnswer(
            response.content,
            float(response.headers.get("X-FHE-Seconds", "nan")),
            float(response.headers.get("X-Server-Seconds", "nan")),
        )

    def submit_job(
        self,
        name: str,
        ciphertext: bytes,
        key_id: str,
        client_spec: str,
        callback_url: str | None = None,
    ) -> JobStatus:
        """Queue one ciphertext as a job; returns its status (job_id, status_url, ...)."""
        headers = {
            "Content-Type": "application/octet-stream",
            "X-Key-Id": key_id,
            "X-Client-Spec": client_spec,
        }
        if callback_url:
            headers["X-Callback-Url"] = callback_url
        answer = self._request(
            "POST", f"/v1/models/{name}/jobs", content=ciphertext, headers=headers
        )
        return _typed(answer, JobStatus.model_validate_json)

    def job(self, job_id: str) -> JobStatus:
        """One job's status: queued, running, done or failed, with timings."""
        return _typed(self._request("GET", f"/v1/jobs/{job_id}"), JobStatus.model_validate_json)

    def jobs(self, limit: int = 100) -> list[JobStatus]:
        """The server's newest jobs first."""
        answer = self._request("GET", "/v1/jobs", params={"limit": limit})
        return _typed(answer, JobList.model_validate_json).jobs

    def job_result(self, job_id: str) -> PredictAnswer:
        """A finished FHE job's encrypted result."""
        response = self._request("GET", f"/v1/jobs/{job_id}/result")
        return PredictAnswer(
            response.content, float(response.headers.get("X-FHE-Seconds", "nan")), float("nan")
        )
