"""Client configuration: FHE_SERVER_URL, FHE_API_TOKEN, FHE_CLIENT_* variables, documented defaults.

Every part of the client (the library, `fhe-client`, the demo) reads its configuration here and
nowhere else; flags of the CLI override these values.
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_SERVER_URL = "http://127.0.0.1:8000"


def default_cache_dir() -> Path:
    """Where keys live by default: $XDG_CACHE_HOME/fhe-client or ~/.cache/fhe-client."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "fhe-client"


class ClientSettings(BaseSettings):
    """Every setting of the client; each is also the env variable FHE_CLIENT_<NAME>, except the
    server URL (FHE_SERVER_URL), the API token (FHE_API_TOKEN) and the cache (FHE_CLIENT_CACHE)."""

    model_config = SettingsConfigDict(
        env_prefix="FHE_CLIENT_", env_ignore_empty=True, populate_by_name=True
    )

    server_url: str = Field(
        DEFAULT_SERVER_URL, validation_alias="FHE_SERVER_URL", description="the fhe-server to call"
    )
    api_token: SecretStr | None = Field(
        None,
        validation_alias="FHE_API_TOKEN",
        description="API token sent as a bearer token (none for a server in development mode)",
    )
    cache_dir: Path = Field(
        default_factory=default_cache_dir,
        validation_alias="FHE_CLIENT_CACHE",
        description="keys, client specs and the job journal are kept here",
    )
    embedder_cache: Path | None = Field(
        None,
        description="fine-tuned embedder tensors and the ONNX exports of embedders, shared by "
        "every key cache and demo session (default: `embedders` in the cache directory)",
    )
    timeout_seconds: float = Field(
        600, gt=0, description="longest wait for the server's answer to one request"
    )
    retry_attempts: int = Field(
        5,
        ge=1,
        description="tries of one request (the first included) while the server answers 503 "
        "busy with Retry-After, or, for a GET, while the connection fails",
    )
    retry_max_wait_seconds: float = Field(
        30,
        ge=0,
        description="longest pause before a retry; a busy answer asking for a longer one is "
        "not retried",
    )
    queue_full_seconds: float = Field(
        600,
        ge=0,
        description="longest wait for one job submission of a batch while the server refuses "
        "it as busy (its queue, or the token's jobs in flight, full); then the batch stops and "
        "a rerun resumes it",
    )
    retry_backoff_seconds: float = Field(
        0.1,
        ge=0,
        description="pause before the second try of a GET whose connection failed, doubled "
        "after each failure",
    )

    @field_validator("cache_dir", "embedder_cache")
    @classmethod
    def _expand_user(cls, path: Path | None) -> Path | None:
        """Allow `~` in the cache directories."""
        return path.expanduser() if path is not None else None

    def embedders_dir(self) -> Path:
        """Where embedder files are kept: the embedder cache, else `embedders` in the cache."""
        return self.embedder_cache or self.cache_dir / "embedders"

    def token(self) -> str | None:
        """The API token in clear, or None."""
        return self.api_token.get_secret_value() if self.api_token else None
