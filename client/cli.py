"""`fhe-client`: list models, generate and upload keys, predict over encrypted data."""

from __future__ import annotations

import json
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from client.api import FHEServerAPI
from client.batch import (
    BatchProgress,
    CsvRows,
    JobsOutcome,
    ShownItems,
    predict_rows,
    run_as_jobs,
)
from client.batch_csv import BatchOutput, InputTable
from client.encrypted_model import ColumnWarning, EncryptedModel, Prediction
from client.errors import ClientError, ServerError
from client.jobs import JobJournal, fetch_prediction
from client.row_features import raw_row, read_raw_rows
from client.settings import DEFAULT_SERVER_URL, ClientSettings
from fhe.contract.bundle import RawInput
from fhe.contract.model_card import ConvertedFrom, TwinOf
from fhe.contract.sizes import readable_size

app = typer.Typer(add_completion=False, help="Client of fhe-server: your data stays encrypted.")
err = Console(stderr=True)

ServerOption = Annotated[
    str | None,
    typer.Option("--server", help=f"server URL [env FHE_SERVER_URL, default {DEFAULT_SERVER_URL}]"),
]
CacheOption = Annotated[
    Path | None,
    typer.Option(
        "--cache-dir",
        help="where keys and specs are kept [env FHE_CLIENT_CACHE, default ~/.cache/fhe-client]",
    ),
]
ModelOption = Annotated[str, typer.Option("--model", "-m", help="model name on the server")]


def _fail(error: Exception) -> NoReturn:
    """The error on stderr, never wrapped nor read as markup (it may quote brackets), exit 1."""
    err.print(f"[red]error:[/red] {escape(str(error))}", soft_wrap=True)
    raise typer.Exit(1)


def _settings(server: str | None, cache_dir: Path | None = None) -> ClientSettings:
    """The client settings: flags given, else the environment, else the defaults."""
    given = {"server_url": server, "cache_dir": cache_dir}
    try:
        return ClientSettings(**{key: value for key, value in given.items() if value is not None})
    except ValueError as error:
        _fail(error)


@app.command()
def models(server: ServerOption = None) -> None:
    """List the server's models."""
    try:
        with FHEServerAPI(settings=_settings(server)) as api:
            rows = api.models()
    except ClientError as error:
        _fail(error)
    table = Table("name", "kind", "task", "input", "labels", "from", "status")
    for row in rows:
        status = row.status if row.ready else f"{row.status}: {row.reason}"
        shown = row.input or ""
        if row.columns:
            count = f"{len(row.columns)} columns"
            shown = f"{shown}, {count}" if shown else count
        labels = ", ".join(row.labels)
        origin = _origin_shown(row.origin)
        table.add_row(row.name, row.kind, row.task or "", shown, labels, origin, status)
    Console().print(table)


def _origin_shown(origin: ConvertedFrom | TwinOf | None) -> str:
    """The listing's "from" cell: the clear model an encrypted one follows, and how closely."""
    if origin is None:
        return ""
    if isinstance(origin, ConvertedFrom):
        source, how = origin.converted_from, "converted"
    else:
        source, how = origin.clear_twin, "twin"
    if origin.agreement is not None:
        return f"{source} ({how}, {origin.agreement:.1%} agree)"
    if origin.max_abs_difference is not None:
        return f"{source} ({how}, max diff {origin.max_abs_difference:.4g})"
    return f"{source} ({how})"


@app.command()
def keygen(
    model: ModelOption = "sentiment",
    server: ServerOption = None,
    cache_dir: CacheOption = None,
    force: Annotated[bool, typer.Option(help="generate new keys even if cached")] = False,
) -> None:
    """Generate keys locally (once) and upload the evaluation keys; the private key stays here."""
    settings = _settings(server, cache_dir)
    try:
        with FHEServerAPI(settings=settings) as api:
            remote = EncryptedModel.from_settings(api, model, settings)
            with err.status("generating keys (the private key stays on this machine)..."):
                info = remote.keys(force=force)
    except ClientError as error:
        _fail(error)
    state = "generated" if info.generated_now else "reused from cache"
    took = f"{info.keygen_seconds:.2f} s" + ("" if info.generated_now else " when generated")
    typer.echo(f"key id: {info.key_id}")
    held = "uploaded" if info.uploaded else "already held by the server, not uploaded again"
    typer.echo(f"evaluation keys: {readable_size(info.evaluation_key_bytes)} ({state}), {held}")
    typer.echo(f"keygen: {took}, upload: {info.upload_seconds:.2f} s")
    typer.echo(f"private key: {info.key_dir} (never sent)")


def _read_texts(texts: list[str], input_file: Path | None, column: str) -> list[str]:
    if input_file is None:
        return texts
    return texts + InputTable.from_csv(input_file, column).texts


def _print_human(prediction: Prediction, verbose: bool) -> None:
    if prediction.label is not None:
        scores = "  ".join(f"{label} {score:.3f}" for label, score in prediction.scores.items())
        result = f"{prediction.label:<10} {scores}"
    elif prediction.value is not None:
        result = f"{prediction.value:.4f}"
    else:
        result = json.dumps([round(value, 6) for value in prediction.output or []])
    shown = prediction.text if len(prediction.text) <= 120 else prediction.text[:119] + "…"
    typer.echo(f"{result}  {shown}")
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
    items: list[Any],
    journal: JobJournal,
    callback_url: str | None,
    wait: bool,
    as_json: bool,
    verbose: bool,
    queue_full_seconds: float,
) -> None:
    """Submit every input as a job (client.batch, as with --output) and, unless --no-wait, show
    each result as its job ends."""
    rows = ShownItems(items, lambda prediction: _show(prediction, as_json, verbose))
    with _progress(True) as bar:
        sent = bar.add_task("encrypted and submitted", total=len(items))
        ended = bar.add_task("finished and decrypted", total=len(items), visible=wait)
        progress = BatchProgress(
            sent=lambda: bar.advance(sent), ended=lambda: bar.advance(ended), note=_say
        )
        outcome = run_as_jobs(
            remote, rows, journal, callback_url, wait, progress, queue_full_seconds
        )
    if not wait:
        for job_id in outcome.submitted:
            typer.echo(job_id)
        err.print(
            f"{len(outcome.submitted)} jobs submitted; `fhe-client jobs` shows them, "
            "`fhe-client result JOB_ID` fetches and decrypts one"
        )
        return
    for failure in outcome.failures:
        err.print(f"[red]error:[/red] {escape(failure)}", soft_wrap=True)
    if outcome.failures:
        raise typer.Exit(1)


def _say(message: str) -> None:
    """A plain note on stderr, never wrapped (paths stay whole)."""
    err.print(escape(message), soft_wrap=True)


def _predict_to_csv(
    remote: EncryptedModel,
    table: InputTable,
    output: Path,
    overwrite: bool,
    journal: JobJournal | None,
    callback_url: str | None,
    wait: bool,
    queue_full_seconds: float,
) -> None:
    """Predict a batch into --output row by row, resuming what an earlier run wrote."""
    out = BatchOutput(output, table, remote.name, remote.labels, remote.task).open(overwrite)
    if out.dropped_partial_line:
        _say(f"dropped the partly written last line of {output}; that row is predicted again")
    before = len(out.done)
    if before:
        _say(f"resuming: {before} of {out.total} rows already in {output}")
    outcome = JobsOutcome()
    try:
        with out, _progress(True) as bar:
            if journal is None:
                task = bar.add_task("encrypted predictions", total=out.total, completed=before)
                progress = BatchProgress(ended=lambda: bar.advance(task), note=_say)
                predict_rows(remote, out, progress)
            else:
                to_send = len(out.todo())
                sent = bar.add_task(
                    "encrypted and submitted", total=out.total, completed=out.total - to_send
                )
                ended = bar.add_task(
                    "finished and decrypted", total=out.total, completed=before, visible=wait
                )
                progress = BatchProgress(
                    sent=lambda: bar.advance(sent), ended=lambda: bar.advance(ended), note=_say
                )
                outcome = run_as_jobs(
                    remote, CsvRows(out), journal, callback_url, wait, progress, queue_full_seconds
                )
    except ClientError as error:
        err.print(f"[red]error:[/red] {escape(str(error))}", soft_wrap=True)
        _say(
            f"{len(out.done)} of {out.total} rows are in {output}; "
            "run the same command again to resume"
        )
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        _say(
            f"interrupted: {len(out.done)} of {out.total} rows are in {output}; "
            "run the same command again to resume"
        )
        raise typer.Exit(130) from None
    if journal is not None and not wait:
        for job_id in outcome.submitted:
            typer.echo(job_id)
        _say(
            f"{len(outcome.submitted)} jobs submitted, {len(out.done)} of {out.total} rows in "
            f"{output}; run the same command without --no-wait to write the results"
        )
        return
    for failure in outcome.failures:
        err.print(f"[red]error:[/red] {escape(failure)}", soft_wrap=True)
    if outcome.failures:
        _say(
            f"{len(out.done)} of {out.total} rows are in {output}; run the same command again "
            f"to retry the {len(outcome.failures)} that failed"
        )
        raise typer.Exit(1)
    _say(f"{out.total} rows in {output} ({out.total - before} predicted now)")


@app.command()
def predict(
    texts: Annotated[list[str] | None, typer.Argument(help="texts (text models)")] = None,
    model: ModelOption = "sentiment",
    input_file: Annotated[
        Path | None,
        typer.Option(
            "--input",
            help="CSV of texts (text models), of table rows with a header (tabular models), or "
            "of numbers, or a .npy array (raw models)",
            exists=True,
        ),
    ] = None,
    rows: Annotated[
        list[str] | None,
        typer.Option(
            "--row",
            help='one table row as JSON, e.g. \'{"age": 41, "city": "Lyon"}\' (a JSON array of '
            "numbers for raw models); repeatable",
        ),
    ] = None,
    example: Annotated[
        bool,
        typer.Option("--example", help="predict the example row from the model's card (tabular)"),
    ] = False,
    text_column: Annotated[str, typer.Option(help="column of --input holding text")] = "text",
    output: Annotated[
        Path | None,
        typer.Option(
            help="write predictions to this CSV, row by row: a column `row` (the input row's "
            "number, 1 for the first row after the header), every input column, then model, "
            "label, score_<label> and seconds. Run the same command again to resume: rows "
            "already there (same row number and input values) are skipped, and with --async "
            "rows submitted before are awaited, not submitted again"
        ),
    ] = None,
    overwrite: Annotated[
        bool,
        typer.Option(
            "--overwrite",
            help="with --output: start over, replacing the file even if it holds another "
            "input's or model's predictions (refused without this flag)",
        ),
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="one JSON object per text")] = False,
    verbose: Annotated[bool, typer.Option("-v", "--verbose", help="timings and sizes")] = False,
    server: ServerOption = None,
    cache_dir: CacheOption = None,
    embedding_model: Annotated[
        str | None, typer.Option(help="local path of the embedding weights, if not packaged")
    ] = None,
    as_jobs: Annotated[
        bool,
        typer.Option("--async", help="submit as server jobs, then poll (survives disconnects)"),
    ] = False,
    wait: Annotated[
        bool, typer.Option(help="with --async: wait for the results (--no-wait prints job ids)")
    ] = True,
    callback_url: Annotated[
        str | None, typer.Option(help="with --async: URL the server notifies when a job ends")
    ] = None,
) -> None:
    """Predict over encrypted data: prepare and encrypt here, run on the server, decrypt here.

    Text models take texts; tabular models take --row JSON or a CSV of rows (columns checked
    first); raw models take numbers. --output writes row by row and resumes.
    """
    warnings.simplefilter("ignore", ColumnWarning)  # shown below as "warning: ..."
    settings = _settings(server, cache_dir)
    try:
        with FHEServerAPI(settings=settings) as api:
            root = settings.cache_dir
            remote = EncryptedModel.from_settings(api, model, settings, embedding_model)
            if example:
                rows = [*(rows or []), _example_row(remote)]
            table, items = _inputs(
                remote,
                list(texts or []),
                input_file,
                list(rows or []),
                text_column,
                output is not None,
            )
            for warning in remote.column_warnings:
                _say(f"warning: {warning}")
            if remote.cache.record() is None:
                err.print("no keys for this model yet: generating and uploading them first")
            if output is not None and table is not None:
                journal = JobJournal(root) if as_jobs else None
                _predict_to_csv(
                    remote,
                    table,
                    output,
                    overwrite,
                    journal,
                    callback_url,
                    wait,
                    settings.queue_full_seconds,
                )
                return
            if as_jobs:
                _predict_as_jobs(
                    remote,
                    items,
                    JobJournal(root),
                    callback_url,
                    wait,
                    as_json,
                    verbose,
                    settings.queue_full_seconds,
                )
            else:
                with _progress(len(items) > 1) as bar:
                    task = bar.add_task("encrypted predictions", total=len(items))

                    def report(prediction: Prediction) -> None:
                        bar.advance(task)
                        _show(prediction, as_json, verbose)

                    remote.predict(items, progress=report)
    except ClientError as error:
        _fail(error)


def _example_row(remote: EncryptedModel) -> str:
    """The example row of a tabular model's card, as --row takes it."""
    row = getattr(remote.metadata.input, "example", None)
    if not row:
        raise ClientError(f"model {remote.name!r} has no example row in its card")
    return json.dumps(row)


def _parse_rows(rows: list[str]) -> list[object]:
    """--row values: each a JSON object (a table row) or array (numbers for a raw model)."""
    parsed = []
    for text in rows:
        try:
            parsed.append(json.loads(text))
        except ValueError as error:
            raise ClientError(f"--row {text!r} is not JSON: {error}") from None
    return parsed


@dataclass(frozen=True)
class _Given:
    """What the command line gave to predict on."""

    texts: list[str]
    input_file: Path | None
    rows: list[str]
    text_column: str
    to_csv: bool


def _text_inputs(remote: EncryptedModel, given: _Given) -> tuple[InputTable | None, list]:
    """A text model's inputs: texts as arguments or a CSV column."""
    if given.rows:
        raise ClientError(
            f"model {remote.name!r} takes text, not a row: give texts as arguments or "
            "--input FILE.csv"
        )
    texts, input_file = given.texts, given.input_file
    if given.to_csv and texts and input_file is not None:
        raise ClientError("with --output, give the texts as arguments or --input, not both")
    if given.to_csv:
        table = (
            InputTable.from_csv(input_file, given.text_column)
            if input_file is not None
            else InputTable.from_texts(texts)
        )
        items = table.texts
    else:
        table, items = None, _read_texts(texts, input_file, given.text_column)
    if not items:
        raise ClientError("give texts as arguments or --input FILE.csv")
    return table, items


def _rows_given(remote: EncryptedModel, given: _Given, takes: str, wanted: str) -> list[object]:
    """The --row values of a model that takes rows (`takes`), refusing texts and both sources."""
    if given.texts:
        raise ClientError(f"model {remote.name!r} takes {takes}, not text: give {wanted}")
    if given.input_file is not None and given.rows:
        raise ClientError("give rows with --input or --row, not both")
    return _parse_rows(given.rows)


def _tabular_inputs(remote: EncryptedModel, given: _Given) -> tuple[InputTable | None, list]:
    """A tabular model's inputs: --row JSON objects or a CSV of rows with a header."""
    wanted = "--input rows.csv or --row '{\"column\": value, ...}'"
    parsed = _rows_given(remote, given, "table rows", wanted)
    if any(not isinstance(row, dict) for row in parsed):
        raise ClientError("--row takes a JSON object of column: value for a tabular model")
    table = (
        InputTable.from_csv(given.input_file, None)
        if given.input_file is not None
        else InputTable.from_records("the rows given", parsed)
    )
    return _checked_rows(remote, table, parsed if given.rows else table.items)


def _raw_inputs(remote: EncryptedModel, given: _Given) -> tuple[InputTable | None, list]:
    """A raw model's inputs: --row JSON arrays, or a .npy or CSV of numbers."""
    wanted = "--input FILE.npy|FILE.csv or --row '[numbers]'"
    parsed = _rows_given(remote, given, "numbers", wanted)
    info = remote.metadata.input
    if not isinstance(info, RawInput):
        raise ClientError(f"model {remote.name!r} does not take bare arrays of numbers")
    features = info.features
    numbers = (
        read_raw_rows(given.input_file, features)
        if given.input_file is not None
        else [raw_row(row, features, f"--row {n}")[0].tolist() for n, row in enumerate(parsed, 1)]
    )
    table = InputTable.from_numbers(str(given.input_file or "the rows given"), numbers)
    return _checked_rows(remote, table, numbers)


def _checked_rows(
    remote: EncryptedModel, table: InputTable, items: list
) -> tuple[InputTable | None, list]:
    """Rows to predict, refused when there are none; their columns checked first."""
    if not items:
        raise ClientError(f"model {remote.name!r} takes rows: give --input FILE or --row JSON")
    return table, remote.checked_items(items)


INPUT_READERS = {"text": _text_inputs, "tabular": _tabular_inputs, "raw": _raw_inputs}
"""How the command line reads the inputs of each kind of model (the card's input kind)."""


def _inputs(
    remote: EncryptedModel,
    texts: list[str],
    input_file: Path | None,
    rows: list[str],
    text_column: str,
    to_csv: bool,
) -> tuple[InputTable | None, list]:
    """What to predict, as the model's input kind takes it: refused with a message naming what
    the model takes when given another kind; a tabular table's columns checked first."""
    given = _Given(texts, input_file, rows, text_column, to_csv)
    return INPUT_READERS[remote.input_kind](remote, given)


@app.command()
def jobs(
    server: ServerOption = None,
    cache_dir: CacheOption = None,
    every_server: Annotated[
        bool, typer.Option("--all-servers", help="also jobs submitted to other servers")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="one JSON object per job")] = False,
) -> None:
    """List the jobs this client submitted, with their status on the server."""
    settings = _settings(server, cache_dir)
    journal = JobJournal(settings.cache_dir)
    entries = journal.entries(None if every_server else settings.server_url.rstrip("/"))
    table = Table("job id", "model", "status", "queued", "fhe", "submitted", "text")
    table.columns[0].no_wrap = True
    with FHEServerAPI(settings=settings) as api:
        for entry in entries:
            try:
                status = api.job(entry.job_id)
                state, seconds = status.status, status.seconds
            except ServerError as error:
                state = "expired" if error.code == "unknown_job" else f"unknown ({error})"
                seconds = None
            if as_json:
                row = {"job_id": entry.job_id, "model": entry.model, "status": state}
                timings = seconds.model_dump(mode="json") if seconds else {}
                print(json.dumps({**row, "seconds": timings, "submitted": entry.submitted}))
                continue
            queued = seconds.queued if seconds else None
            fhe = seconds.fhe if seconds else None
            table.add_row(
                entry.job_id,
                entry.model,
                state,
                f"{queued:.1f} s" if queued is not None else "",
                f"{fhe:.2f} s" if fhe is not None else "",
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
    server: ServerOption = None,
    cache_dir: CacheOption = None,
) -> None:
    """Fetch finished jobs' encrypted results and decrypt them here."""
    settings = _settings(server, cache_dir)
    root = settings.cache_dir
    journal = JobJournal(root)
    try:
        with FHEServerAPI(settings=settings) as api:
            for job_id in job_ids:
                entry = journal.find(job_id)
                if entry is None:
                    raise ClientError(f"job {job_id} was not submitted from this client")
                remote = EncryptedModel.from_settings(api, entry.model, settings)
                status = api.job(job_id)
                if not status.ended:
                    raise ClientError(f"job {job_id} is still {status.status}; try later")
                _show(fetch_prediction(remote, entry, status), as_json, verbose)
    except ClientError as error:
        _fail(error)


@app.command()
def demo(
    server: Annotated[
        str | None, typer.Option("--server", help="fhe-server URL (env FHE_SERVER_URL)")
    ] = None,
    model: Annotated[
        str | None, typer.Option("--model", "-m", help="FHE model of the text tab [sentiment]")
    ] = None,
    tabular_model: Annotated[
        str | None, typer.Option(help="FHE model of the table row tab [breast-cancer]")
    ] = None,
    host: Annotated[str | None, typer.Option(help="interface of the page [127.0.0.1]")] = None,
    port: Annotated[int | None, typer.Option(help="TCP port of the page [7860]")] = None,
    concurrency: Annotated[
        int | None, typer.Option(help="browser requests handled at once [4]")
    ] = None,
    start_server: Annotated[
        bool | None,
        typer.Option(
            "--start-server/--no-start-server",
            help="start fhe-server too, on --server-host and --server-port [no]",
        ),
    ] = None,
    server_host: Annotated[
        str | None, typer.Option(help="interface of the started server [127.0.0.1]")
    ] = None,
    server_port: Annotated[
        int | None, typer.Option(help="TCP port of the started server [8000]")
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
        "tabular_model": tabular_model,
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
