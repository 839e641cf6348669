"""`fhe-client`: list models, generate and upload keys, predict over encrypted data."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from client.api import DEFAULT_SERVER_URL, FHEServerAPI, ServerError
from client.encrypted_model import ClientError, EncryptedModel, Prediction
from client.keycache import default_cache_root
from fhe.embedder import EmbeddingModelMismatch

app = typer.Typer(add_completion=False, help="Client of fhe-server: your data stays encrypted.")
err = Console(stderr=True)

ServerOption = Annotated[
    str,
    typer.Option(
        "--server", envvar="FHE_SERVER_URL", help=f"server URL [default {DEFAULT_SERVER_URL}]"
    ),
]
CacheOption = Annotated[
    Optional[Path],
    typer.Option(
        "--cache-dir",
        envvar="FHE_CLIENT_CACHE",
        help="where keys and specs are kept [~/.cache/fhe-client]",
    ),
]
ModelOption = Annotated[str, typer.Option("--model", "-m", help="model name on the server")]


def _fail(error: Exception) -> None:
    err.print(f"[red]error:[/red] {error}")
    raise typer.Exit(1)


def _megabytes(size: int) -> str:
    return f"{size / 1e6:.2f} MB"


@app.command()
def models(server: ServerOption = DEFAULT_SERVER_URL) -> None:
    """List the server's models."""
    try:
        with FHEServerAPI(server) as api:
            rows = api.models()
    except ServerError as error:
        _fail(error)
    table = Table("name", "kind", "task", "labels", "status")
    for row in rows:
        status = row["status"] if row["status"] == "ready" else f"{row['status']}: {row['reason']}"
        table.add_row(row["name"], row["kind"], row["task"] or "", ", ".join(row["labels"]), status)
    Console().print(table)


@app.command()
def keygen(
    model: ModelOption = "sentiment",
    server: ServerOption = DEFAULT_SERVER_URL,
    cache_dir: CacheOption = None,
    force: Annotated[bool, typer.Option(help="generate new keys even if cached")] = False,
) -> None:
    """Generate keys locally (once) and upload the evaluation keys; the private key stays here."""
    try:
        with FHEServerAPI(server) as api:
            remote = EncryptedModel(api, model, cache_dir or default_cache_root())
            with err.status("generating keys (the private key stays on this machine)..."):
                info = remote.keys(force=force)
    except (ServerError, ClientError) as error:
        _fail(error)
    state = "generated" if info.generated_now else "reused from cache"
    took = f"{info.keygen_seconds:.2f} s" + ("" if info.generated_now else " when generated")
    typer.echo(f"key id: {info.key_id}")
    typer.echo(f"evaluation keys: {_megabytes(info.evaluation_key_bytes)} ({state}), uploaded")
    typer.echo(f"keygen: {took}, upload: {info.upload_seconds:.2f} s")
    typer.echo(f"private key: {info.key_dir} (never sent)")


def _read_texts(texts: list[str], input_file: Optional[Path], column: str) -> list[str]:
    if input_file is None:
        return texts
    with input_file.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        if reader.fieldnames is None or column not in reader.fieldnames:
            raise ClientError(f"{input_file} has no column {column!r}: {reader.fieldnames}")
        return texts + [row[column] for row in reader]


def _write_csv(path: Path, predictions: list[Prediction], labels: list[str]) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label", *[f"score_{label}" for label in labels], "seconds"])
        for p in predictions:
            scores = [f"{p.scores[label]:.6f}" for label in labels]
            writer.writerow([p.text, p.label, *scores, f"{p.seconds['total']:.3f}"])


def _print_human(prediction: Prediction, verbose: bool) -> None:
    scores = "  ".join(f"{label} {score:.3f}" for label, score in prediction.scores.items())
    typer.echo(f"{prediction.label:<10} {scores}  {prediction.text}")
    if verbose:
        seconds = ", ".join(f"{key} {value:.3f} s" for key, value in prediction.seconds.items())
        sizes = ", ".join(f"{key} {_megabytes(value)}" for key, value in prediction.bytes.items())
        typer.echo(f"           {seconds}; {sizes}")


@app.command()
def predict(
    texts: Annotated[Optional[list[str]], typer.Argument(help="texts to classify")] = None,
    model: ModelOption = "sentiment",
    input_file: Annotated[
        Optional[Path], typer.Option("--input", help="CSV file of texts", exists=True)
    ] = None,
    text_column: Annotated[str, typer.Option(help="column of --input holding text")] = "text",
    output: Annotated[Optional[Path], typer.Option(help="write predictions to this CSV")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="one JSON object per text")] = False,
    verbose: Annotated[bool, typer.Option("-v", "--verbose", help="timings and sizes")] = False,
    server: ServerOption = DEFAULT_SERVER_URL,
    cache_dir: CacheOption = None,
    embedding_model: Annotated[
        Optional[str], typer.Option(help="local path of the embedding weights, if not packaged")
    ] = None,
) -> None:
    """Classify texts: embed and encrypt here, run on the server, decrypt here."""
    try:
        items = _read_texts(list(texts or []), input_file, text_column)
        if not items:
            raise ClientError("give texts as arguments or --input FILE.csv")
        with FHEServerAPI(server) as api:
            remote = EncryptedModel(api, model, cache_dir or default_cache_root(), embedding_model)
            if remote.cache.record() is None:
                err.print("no keys for this model yet: generating and uploading them first")
            show_bar = len(items) > 1 or output is not None
            with Progress(
                TextColumn("[progress.description]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=err,
                disable=not show_bar,
                transient=True,
            ) as bar:
                task = bar.add_task("encrypted predictions", total=len(items))

                def report(prediction: Prediction) -> None:
                    bar.advance(task)
                    if output is None:
                        if as_json:
                            print(json.dumps(prediction.as_json(verbose)), flush=True)
                        else:
                            _print_human(prediction, verbose)

                predictions = remote.predict(items, progress=report)
    except (ServerError, ClientError, EmbeddingModelMismatch) as error:
        _fail(error)
    if output is not None:
        _write_csv(output, predictions, remote.labels)
        err.print(f"{len(predictions)} predictions written to {output}")


@app.command()
def demo(
    server: Annotated[
        Optional[str], typer.Option("--server", help="fhe-server URL (env FHE_SERVER_URL)")
    ] = None,
    model: Annotated[Optional[str], typer.Option("--model", "-m", help="FHE model")] = None,
    host: Annotated[Optional[str], typer.Option(help="interface of the page [127.0.0.1]")] = None,
    port: Annotated[Optional[int], typer.Option(help="TCP port of the page [7860]")] = None,
    concurrency: Annotated[
        Optional[int], typer.Option(help="browser requests handled at once [4]")
    ] = None,
    start_server: Annotated[
        Optional[bool],
        typer.Option(
            "--start-server/--no-start-server",
            help="start fhe-server too, on --server-host and --server-port [no]",
        ),
    ] = None,
    server_host: Annotated[
        Optional[str], typer.Option(help="interface of the started server [127.0.0.1]")
    ] = None,
    server_port: Annotated[
        Optional[int], typer.Option(help="TCP port of the started server [8000]")
    ] = None,
) -> None:
    """Serve the Gradio demo: keygen, encrypt, FHE on the server and decrypt, step by step.

    Unset flags come from FHE_DEMO_* variables (and FHE_SERVER_URL), then the defaults.
    """
    from client.demo.runner import run_demo
    from client.demo.settings import DemoSettings

    given = {
        "server_url": server,
        "model": model,
        "host": host,
        "port": port,
        "concurrency": concurrency,
        "start_server": start_server,
        "server_host": server_host,
        "server_port": server_port,
    }
    try:
        run_demo(DemoSettings(**{key: value for key, value in given.items() if value is not None}))
    except RuntimeError as error:
        _fail(error)


def main() -> None:
    """Console script entry point."""
    app()


if __name__ == "__main__":
    sys.exit(main())
