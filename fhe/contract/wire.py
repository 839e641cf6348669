"""Every JSON answer of the API as a typed object, read by the server (its routes' response
models, so /openapi.json describes each answer) and by the client (which reads fields, not keys).

The model listing's row and the encrypted model's card live in `fhe.contract.model_card`; this
module adds the clear model's card and every other answer: keys, jobs, health, the callback
secret, the Hugging Face compatible routes and the error body.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from fhe.contract.model_card import FheModelCard, ModelSummary


class ClearModelCard(ModelSummary):
    """A clear (scikit-learn) model's card: its listing row and how it was saved and loaded."""

    kind: Literal["clear"] = "clear"
    format: str
    model_file: str
    sklearn_saved_with: str | None = None
    sklearn_running: str
    load_warnings: list[str] = Field(default_factory=list)
    example_input: Any = None
    card: str | None = None


ModelCard = Annotated[FheModelCard | ClearModelCard, Field(discriminator="kind")]
"""`GET /v1/models/{name}`: an encrypted or a clear model's card, told apart by `kind`."""


class ModelList(BaseModel):
    """`GET /v1/models`: every model, ready or not."""

    models: list[ModelSummary]


class KeyUpload(BaseModel):
    """`POST /v1/keys`: the stored key's id (its sha256) and size."""

    key_id: str
    bytes: int
    client_spec: str | None = None
    client_specs: list[str] = []


class KeyStatus(BaseModel):
    """`GET /v1/keys/{key_id}`: what the server holds of one of your keys."""

    key_id: str
    held: bool
    bytes: int
    client_specs: list[str]
    models: list[str]
    created: float | None = None
    last_used: float | None = None

    def fits(self, client_spec: str) -> bool:
        """Whether the server holds this key, checked for that client spec."""
        return self.held and client_spec in self.client_specs


JobState = Literal["queued", "running", "done", "failed"]
FINISHED: tuple[JobState, ...] = ("done", "failed")
"""The states a job does not leave."""


class JobSeconds(BaseModel):
    """How long a job waited in the queue, ran and spent in FHE (None: not yet, or clear)."""

    queued: float
    running: float | None = None
    fhe: float | None = None


class JobError(BaseModel):
    """Why a job failed: the status and code a direct request would have answered."""

    status: int | None = None
    code: str | None = None
    message: str | None = None


class JobCallback(BaseModel):
    """Delivery of a job's callback."""

    url: str
    attempts: int
    delivered: bool
    last_error: str | None = None


class JobStatus(BaseModel):
    """`POST /v1/models/{name}/jobs` (202) and `GET /v1/jobs/{job_id}`: one job's state."""

    job_id: str
    model: str
    kind: Literal["fhe", "clear"]
    status: JobState
    created: float
    started: float | None = None
    finished: float | None = None
    expires: float | None = None
    seconds: JobSeconds
    attempts: int
    result_bytes: int | None = None
    error: JobError | None = None
    callback: JobCallback | None = None
    status_url: str
    result_url: str

    @property
    def ended(self) -> bool:
        """Whether the job is done or failed."""
        return self.status in FINISHED


class JobList(BaseModel):
    """`GET /v1/jobs`: the caller's newest jobs first."""

    jobs: list[JobStatus]


class ClearOutput(BaseModel):
    """A clear model's prediction (predict, or a clear job's result)."""

    output: Any
    warnings: list[str] = []


class Health(BaseModel):
    """`GET /healthz`: the process answers."""

    status: Literal["ok"]


class Ready(BaseModel):
    """`GET /readyz` (200): every check passed."""

    status: Literal["ready"]
    checks: list[str]


class CallbackSecret(BaseModel):
    """`GET /v1/callback-secret`: the secret that signs this token's job callbacks, and how."""

    secret: str
    header: str
    algorithm: str
    format: str


class CompatStatus(BaseModel):
    """`GET /`: api-inference-community's status route."""

    ok: str


class CompatError(BaseModel):
    """An error of the Hugging Face compatible routes: `error` (for a warning, a JSON string
    holding the output), and the warnings when there were some."""

    model_config = ConfigDict(extra="allow")

    error: str
    warnings: list[str] | None = None


class ErrorBody(BaseModel):
    """Every error the API answers: a message, a stable code, and details some codes add
    (`checks` of not_ready, `key_id` and `held` of unknown_key, ...)."""

    model_config = ConfigDict(extra="allow")

    error: str
    code: str
