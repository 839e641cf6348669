"""`fhe-client predict --output` keeps every finished row when the server dies, and resumes.

Real processes: fhe-server over the shipped `sentiment-linear` bundle, `fhe-client` run as a
subprocess, the server SIGKILLed mid-batch, then a new server (same data dir, new port) and the
same command again. Each server's access log tells how many predictions it served, so a row
predicted twice would show.
"""

from __future__ import annotations

import csv
import json
import re
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from client.batch_csv import BatchOutput, InputTable
from client.encrypted_model import Prediction
from client.errors import ClientError
from client.jobs import JobJournal, JournalEntry
from tests.conftest import REPO, run_client
from tests.support.server_process import BIN, ServerProcess

MODEL = "sentiment-linear"
LABELS = ["negative", "neutral", "positive"]
ROWS = 300
KNOWN = {
    "I love this airline, the crew was wonderful": "positive",
    "worst flight ever, they lost my bag and nobody helped": "negative",
}
"""Texts whose label the shipped model is known to give (the README's examples)."""
POOL = [
    *KNOWN,
    'the captain said "we are number 3 for takeoff", then nothing for an hour',
    "delayed again,\nmissed my connection, and the lounge was closed",
    "thanks @united, smooth flight and an early arrival",
    "what time does the gate open for flight 123?",
    "crew were rude; seat was broken; food was cold",
    "Ünïcödé ✈ great service, merci beaucoup",
    "my bag arrived in pieces",
    'she wrote ""double quotes"" and a trailing comma,',
    "the wifi worked the whole way",
]
"""Eleven texts cycled over the rows: equal texts must get equal predictions, whichever run
predicted them, so a row given another row's prediction would show."""


def input_rows() -> list[list[str]]:
    """The batch: an id, a text with commas, quotes or newlines, a number and a blank column."""
    return [
        [f"id-{number:03d}", POOL[number % len(POOL)], f"{number * 0.25:.2f}", ""]
        for number in range(1, ROWS + 1)
    ]


def write_input(path: Path, rows: list[list[str]]) -> Path:
    """Write the batch as a CSV with a header line."""
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "text", "stars", "note"])
        writer.writerows(rows)
    return path


def read_output(path: Path) -> tuple[list[str], list[list[str]]]:
    """The output's header and its complete rows."""
    with path.open(newline="", encoding="utf-8") as handle:
        records = list(csv.reader(handle))
    return records[0], records[1:]


def complete_rows(path: Path) -> int:
    """Rows fully written so far (0 before the file exists)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return 0
    records = list(csv.reader(text.splitlines(keepends=True)))
    return max(0, len(records) - 1 - (not text.endswith("\n")))


def served(log: Path, route: str) -> int:
    """Successful requests of one route in a server's access log."""
    return len(re.findall(re.escape(route) + r' HTTP/1\.1" 20[02]', log.read_text()))


def flat(text: str) -> str:
    """Whitespace collapsed, so that messages compare whatever the terminal width."""
    return " ".join(text.split())


def check_rows(rows: list[list[str]], expected: list[list[str]], in_order: bool = True) -> None:
    """Rows numbered from 1 (in input order unless told), input columns intact, valid labels,
    and equal predictions for equal texts."""
    numbers = [int(row[0]) for row in rows]
    if in_order:
        assert numbers == list(range(1, len(rows) + 1))
    assert len(set(numbers)) == len(numbers) and set(numbers) <= set(range(1, ROWS + 1))
    by_text: dict[str, list[str]] = {}
    for row in rows:
        number = int(row[0])
        assert row[1:5] == expected[number - 1]
        model, label, scores = row[5], row[6], [float(s) for s in row[7:10]]
        assert model == MODEL and label in LABELS
        assert label == LABELS[scores.index(max(scores))]
        text = row[2]
        if text in KNOWN:
            assert label == KNOWN[text], (number, text, label)
        assert by_text.setdefault(text, row[6:10]) == row[6:10], (number, text)


@pytest.fixture(scope="module")
def linear_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A models directory holding only the shipped sentiment-linear bundle (a light server)."""
    root = tmp_path_factory.mktemp("linear-models")
    (root / MODEL).symlink_to(REPO / "models" / MODEL)
    return root


def start_client(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    """`fhe-client ARGS` in the background, stdout and stderr into one log file."""
    with log.open("w") as handle:
        return subprocess.Popen(
            [str(BIN / "fhe-client"), *args], env=env, stdout=handle, stderr=subprocess.STDOUT
        )


def wait_until(condition: Callable[[], bool], client: subprocess.Popen, log: Path) -> None:
    """Poll until condition holds; fail if the client ends first or after ten minutes."""
    deadline = time.monotonic() + 600
    while not condition():
        if client.poll() is not None:
            pytest.fail(f"client ended before the kill: {log.read_text()[-3000:]}")
        if time.monotonic() > deadline:
            client.kill()
            pytest.fail("the batch did not get far enough in ten minutes")
        time.sleep(0.02)


def interrupted(client: subprocess.Popen, log: Path) -> int:
    """Wait for the client after the kill; check its message and return its rows done."""
    try:
        assert client.wait(timeout=300) != 0
    except subprocess.TimeoutExpired:
        client.kill()
        pytest.fail(f"client still running five minutes after the kill: {log.read_text()[-3000:]}")
    said = flat(log.read_text())
    assert "cannot reach fhe-server" in said, said
    assert "run the same command again to resume" in said, said
    assert "Traceback" not in said, said
    found = re.search(rf"(\d+) of {ROWS} rows are in \S*out\.csv", said)
    assert found, said
    return int(found.group(1))


@pytest.mark.fhe
def test_killed_server_then_rerun_resumes_without_redoing_rows(
    linear_models: Path, client_env: dict[str, str], tmp_path: Path
) -> None:
    expected = input_rows()
    source = write_input(tmp_path / "in.csv", expected)
    out = tmp_path / "out.csv"
    data = tmp_path / "server-data"
    first = ServerProcess(linear_models, data).start()
    try:
        args = ["predict", "--model", MODEL, "--input", str(source), "--text-column", "text"]
        args += ["--output", str(out)]
        log = tmp_path / "client-1.log"
        client = start_client([*args, "--server", first.url], client_env, log)
        wait_until(lambda: complete_rows(out) >= 50, client, log)
        first.kill()
        done = interrupted(client, log)
    finally:
        first.stop()
    header, rows = read_output(out)
    scores = [f"score_{label}" for label in LABELS]
    assert header == ["row", "id", "text", "stars", "note", "model", "label", *scores, "seconds"]
    assert 50 <= len(rows) == done < ROWS
    check_rows(rows, expected)

    with out.open("a", newline="", encoding="utf-8") as handle:
        handle.write(f'{done + 1},id-cut,"a row cut short by a kill, mid-')
    second = ServerProcess(linear_models, data).start()
    try:
        rerun = run_client([*args, "--server", second.url], client_env)
        said = flat(rerun.stderr)
        assert rerun.returncode == 0, said
        assert f"resuming: {done} of {ROWS} rows already in {out}" in said
        assert f"dropped the partly written last line of {out}" in said
        assert served(second.log, f"POST /v1/models/{MODEL}/predict") == ROWS - done
        header_after, rows = read_output(out)
        assert header_after == header and len(rows) == ROWS
        check_rows(rows, expected)

        before = out.read_bytes()
        changed = [list(row) for row in expected]
        changed[4][1] = "an edited text"
        other = write_input(tmp_path / "other.csv", changed)
        other_args = ["predict", "--model", MODEL, "--input", str(other), "--output", str(out)]
        refused = run_client([*other_args, "--server", second.url], client_env)
    finally:
        second.stop()
    said = flat(refused.stderr)
    assert refused.returncode == 1 and "row 5 differs from row 5" in said, said
    assert "--overwrite" in said and out.read_bytes() == before


@pytest.mark.fhe
def test_async_batch_resumes_from_the_journal(
    linear_models: Path, client_env: dict[str, str], tmp_path: Path
) -> None:
    expected = input_rows()
    source = write_input(tmp_path / "in.csv", expected)
    out = tmp_path / "out.csv"
    journal = JobJournal(Path(client_env["FHE_CLIENT_CACHE"]))
    batch = str(out.resolve())
    data = tmp_path / "server-data"
    first = ServerProcess(linear_models, data).start()
    try:
        args = ["predict", "--async", "--model", MODEL, "--input", str(source)]
        args += ["--output", str(out)]
        log = tmp_path / "client-1.log"
        client = start_client([*args, "--server", first.url], client_env, log)

        def far_enough() -> bool:
            written = complete_rows(out)
            return written >= 50 and len(journal.batch(batch)) >= written + 3

        wait_until(far_enough, client, log)
        first.kill()
        done = interrupted(client, log)
    finally:
        first.stop()
    submitted = len(journal.batch(batch))
    assert 50 <= done < submitted < ROWS
    _, rows = read_output(out)
    assert len(rows) == done
    check_rows(rows, expected, in_order=False)

    second = ServerProcess(linear_models, data).start()
    try:
        rerun = run_client([*args, "--server", second.url], client_env)
    finally:
        second.stop()
    said = flat(rerun.stderr)
    assert rerun.returncode == 0, said
    assert f"resuming: {done} of {ROWS} rows already in {out}" in said
    assert f"{submitted - done} rows were submitted as jobs before" in said
    assert served(second.log, f"POST /v1/models/{MODEL}/jobs") == ROWS - submitted
    assert served(second.log, "/result") == ROWS - done
    assert len(journal.batch(batch)) == ROWS
    _, rows = read_output(out)
    check_rows(rows, expected)


def prediction(label: str) -> Prediction:
    """A made-up prediction, for the file tests that run no model."""
    scores = {name: 0.9 if name == label else 0.05 for name in LABELS}
    return Prediction(input="", label=label, scores=scores, seconds={"total": 0.1})


@pytest.fixture
def table() -> InputTable:
    """Two rows; the second's text holds quotes and a Windows line break."""
    return InputTable("in.csv", ["id", "text"], [["a", "x, y"], ["b", 'say "hi"\r\nbye']], 1)


@pytest.mark.fast
def test_output_refuses_another_input_model_or_layout(table: InputTable, tmp_path: Path) -> None:
    out = tmp_path / "out.csv"
    with BatchOutput(out, table, MODEL, LABELS).open() as batch:
        batch.write(1, prediction("positive"))
    before = out.read_bytes()
    other = InputTable("in.csv", ["id", "text"], [["a", "x, z"], ["b", "c"]], 1)
    cases = [
        (BatchOutput(out, other, MODEL, LABELS), "row 1 differs from row 1 of in.csv"),
        (BatchOutput(out, table, "sentiment", LABELS), "predicted by model 'sentiment-linear'"),
        (BatchOutput(out, table, MODEL, ["bad", "good"]), "has columns"),
    ]
    for batch, reason in cases:
        with pytest.raises(ClientError, match="--overwrite") as refused:
            batch.open()
        assert reason in str(refused.value)
        assert out.read_bytes() == before
    with BatchOutput(out, other, MODEL, LABELS).open(overwrite=True) as batch:
        assert batch.done == {} and batch.todo() == [1, 2]
    assert read_output(out) == (batch.header, [])

    mine = tmp_path / "notes.txt"
    mine.write_text("not a predictions file\n")
    with pytest.raises(ClientError, match="--overwrite"):
        BatchOutput(mine, table, MODEL, LABELS).open()
    assert mine.read_text() == "not a predictions file\n"
    clash = InputTable("in.csv", ["row", "label"], [["1", "x"]], 1)
    with pytest.raises(ClientError, match=r"already has column\(s\) \['label', 'row'\]"):
        BatchOutput(tmp_path / "x.csv", clash, MODEL, LABELS)


@pytest.mark.fast
@pytest.mark.parametrize(
    "cut", ['2,b,"say ""hi""', '2,b,"say ""hi""\n', "2,b", '2,b,"say ""hi""\nbye",sentiment-li']
)
def test_partly_written_last_line_is_dropped(table: InputTable, tmp_path: Path, cut: str) -> None:
    out = tmp_path / "out.csv"
    with BatchOutput(out, table, MODEL, LABELS).open() as batch:
        batch.write(1, prediction("negative"))
    whole = out.read_text()
    with out.open("a", newline="") as handle:
        handle.write(cut)
    with BatchOutput(out, table, MODEL, LABELS).open() as batch:
        assert batch.dropped_partial_line and list(batch.done) == [1] and batch.todo() == [2]
        assert out.read_text() == whole
        batch.write(2, prediction("neutral"))
    _, rows = read_output(out)
    assert [row[:3] for row in rows] == [["1", "a", "x, y"], ["2", "b", 'say "hi"\r\nbye']]


@pytest.mark.fast
def test_partial_header_starts_over_and_rows_end_in_input_order(
    table: InputTable, tmp_path: Path
) -> None:
    out = tmp_path / "out.csv"
    out.write_text("row,id,te")
    with BatchOutput(out, table, MODEL, LABELS).open() as batch:
        assert batch.done == {} and not batch.dropped_partial_line
        batch.write(2, prediction("positive"))
    with BatchOutput(out, table, MODEL, LABELS).open() as batch:
        assert list(batch.done) == [2]
        batch.write(1, prediction("negative"))
    _, rows = read_output(out)
    assert [(row[0], row[4]) for row in rows] == [("1", "negative"), ("2", "positive")]


@pytest.mark.fast
def test_journal_line_cut_by_a_kill_does_not_swallow_the_next(tmp_path: Path) -> None:
    journal = JobJournal(tmp_path)
    entry = JournalEntry("a" * 32, "http://s", MODEL, "text", 1.0, 10, "out.csv", 1, "k")
    journal.add(entry)
    with journal.path.open("a") as handle:
        handle.write(json.dumps({"job_id": "b" * 32})[:12])
    journal.add(JournalEntry("c" * 32, "http://s", MODEL, "text", 2.0, 10, "out.csv", 1, "k"))
    old = {"job_id": "d" * 32, "server": "http://s", "model": MODEL, "text": "t"}
    with journal.path.open("a") as handle:
        handle.write(json.dumps({**old, "submitted": 3.0, "ciphertext_in_bytes": 1}) + "\n")
    assert [e.job_id for e in journal.entries()] == ["a" * 32, "c" * 32, "d" * 32]
    assert journal.batch("out.csv") == {1: journal.entries()[1]}


@pytest.mark.fhe
def test_a_queue_that_stays_full_stops_the_batch_which_then_resumes(
    client_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    """The server's queue holds one job and one worker runs the 1.4 s circuit: a batch that
    may wait 0 s for room stops at the first refusal, saying how far it got; the same command
    with patience then finishes every row, awaiting what was submitted before."""
    models = tmp_path_factory.mktemp("tree-models")
    (models / "sentiment").symlink_to(REPO / "models" / "sentiment")
    env = {"FHE_SERVER_WORKERS": "1", "FHE_SERVER_MAX_QUEUED_JOBS": "1"}
    server = ServerProcess(models, tmp_path / "server-data", env=env).start()
    expected = input_rows()[:4]
    source = write_input(tmp_path / "in.csv", expected)
    out = tmp_path / "out.csv"
    args = ["predict", "--async", "--model", "sentiment", "--input", str(source)]
    args += ["--output", str(out), "--server", server.url]
    try:
        # One try per request: the busy answer reaches the batch, which may wait 0 s for room.
        no_wait = {"FHE_CLIENT_QUEUE_FULL_SECONDS": "0", "FHE_CLIENT_RETRY_ATTEMPTS": "1"}
        impatient = run_client(args, {**client_env, **no_wait})
        said = flat(impatient.stderr)
        assert impatient.returncode == 1, said
        assert "queue stayed full for 0 s" in said and "run again to resume" in said
        assert "rows submitted now" in said
        patient = run_client(args, client_env)
    finally:
        server.stop()
    said = flat(patient.stderr)
    assert patient.returncode == 0, said
    assert "rows were submitted as jobs before: awaiting those, not resubmitting" in said
    _, rows = read_output(out)
    assert [int(row[0]) for row in rows] == list(range(1, 5))
    for row in rows:
        assert row[1:5] == expected[int(row[0]) - 1] and row[5] == "sentiment"
        assert row[6] == KNOWN.get(row[2], row[6]) and row[6] in LABELS


def test_async_without_output_waits_for_room_in_a_full_queue(
    client_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    """`--async` without --output takes the same job path as with it: the server's queue holds
    one job, so each submission after the first is refused as busy until a job ends; the batch
    waits for room (no retries of the request itself), then shows every text's label; without
    patience it stops at the first refusal instead."""
    models = tmp_path_factory.mktemp("tree-models")
    (models / "sentiment").symlink_to(REPO / "models" / "sentiment")
    env = {"FHE_SERVER_WORKERS": "1", "FHE_SERVER_MAX_QUEUED_JOBS": "1"}
    server = ServerProcess(models, tmp_path / "server-data", env=env).start()
    texts = [*KNOWN, *KNOWN]
    args = ["predict", "--async", "--json", "--model", "sentiment", *texts]
    args += ["--server", server.url]
    one_try = {"FHE_CLIENT_RETRY_ATTEMPTS": "1"}
    try:
        impatient = run_client(
            args, {**client_env, **one_try, "FHE_CLIENT_QUEUE_FULL_SECONDS": "0"}
        )
        patient = run_client(args, {**client_env, **one_try})
    finally:
        server.stop()
    said = flat(impatient.stderr)
    assert impatient.returncode == 1, said
    assert "queue stayed full for 0 s" in said and "inputs submitted now" in said, said
    assert "`fhe-client jobs` lists them" in said, said
    assert patient.returncode == 0, flat(patient.stderr)
    shown = [json.loads(line) for line in patient.stdout.splitlines()]
    assert sorted((p["text"], p["label"]) for p in shown) == sorted(
        (text, KNOWN[text]) for text in texts
    )
