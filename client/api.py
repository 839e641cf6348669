"""HTTP access to fhe-server: one method per route, errors turned into typed exceptions."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import httpx

DEFAULT_SERVER_URL = "http://127.0.0.1:8000"


def server_url_from_env() -> str:
    """FHE_SERVER_URL, or the local default."""
    return os.environ.get("FHE_SERVER_URL", DEFAULT_SERVER_URL)


class ServerError(RuntimeError):
    """The server answered with an error (or could not be reached)."""

    def __init__(
        self, status: int, code: str, message: str, retry_after: float | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.retry_after = retry_after

    def __str__(self) -> str:
        where = f"HTTP {self.status}" if self.status else "no answer"
        return f"{self.message} ({where})"


class UnknownKey(ServerError):
    """The server does not hold (or has evicted) the evaluation key: upload it again."""


class SpecMismatch(ServerError):
    """The server's client spec differs from the one the client encrypted with."""


@dataclass(frozen=True)
class PredictAnswer:
    """An encrypted result and the server's own timing."""

    ciphertext: bytes
    fhe_seconds: float
    server_seconds: float


class FHEServerAPI:
    """A thin client of the REST API (httpx); raw bytes for keys and ciphertexts.

    The API token comes from `token` or the FHE_API_TOKEN variable (none for a server in
    development mode).
    """

    def __init__(
        self, base_url: str | None = None, timeout: float = 600.0, token: str | None = None
    ) -> None:
        self.base_url = (base_url or server_url_from_env()).rstrip("/")
        token = token or os.environ.get("FHE_API_TOKEN")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(base_url=self.base_url, timeout=timeout, headers=headers)

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def __enter__(self) -> FHEServerAPI:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as error:
            raise ServerError(
                0, "unreachable", f"cannot reach fhe-server at {self.base_url}: {error}"
            ) from None
        if response.is_success:
            return response
        try:
            body = response.json()
            message, code = body.get("error", response.text), body.get("code", "")
        except ValueError:
            message, code = response.text or response.reason_phrase, ""
        kind = {"unknown_key": UnknownKey, "client_spec_mismatch": SpecMismatch}.get(
            code, ServerError
        )
        retry_after = response.headers.get("Retry-After")
        seconds = float(retry_after) if retry_after and retry_after.isdigit() else None
        raise kind(response.status_code, code, message, seconds)

    def health(self) -> dict[str, Any]:
        """GET /healthz."""
        return self._request("GET", "/healthz").json()

    def models(self) -> list[dict[str, Any]]:
        """The server's models: name, kind, task, labels, status."""
        return self._request("GET", "/v1/models").json()["models"]

    def model(self, name: str) -> dict[str, Any]:
        """One model's card as JSON."""
        return self._request("GET", f"/v1/models/{name}").json()

    def client_spec(self, name: str) -> bytes:
        """The model's client.zip."""
        return self._request("GET", f"/v1/models/{name}/client.zip").content

    def embedder_delta(self, name: str) -> bytes:
        """The fine-tuned tensors of the model's embedder (only for fine-tuned bundles)."""
        return self._request("GET", f"/v1/models/{name}/embedder-delta").content

    def upload_keys(self, serialized_keys: bytes, client_spec: str | None = None) -> dict[str, Any]:
        """Upload evaluation keys; returns {key_id, bytes, client_spec}."""
        headers = {"Content-Type": "application/octet-stream"}
        if client_spec:
            headers["X-Client-Spec"] = client_spec
        return self._request("POST", "/v1/keys", content=serialized_keys, headers=headers).json()

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
    ) -> dict[str, Any]:
        """Queue one ciphertext as a job; returns its status (job_id, status_url, ...)."""
        headers = {
            "Content-Type": "application/octet-stream",
            "X-Key-Id": key_id,
            "X-Client-Spec": client_spec,
        }
        if callback_url:
            headers["X-Callback-Url"] = callback_url
        return self._request(
            "POST", f"/v1/models/{name}/jobs", content=ciphertext, headers=headers
        ).json()

    def job(self, job_id: str) -> dict[str, Any]:
        """One job's status: queued, running, done or failed, with timings."""
        return self._request("GET", f"/v1/jobs/{job_id}").json()

    def jobs(self, limit: int = 100) -> list[dict[str, Any]]:
        """The server's newest jobs first."""
        return self._request("GET", "/v1/jobs", params={"limit": limit}).json()["jobs"]

    def job_result(self, job_id: str) -> PredictAnswer:
        """A finished FHE job's encrypted result."""
        response = self._request("GET", f"/v1/jobs/{job_id}/result")
        return PredictAnswer(
            response.content, float(response.headers.get("X-FHE-Seconds", "nan")), float("nan")
        )
