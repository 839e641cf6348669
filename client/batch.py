"""Batches of encrypted predictions written to an --output CSV row by row: one call per row, or
server jobs with back-pressure on a full queue (bounded), polling, and resuming what an earlier
run wrote or submitted. The command line only parses and prints around it."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

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
    submit_item,
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


def earlier_jobs(
    remote: EncryptedModel, out: BatchOutput, journal: JobJournal, batch: str
) -> list[JournalEntry]:
    """Jobs earlier runs submitted for rows not written yet that can still give their result.

    A job counts when it encrypts the row's current input for this model under the cached key,
    and the server still knows it and has not failed it; other rows are submitted again.
    """
    record = remote.cache.record()
    usable = []
    for number, entry in sorted(journal.batch(batch).items()):
        if number in out.done or not 1 <= number <= out.total or record is None:
            continue
        if (entry.item, entry.model, entry.key_id) != (
            out.table.item(number),
            remote.name,
            record.key_id,
        ):
            continue
        status = job_status(remote, entry)
        if status is not None and status["status"] != "failed":
            usable.append(entry)
    return usable


def rows_as_jobs(
    remote: EncryptedModel,
    out: BatchOutput,
    journal: JobJournal,
    callback_url: str | None,
    wait: bool,
    progress: BatchProgress,
    queue_full_seconds: float,
) -> JobsOutcome:
    """Submit as jobs the rows never submitted and (with wait) write each result as it ends.

    Jobs that earlier runs submitted are awaited, not submitted again. A submission the server
    refuses as busy is tried again once queued jobs have ended, for at most `queue_full_seconds`;
    then QueueStayedFull says how far the batch got (run again to resume).
    """
    batch = str(out.path.resolve())
    pending = earlier_jobs(remote, out, journal, batch)
    if pending:
        progress.note(
            f"{len(pending)} rows were submitted as jobs before: awaiting those, not resubmitting"
        )
    submitted_before = {entry.row for entry in pending}
    to_submit = [number for number in out.todo() if number not in submitted_before]
    outcome = JobsOutcome()

    def collect() -> None:
        nonlocal pending
        finished, pending = poll_once(remote, pending)
        for entry, status in finished:
            progress.ended()
            if status is None:
                outcome.failures.append(f"row {entry.row}: job {entry.job_id} expired or was lost")
                continue
            try:
                out.write(entry.row, fetch_prediction(remote, entry, status))
            except JobFailed as error:
                outcome.failures.append(f"row {entry.row}: {error}")

    def pause(state: RetryCallState) -> float:
        """Queue full: the poll interval while our jobs run, else Retry-After (at most 5 s)."""
        if wait and pending:
            return POLL_SECONDS
        error = state.outcome.exception() if state.outcome else None
        return min((error.retry_after if isinstance(error, ServerError) else None) or 1.0, 5.0)

    def drain(_: RetryCallState) -> None:
        """Queue full: write the results of our jobs that ended meanwhile."""
        if wait and pending:
            collect()

    submitting = Retrying(
        retry=retry_if_exception(queue_full),
        wait=pause,
        before_sleep=drain,
        stop=stop_after_delay(queue_full_seconds),
        reraise=True,
    )
    last_poll = time.monotonic()
    for sent, number in enumerate(to_submit):
        try:
            entry = submitting(
                submit_item, remote, out.table.item(number), journal, callback_url, batch, number
            )
        except ServerError as error:
            if not queue_full(error):
                raise
            raise QueueStayedFull(
                f"the server's queue stayed full for {queue_full_seconds:g} s "
                f"(FHE_CLIENT_QUEUE_FULL_SECONDS): {sent} of {len(to_submit)} rows submitted "
                f"now, {len(pending)} jobs still running; run again to resume ({error})"
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
