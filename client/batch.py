"""Batches of encrypted predictions: written to an --output CSV row by row with one call per row,
or as server jobs (`--async`, with or without --output: one path) with texts embedded in
batches, back-pressure on a full queue (bounded), one poller, and resuming what an earlier run
wrote or submitted. The command line only parses and prints around it."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_delay

from client.batch_csv import BatchOutput
from client.encrypted_model import EncryptedModel, Prediction
from client.errors import ClientError, JobFailed, ServerError
from client.jobs import (
    JobJournal,
    JournalEntry,
    fetch_prediction,
    job_status,
    poll_once,
    send_job,
)

POLL_SECONDS = 0.5
"""How often a batch of jobs is polled while it is submitted and after."""
BUSY_CODES = ("busy", "too_many_jobs")
"""Refusals of a job submission that mean: wait for queued jobs to end, then submit again."""


def _nothing(*_: object) -> None:
    return None


@dataclass
class BatchProgress:
    """What a batch reports as it goes: a row sent, a row ended, a note for the user."""

    sent: Callable[[], None] = _nothing
    ended: Callable[[], None] = _nothing
    note: Callable[[str], None] = _nothing


@dataclass
class JobsOutcome:
    """The jobs a batch submitted now, and the rows that failed (each with its reason)."""

    submitted: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)


class QueueStayedFull(ClientError):
    """The server refused job submissions as busy for longer than the client waits."""


def queue_full(error: BaseException) -> bool:
    """A refused job submission that succeeds once queued jobs have ended."""
    return isinstance(error, ServerError) and error.code in BUSY_CODES


def predict_rows(remote: EncryptedModel, out: BatchOutput, progress: BatchProgress) -> None:
    """Predict the rows not in the output yet, one call each, writing each row as it ends."""
    todo = out.todo()
    if not todo:
        return
    numbers = iter(todo)

    def report(prediction: Prediction) -> None:
        out.write(next(numbers), prediction)
        progress.ended()

    remote.predict([out.table.item(number) for number in todo], progress=report)


class JobRows(Protocol):
    """Where a batch of jobs takes its inputs (numbered from 1) and puts each result."""

    batch: str | None
    """The batch's name in the journal, under which a rerun resumes; None: no resuming."""
    what: str
    """What one input is called in messages: `row`, `input`."""

    def todo(self) -> list[int]:
        """The numbers of the inputs without a result yet, in order."""

    def item(self, number: int) -> Any:
        """One input, as the model takes it."""

    def write(self, number: int, prediction: Prediction) -> None:
        """Put one input's result where it goes."""


class CsvRows:
    """The rows of an --output CSV: resumed by the file's path, each result written as a row."""

    what = "row"

    def __init__(self, out: BatchOutput) -> None:
        self.out = out
        self.batch: str | None = str(out.path.resolve())

    def todo(self) -> list[int]:
        return self.out.todo()

    def item(self, number: int) -> Any:
        return self.out.table.item(number)

    def write(self, number: int, prediction: Prediction) -> None:
        self.out.write(number, prediction)


class ShownItems:
    """Inputs given on the command line (or a file without --output): each result handed to
    `show` as it ends; a rerun submits them again."""

    batch: str | None = None
    what = "input"

    def __init__(self, items: Sequence[Any], show: Callable[[Prediction], None]) -> None:
        self.items = list(items)
        self.show = show

    def todo(self) -> list[int]:
        return list(range(1, len(self.items) + 1))

    def item(self, number: int) -> Any:
        return self.items[number - 1]

    def write(self, number: int, prediction: Prediction) -> None:
        self.show(prediction)


def earlier_jobs(remote: EncryptedModel, rows: JobRows, journal: JobJournal) -> list[JournalEntry]:
    """Jobs earlier runs submitted for inputs without a result yet that can still give it.

    A job counts when it encrypts the input's current value for this model under the cached
    key, and the server still knows it and has not failed it; other inputs are submitted again.
    """
    record = remote.cache.record()
    if rows.batch is None or record is None:
        return []
    todo = set(rows.todo())
    usable = []
    for number, entry in sorted(journal.batch(rows.batch).items()):
        if number not in todo:
            continue
        if (entry.item, entry.model, entry.key_id) != (
            rows.item(number),
            remote.name,
            record.key_id,
        ):
            continue
        status = job_status(remote, entry)
        if status is not None and status.status != "failed":
            usable.append(entry)
    return usable


def run_as_jobs(
    remote: EncryptedModel,
    rows: JobRows,
    journal: JobJournal,
    callback_url: str | None,
    wait: bool,
    progress: BatchProgress,
    queue_full_seconds: float,
) -> JobsOutcome:
    """Submit as jobs the inputs never submitted and (with wait) hand each result on as it ends.

    Texts are embedded in batches as they are submitted. Jobs that earlier runs submitted are
    awaited, not submitted again. A submission the server refuses as busy is tried again once
    queued jobs have ended, for at most `queue_full_seconds`; then QueueStayedFull says how far
    the batch got (run again to resume).
    """
    pending = earlier_jobs(remote, rows, journal)
    if pending:
        progress.note(
            f"{len(pending)} {rows.what}s were submitted as jobs before: awaiting those, "
            "not resubmitting"
        )
    submitted_before = {entry.row for entry in pending}
    to_submit = [number for number in rows.todo() if number not in submitted_before]
    outcome = JobsOutcome()

    def collect() -> None:
        nonlocal pending
        finished, pending = poll_once(remote, pending)
        for entry, status in finished:
            progress.ended()
            try:
                rows.write(entry.row, fetch_prediction(remote, entry, status))
            except JobFailed as error:
                outcome.failures.append(f"{rows.what} {entry.row}: {error}")

    def pause(state: RetryCallState) -> float:
        """Queue full: the poll interval while our jobs run, else Retry-After (at most 5 s)."""
        if wait and pending:
            return POLL_SECONDS
        error = state.outcome.exception() if state.outcome else None
        return min((error.retry_after if isinstance(error, ServerError) else None) or 1.0, 5.0)

    def drain(_: RetryCallState) -> None:
        """Queue full: hand on the results of our jobs that ended meanwhile."""
        if wait and pending:
            collect()

    submitting = Retrying(
        retry=retry_if_exception(queue_full),
        wait=pause,
        before_sleep=drain,
        stop=stop_after_delay(queue_full_seconds),
        reraise=True,
    )
    items = [rows.item(number) for number in to_submit]
    prepared = remote.prepare_ahead(items)
    last_poll = time.monotonic()
    for sent, (number, item, features) in enumerate(zip(to_submit, items, prepared, strict=True)):
        encrypted = remote.encrypt(item, features)
        try:
            entry = submitting(
                send_job, remote, item, encrypted, journal, callback_url, rows.batch, number
            )
        except ServerError as error:
            if not queue_full(error):
                raise
            then = "run again to resume" if rows.batch else "`fhe-client jobs` lists them"
            raise QueueStayedFull(
                f"the server's queue stayed full for {queue_full_seconds:g} s "
                f"(FHE_CLIENT_QUEUE_FULL_SECONDS): {sent} of {len(to_submit)} {rows.what}s "
                f"submitted now, {len(pending)} jobs still running; {then} ({error})"
            ) from None
        pending.append(entry)
        outcome.submitted.append(entry.job_id)
        progress.sent()
        if wait and time.monotonic() - last_poll >= POLL_SECONDS:
            collect()
            last_poll = time.monotonic()
    while wait and pending:
        collect()
        if pending:
            time.sleep(POLL_SECONDS)
    return outcome
