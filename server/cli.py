"""`fhe-server`: serve the REST API over the models in a directory."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Optional

import typer

from server.settings import ServerSettings

app = typer.Typer(add_completion=False, help="Encrypted inference server (Concrete-ML).")


@app.callback()
def main() -> None:
    """Encrypted inference server: FHE models over ciphertext."""


@app.command()
def serve(
    models: Annotated[Optional[Path], typer.Option(help="model bundles directory")] = None,
    host: Annotated[Optional[str], typer.Option(help="interface [127.0.0.1]")] = None,
    port: Annotated[Optional[int], typer.Option(help="TCP port [8000]")] = None,
    data_dir: Annotated[Optional[Path], typer.Option(help="where keys are kept")] = None,
    workers: Annotated[Optional[int], typer.Option(help="FHE worker processes [cores]")] = None,
) -> None:
    """Start the API. Unset flags come from FHE_SERVER_* variables, then the defaults."""
    import uvicorn

    from server.app import create_app

    given = {"models_dir": models, "host": host, "port": port, "data_dir": data_dir}
    given["workers"] = workers
    settings = ServerSettings(**{key: value for key, value in given.items() if value is not None})
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    typer.echo(
        f"fhe-server: models from {settings.models_dir}, keys in {settings.data_dir}, "
        f"{settings.workers} FHE workers, http://{settings.host}:{settings.port}",
        err=True,
    )
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level="info")


if __name__ == "__main__":
    app()
