"""Server configuration: flags and FHE_SERVER_* environment variables, documented defaults."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from server.allow_list import AllowList
from server.cpu_quota import available_cpus
from server.models.clear import ModelPolicy

MiB = 1 << 20

PLACEHOLDER = "replace-with"
"""How deployment/kubernetes/secret.example.env marks the values an operator must set."""

SHIPPED_MODELS_DIR = Path(__file__).resolve().parents[1] / "models"
"""The models/ directory of this checkout, which holds the shipped bundles."""


def default_data_dir() -> Path:
    """Where keys live by default: $XDG_DATA_HOME/fhe-server or ~/.local/share/fhe-server."""
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "fhe-server"


def default_runs() -> int:
    """FHE runs at once by default: half the CPUs this process may use (its cgroup quota and
    affinity, not the node's cores), each run then taking two threads.

    Measured on 2 cores (`python -m benchmarks.scale_out --parts sizing`): 1 run x 2 threads and
    2 runs x 1 thread give the same throughput within noise, and the two-thread run answers a lone
    request in about 0.6x the time; deployment/README.md has the figures and the sizing rule.
    """
    return max(1, available_cpus() // 2)


class ServerSettings(BaseSettings):
    """Every setting of `fhe-server serve`; each is also the env variable FHE_SERVER_<NAME>."""

    model_config = SettingsConfigDict(env_prefix="FHE_SERVER_")

    models_dir: Path = Field(SHIPPED_MODELS_DIR, description="directory of model bundles")
    task: str | None = Field(
        None,
        validation_alias=AliasChoices("TASK", "FHE_SERVER_TASK"),
        description="single-model mode (api-inference-community): the task of MODEL_ID",
    )
    model_id: str | None = Field(
        None,
        validation_alias=AliasChoices("MODEL_ID", "FHE_SERVER_MODEL_ID"),
        description="single-model mode: a directory, a name under the models directory, or a "
        "hub repository id",
    )
    compute_type: str = Field(
        "cpu", description="the x-compute-type header of the Hugging Face compatible answers"
    )
    cors_allow_origins: list[str] = Field(
        default_factory=lambda: ["*"],
        description="origins browsers may call from (CORS); x-compute-* headers are exposed",
    )
    data_dir: Path = Field(
        default_factory=default_data_dir,
        description="keys and jobs are kept here (with a database: only uploads being received)",
    )
    circuit_cache_dir: Path | None = Field(
        None,
        description="where circuits compiled for this host are kept, shared by restarts and "
        "workers (default: circuits/ in the data directory)",
    )
    database_url: SecretStr | None = Field(
        None,
        description="Postgres shared by every replica and worker for jobs, results and keys "
        "(postgresql://user:password@host/db); unset: SQLite and files in the data directory",
    )
    job_lease_seconds: float = Field(
        60,
        gt=0,
        description="with a database: a running job whose replica stops renewing its lease for "
        "this long is claimed by another replica",
    )
    replica_name: str = Field(
        default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}",
        description="this replica's name in job leases (default: host name and process id)",
    )
    host: str = Field("127.0.0.1", description="interface to listen on")
    port: int = Field(8000, description="TCP port")
    workers: int = Field(
        default_factory=lambda: default_runs(),
        ge=1,
        description="FHE runs at once: worker processes, one circuit run each at a time "
        "(default: half the host's cores, at least 1)",
    )
    fhe_threads: int | None = Field(
        None,
        ge=1,
        description="threads one FHE run may use (default: the host's cores divided by the "
        "runs at once, at least 1, so runs x threads <= cores)",
    )
    max_queue: int = Field(
        16, ge=0, description="FHE requests allowed to wait for a worker before 503 busy"
    )
    token_max_queue: int = Field(
        4,
        ge=0,
        description="FHE runs, and clear predictions, one token may have waiting for a worker "
        "before 429 (waiting turns go round-robin across tokens)",
    )
    clear_workers: int = Field(
        default_factory=lambda: default_runs(),
        ge=1,
        description="processes for clear-model predictions, one prediction each at a time "
        "(default: half the host's cores, at least 1)",
    )
    clear_max_queue: int = Field(
        16, ge=0, description="clear predictions allowed to wait for a worker before 503 busy"
    )
    clear_timeout_seconds: float = Field(
        10, gt=0, description="longest clear prediction; its worker is stopped past it (422)"
    )
    clear_max_rows: int = Field(100_000, ge=1, description="rows of one tabular request (413)")
    clear_max_cells: int = Field(
        1_000_000,
        ge=1,
        description="rows x columns of one tabular request, counting the columns the model "
        "fills in (413)",
    )
    clear_max_text_chars: int = Field(
        100_000, ge=1, description="characters of one text-classification input (413)"
    )
    max_key_bytes: int = Field(512 * MiB, ge=1, description="largest evaluation key upload")
    max_receiving_key_bytes: int = Field(
        1024 * MiB,
        ge=1,
        description="bytes of evaluation key uploads received at once and not yet checked "
        "(spooled to disk; past it 503 busy): they never count toward the store or evict keys",
    )
    max_ciphertext_bytes: int = Field(16 * MiB, ge=1, description="largest ciphertext body")
    max_json_bytes: int = Field(16 * MiB, ge=1, description="largest JSON body (clear models)")
    keystore_max_bytes: int = Field(
        8 << 30, ge=1, description="total bytes of stored keys before LRU eviction"
    )
    allow_pickle: list[str] = Field(
        default_factory=list,
        description="clear models allowed to load pickle/joblib files (names, or * for all)",
    )
    trusted_types: dict[str, list[str]] = Field(
        default_factory=dict,
        description="per clear model, skops types to trust beyond skops' defaults ('*': all)",
    )
    key_cache_entries: int = Field(
        4, ge=1, description="deserialized evaluation keys kept in memory per worker"
    )
    backend: Literal["embedded", "celery"] = Field(
        "embedded", description="where FHE runs: this server's worker pool, or Celery workers"
    )
    redis_url: str = Field(
        "redis://127.0.0.1:6379/0",
        description="Celery broker, result store and shared key store (backend celery)",
    )
    celery_visibility_timeout: float = Field(
        300, gt=0, description="seconds before the task of a lost worker is delivered again"
    )
    celery_task_timeout: float = Field(
        900, gt=0, description="longest wait for a Celery worker's answer"
    )
    celery_key_ttl_seconds: float = Field(
        7 * 86400,
        gt=0,
        description="lifetime of a key copy in Redis, renewed on each use (the API deletes it "
        "at once when it evicts the key)",
    )
    celery_max_in_flight: int = Field(
        64, ge=1, description="FHE runs sent to Celery and not yet answered (API side)"
    )
    celery_broker_grace_seconds: float = Field(
        60,
        gt=0,
        description="how long a run waits for an unreachable Redis before it counts as lost "
        "(a job then goes back to the queue, a synchronous request gets 503)",
    )
    celery_redis_high_water: float = Field(
        0.9,
        gt=0,
        le=1,
        description="fraction of Redis' maxmemory past which no new run is sent (503 busy, jobs "
        "wait queued), leaving room for the results of the runs under way",
    )
    worker_metrics_port: int | None = Field(
        None, ge=1, le=65535, description="port of a Celery worker's Prometheus /metrics (off)"
    )
    dev_mode: bool = Field(
        False, description="local development: no API tokens, every caller trusted (warned)"
    )
    tokens: dict[str, str] = Field(
        default_factory=dict,
        description="API tokens by owner name (a value may be sha256:<hex of the token>)",
    )
    token_max_key_bytes: int = Field(
        2 << 30, ge=1, description="stored evaluation key bytes allowed per token"
    )
    token_max_keys: int = Field(
        100, ge=1, description="evaluation keys stored per token (past it 429 key_count_exceeded)"
    )
    token_max_jobs_in_flight: int = Field(
        100, ge=1, description="queued and running jobs allowed per token"
    )
    token_max_stored_bytes: int = Field(
        1 << 30,
        ge=1,
        description="bytes of job inputs and results one token may keep stored; past it new "
        "jobs get 429 until results are fetched and deleted or expire",
    )
    metrics_token: SecretStr = Field(
        SecretStr(""),
        description="when set, GET /metrics takes `Authorization: Bearer <this>` (set it when "
        "callers reach the server directly); empty: /metrics is public",
    )
    graceful_shutdown_seconds: float | None = Field(
        None,
        gt=0,
        description="on SIGTERM, longest wait for requests in progress before they are cancelled "
        "and running jobs go back to the queue (default: wait for all of them)",
    )
    body_timeout_seconds: float = Field(
        30, gt=0, description="longest wait for the next piece of a request body"
    )
    body_deadline_seconds: float = Field(
        300, gt=0, description="longest time to receive a whole request body"
    )
    job_concurrency: int | None = Field(
        None, ge=1, description="jobs run at once (default: the number of FHE workers)"
    )
    max_queued_jobs: int = Field(1000, ge=1, description="queued jobs before 503 busy")
    job_ttl_seconds: float = Field(
        86400, gt=0, description="seconds a finished job and its result are kept"
    )
    job_max_attempts: int = Field(
        3, ge=1, description="runs of a job interrupted by restarts before it fails"
    )
    callback_attempts: int = Field(5, ge=1, description="deliveries tried per callback")
    callback_timeout_seconds: float = Field(10, gt=0, description="timeout of one callback")
    callback_backoff_seconds: float = Field(
        1, ge=0, description="pause before the second delivery, doubled after each failure"
    )
    callback_allow: list[str] = Field(
        default_factory=list,
        description="callback targets allowed beyond public addresses: host names, addresses, "
        "CIDRs",
    )
    callback_signing_key: SecretStr = Field(
        SecretStr(""),
        description="key the per-token callback secrets derive from (default: random, kept in "
        "the data directory)",
    )
    public_url: str | None = Field(
        None,
        description="the server's URL as clients reach it, for job URLs (default: "
        "http://<host>:<port>/)",
    )

    @field_validator("callback_allow")
    @classmethod
    def _check_callback_allow(cls, entries: list[str]) -> list[str]:
        """Refuse at start-up an entry that is no host name, address or CIDR."""
        AllowList.parse(entries)
        return entries

    @field_validator("public_url")
    @classmethod
    def _check_public_url(cls, url: str | None) -> str | None:
        """An absolute http(s) URL ending in a slash, so job paths append to it."""
        if not url:
            return None
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc or "@" in parts.netloc:
            raise ValueError(f"public_url must be an absolute http(s) URL, not {url!r}")
        if parts.query or parts.fragment:
            raise ValueError(f"public_url may not hold a query or a fragment: {url!r}")
        return url if url.endswith("/") else url + "/"

    def placeholder_secrets(self) -> list[str]:
        """The settings that still hold an example value from deployment/ (`replace-with-...`):
        a server started with them would trust a token or key anyone can read."""
        found = [
            f"FHE_SERVER_TOKENS ({name})"
            for name, token in self.tokens.items()
            if PLACEHOLDER in token.lower()
        ]
        for name, secret in (
            ("FHE_SERVER_DATABASE_URL", self.database_url),
            ("FHE_SERVER_CALLBACK_SIGNING_KEY", self.callback_signing_key),
            ("FHE_SERVER_METRICS_TOKEN", self.metrics_token),
        ):
            if secret is not None and PLACEHOLDER in secret.get_secret_value().lower():
                found.append(name)
        # Redis's URL carries its password (deployment/kubernetes/secret.example.env).
        if PLACEHOLDER in self.redis_url.lower():
            found.append("FHE_SERVER_REDIS_URL")
        return found

    def redis_shown(self) -> str:
        """The Redis URL with its password masked, for logs and start-up lines."""
        from urllib.parse import urlsplit

        parts = urlsplit(self.redis_url)
        if parts.password is None:
            return self.redis_url
        user = parts.username or ""
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
        return parts._replace(netloc=f"{user}:***@{host}{port}").geturl()

    def public_base_url(self) -> str:
        """Where job URLs point: FHE_SERVER_PUBLIC_URL, else the configured host and port (never
        a request's Host header, which any caller can set)."""
        if self.public_url:
            return self.public_url
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    def database(self) -> str | None:
        """The shared database's URL, or None for the embedded stores."""
        return self.database_url.get_secret_value() if self.database_url else None

    def circuit_cache(self) -> Path:
        """Where compiled circuits are kept: the setting, else circuits/ in the data directory."""
        return self.circuit_cache_dir or self.data_dir / "circuits"

    def threads_per_run(self) -> int:
        """Threads each FHE run may use: the setting, or cores // runs at once (at least 1)."""
        if self.fhe_threads is not None:
            return self.fhe_threads
        return max(1, available_cpus() // self.workers)

    def policy(self, model: str) -> ModelPolicy:
        """What the operator allows when loading the clear model called `model`."""
        return ModelPolicy(
            allow_pickle="*" in self.allow_pickle or model in self.allow_pickle,
            trusted_types=list(self.trusted_types.get(model, [])),
        )
