"""The in-process tier: the real app (server.app.create_app) behind FastAPI's TestClient, over
real stores in a temporary data directory and the shipped small circuits, with a record of the
routes the tests reach so that a test can fail when a route has no in-process test."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.testclient import TestClient

from server.app import create_app
from server.settings import ServerSettings

REPO = Path(__file__).resolve().parents[2]
SKLEARN_FIXTURES = REPO / "tests" / "fixtures" / "sklearn"

MODELS = {
    # A tabular FHE circuit with client-side preprocessing (skops and plain JSON).
    "breast-cancer": REPO / "models" / "breast-cancer",
    # A text FHE circuit without PBS (compiles in about a second) with its embedder delta,
    # ONNX export, tokenizer and projection.
    "sentiment-linear": REPO / "models" / "sentiment-linear",
    # A clear scikit-learn model (iris, skops).
    "iris": SKLEARN_FIXTURES / "tabular-classification-linear-skops-sk1.5.0",
}
"""The models an in-process app serves, linked (not copied: the text bundle is 108 MB)."""


def models_dir(root: Path) -> Path:
    """A models directory under `root` linking the MODELS bundles by name."""
    root.mkdir(parents=True, exist_ok=True)
    for name, bundle in MODELS.items():
        (root / name).symlink_to(bundle, target_is_directory=True)
    return root


class RouteRecorder:
    """ASGI wrapper: notes (method, path template) of every request the app routed, read from
    the scope the router fills in (`scope["route"]`), so parameters count once per route."""

    def __init__(self, app: FastAPI, reached: set[tuple[str, str]]) -> None:
        self.app = app
        self.reached = reached

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        try:
            await self.app(scope, receive, send)
        finally:
            route = scope.get("route")
            if scope["type"] == "http" and route is not None:
                self.reached.add((scope["method"], openapi_path(route.path)))


def openapi_path(template: str) -> str:
    """A route's path as /openapi.json writes it (`{name:path}` becomes `{name}`)."""
    return template.replace(":path}", "}")


def openapi_operations(app: FastAPI) -> set[tuple[str, str]]:
    """Every (METHOD, path) operation the app's OpenAPI schema lists."""
    return {
        (method.upper(), path)
        for path, operations in app.openapi()["paths"].items()
        for method in operations
    }


def settings_for(tmp: Path, **overrides: Any) -> ServerSettings:
    """Settings of an in-process app: the MODELS, stores in `tmp`, one FHE and one clear worker,
    development mode unless tokens are given."""
    values: dict[str, Any] = {
        "models_dir": models_dir(tmp / "models"),
        "data_dir": tmp / "data",
        "workers": 1,
        "clear_workers": 1,
        "dev_mode": "tokens" not in overrides,
    }
    return ServerSettings(**{**values, **overrides})


@contextmanager
def in_process(
    settings: ServerSettings, reached: set[tuple[str, str]], ready_within: float = 120
) -> Iterator[TestClient]:
    """A TestClient over create_app(settings), its lifespan started (stores, worker pools,
    compilation), once /readyz answers 200: every request it sends is noted in `reached`."""
    app = create_app(settings)
    with TestClient(RouteRecorder(app, reached)) as client:
        deadline = time.monotonic() + ready_within
        while (ready := client.get("/readyz")).status_code != 200:
            assert time.monotonic() < deadline, ready.text
            time.sleep(0.2)
        yield client
