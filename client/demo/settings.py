"""Demo configuration: `fhe-client demo` flags and FHE_DEMO_* environment variables."""

from __future__ import annotations

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from client.api import DEFAULT_SERVER_URL


class DemoSettings(BaseSettings):
    """Every setting of the demo; each is also the env variable FHE_DEMO_<NAME>."""

    model_config = SettingsConfigDict(env_prefix="FHE_DEMO_", populate_by_name=True)

    server_url: str = Field(
        DEFAULT_SERVER_URL,
        validation_alias=AliasChoices("server_url", "FHE_SERVER_URL", "FHE_DEMO_SERVER_URL"),
        description="the fhe-server the demo talks to (also FHE_SERVER_URL)",
    )
    model: str = Field("sentiment", description="FHE model on that server")
    host: str = Field("127.0.0.1", description="interface the demo page listens on")
    port: int = Field(7860, description="TCP port of the demo page")
    concurrency: int = Field(4, ge=1, description="browser requests handled at once")
    session_ttl: int = Field(
        3600, ge=60, description="seconds after which an idle session's keys are deleted"
    )
    start_server: bool = Field(
        False, description="start fhe-server as a child process (server_host:server_port)"
    )
    server_host: str = Field("127.0.0.1", description="interface of a server the demo starts")
    server_port: int = Field(8000, description="TCP port of a server the demo starts")

    def local_server_url(self) -> str:
        """The URL of the server this demo starts, as seen from the demo itself."""
        host = "127.0.0.1" if self.server_host in ("0.0.0.0", "::", "") else self.server_host
        return f"http://{host}:{self.server_port}"
