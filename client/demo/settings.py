"""Demo configuration: `fhe-client demo` flags and FHE_DEMO_* environment variables.

What the demo shares with every client (the server URL, the API token) comes from
`ClientSettings`, so FHE_SERVER_URL and FHE_API_TOKEN are read in one place.
"""

from __future__ import annotations

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from client.settings import ClientSettings


class DemoSettings(BaseSettings):
    """Every setting of the demo; each is also the env variable FHE_DEMO_<NAME>."""

    model_config = SettingsConfigDict(env_prefix="FHE_DEMO_", populate_by_name=True)

    server_url: str = Field(
        default_factory=lambda: ClientSettings().server_url,
        validation_alias=AliasChoices("server_url", "FHE_DEMO_SERVER_URL"),
        description="the fhe-server the demo talks to (default: the client's FHE_SERVER_URL)",
    )
    model: str = Field("sentiment", description="FHE model on that server (the text tab)")
    tabular_model: str = Field(
        "breast-cancer", description="tabular FHE model on that server (the table row tab)"
    )
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
