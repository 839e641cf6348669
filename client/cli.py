"""`fhe-client`: list models, generate and upload keys, predict over encrypted data."""

from __future__ import annotations

import csv
import json
import sys
import time
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from client.api import DEFAULT_SERVER_URL, FHEServerAPI, ServerError
from client.encrypted_model import ClientError, EncryptedModel, Prediction
from client.job_flow import JobFailed, fetch_prediction, submit_texts, wait_for
from client.journal import JobJournal
from client.keycache import default_cache_root
from fhe.embedder import EmbeddingModelMismatch
from fhe.sizes import readable_size

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
    typer.echo(f"evaluation keys: {readable_size(info.evaluation_key_bytes)} ({state}), uploaded")
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
        sizes = ", ".join(
            f"{key} {readable_size(value)}" for key, value in prediction.bytes.items()
        )
        typer.echo(f"           {seconds}; {sizes}")


def _progress(shown: bool) -> Progress:
    """The progress bar of long commands, on stderr, gone when done."""
    return Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
        disable=not shown,
        transient=True,
    )


def _show(prediction: Prediction, as_json: bool, verbose: bool) -> None:
    if as_json:
        print(json.dumps(prediction.as_json(verbose)), flush=True)
    else:
        _print_human(prediction, verbose)


def _predict_as_jobs(
    remote: EncryptedModel,
    items: list[str],
    journal: JobJournal,
    callback_url: str | None,
    wait: bool,
    as_json: bool,
    verbose: bool,
    output: Path | None,
) -> list[Prediction] | None:
    """Submit every text as a job, then (unless --no-wait) poll, decrypt and show each result."""
    with _progress(True) as bar:
        task = bar.add_task("encrypting and submitting", total=len(items))
        entries = submit_texts(
            remote, items, journal, callback_url, progress=lambda _: bar.advance(task)
        )
    if not wait:
        for entry in entries:
            typer.echo(entry.job_id)
        err.print(
            f"{len(entries)} jobs submitted; `fhe-client jobs` shows them, "
            "`fhe-client result JOB_ID` fetches and decrypts one"
        )
        return None
    predictions: dict[str, Prediction] = {}
    failures = []
    with _progress(True) as bar:
        task = bar.add_task("jobs finished on the server", total=len(entries))
        for entry, status in wait_for(remote, entries):
            bar.advance(task)
            try:
                predictions[entry.job_id] = fetch_prediction(remote, entry, status)
            except JobFailed as error:
                failures.append(str(error))
                continue
            if output is None:
                _show(predictions[entry.job_id], as_json, verbose)
    for failure in failures:
        err.print(f"[red]error:[/red] {failure}")
    if failures and output is None:
        raise typer.Exit(1)
    return [predictions[e.job_id] for e in entries if e.job_id in predictions]


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
    as_jobs: Annotated[
        bool,
        typer.Option("--async", help="submit as server jobs, then poll (survives disconnects)"),
    ] = False,
    wait: Annotated[
        bool, typer.Option(help="with --async: wait for the results (--no-wait prints job ids)")
    ] = True,
    callback_url: Annotated[
        Optional[str], typer.Option(help="with --async: URL the server notifies when a job ends")
    ] = None,
) -> None:
    """Classify texts: embed and encrypt here, run on the server, decrypt here."""
    try:
        items = _read_texts(list(texts or []), input_file, text_column)
        if not items:
            raise ClientError("give texts as arguments or --input FILE.csv")
        with FHEServerAPI(server) as api:
            root = cache_dir or default_cache_root()
            remote = EncryptedModel(api, model, root, embedding_model)
            if remote.cache.record() is None:
                err.print("no keys for this model yet: generating and uploading them first")
            if as_jobs:
                predictions = _predict_as_jobs(
                    remote, items, JobJournal(root), callback_url, wait, as_json, verbose, output
                )
                if predictions is None:
                    return
            else:
                with _progress(len(items) > 1 or output is not None) as bar:
                    task = bar.add_task("encrypted predictions", total=len(items))

                    def report(prediction: Prediction) -> None:
                        bar.advance(task)
                        if output is None:
                            _show(prediction, as_json, verbose)

                    predictions = remote.predict(items, progress=report)
    except (ServerError, ClientError, EmbeddingModelMismatch, JobFailed) as error:
        _fail(error)
    if output is not None:
        _write_csv(output, predictions, remote.labels)
        err.print(f"{len(predictions)} predictions written to {output}")


@app.command()
def jobs(
    server: ServerOption = DEFAULT_SERVER_URL,
    cache_dir: CacheOption = None,
    every_server: Annotated[
        bool, typer.Option("--all-servers", help="also jobs submitted to other servers")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="one JSON object per job")] = False,
) -> None:
    """List the jobs this client submitted, with their status on the server."""
    journal = JobJournal(cache_dir or default_cache_root())
    entries = journal.entries(None if every_server else server.rstrip("/"))
    table = Table("job id", "model", "status", "queued", "fhe", "submitted", "text")
    table.columns[0].no_wrap = True
    with FHEServerAPI(server) as api:
        for entry in entries:
            try:
                status = api.job(entry.job_id)
            except ServerError as error:
                state = "expired" if error.code == "unknown_job" else f"unknown ({error})"
                status = {"status": state, "seconds": {}}
            seconds = status.get("seconds") or {}
            if as_json:
                row = {"job_id": entry.job_id, "model": entry.model, "status": status["status"]}
                print(json.dumps({**row, "seconds": seconds, "submitted": entry.submitted}))
                continue
            table.add_row(
                entry.job_id,
                entry.model,
                status["status"],
                f"{seconds['queued']:.1f} s" if seconds.get("queued") is not None else "",
                f"{seconds['fhe']:.2f} s" if seconds.get("fhe") is not None else "",
                time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(entry.submitted)),
                entry.text if len(entry.text) <= 40 else entry.text[:39] + "…",
            )
    if not as_json:
        Console().print(table)
    if not entries:
        err.print("no jobs submitted from here yet (`fhe-client predict --async ...`)")


@app.command()
def result(
    job_ids: Annotated[list[str], typer.Argument(help="job ids from `fhe-client jobs`")],
    as_json: Annotated[bool, typer.Option("--json", help="one JSON object per text")] = False,
    verbose: Annotated[bool, typer.Option("-v", "--verbose", help="timings and sizes")] = False,
    server: ServerOption = DEFAULT_SERVER_URL,
    cache_dir: CacheOption = None,
) -> None:
    """Fetch finished jobs' encrypted results and decrypt them here."""
    root = cache_dir or default_cache_root()
    journal = JobJournal(root)
    try:
        with FHEServerAPI(server) as api:
            for job_id in job_ids:
                entry = journal.find(job_id)
                if entry is None:
                    raise ClientError(f"job {job_id} was not submitted from this client")
                remote = EncryptedModel(api, entry.model, root)
                status = api.job(job_id)
                if status["status"] not in ("done", "failed"):
                    raise ClientError(f"job {job_id} is still {status['status']}; try later")
                _show(fetch_prediction(remote, entry, status), as_json, verbose)
    except (ServerError, ClientError, EmbeddingModelMismatch, JobFailed) as error:
        _fail(error)


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
