"""A batch of inputs read from CSV (texts, table rows or rows of numbers) and its predictions
CSV, written row by row so that a run cut short (client or server killed) keeps every finished row
and the same command resumes it.

The output holds a `row` column (the input row's number, 1 for the first row after the header,
blank lines not counted), every input column in its order, then `model`, the prediction (`label`
and one `score_<label>` per class; `value` for a regression; `output`, a JSON array, for a raw
model) and `seconds`. Rows are matched to the input by `row`, and a row is
only taken as done when its input columns still equal that input row's, so an output written
from another input, model or column layout is refused rather than mixed.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from client.encrypted_model import Prediction
from client.errors import ClientError
from fhe.contract.atomic import open_atomic

ROW_COLUMN = "row"


@dataclass(frozen=True)
class InputTable:
    """The rows to predict: the input's columns, its rows and the column that holds the text
    (None when each row is a table row, or a row of numbers for a raw model)."""

    source: str
    columns: list[str]
    rows: list[list[str]]
    text_index: int | None
    raw: bool = False

    @classmethod
    def from_csv(cls, path: Path, text_column: str | None) -> InputTable:
        """Read a CSV with a header line; short rows are padded with empty fields.

        Without `text_column`, every row is a table row of its columns.
        """
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.reader(handle)
            columns = next(reader, None)
            if not columns:
                raise ClientError(f"{path} is empty: a header line naming its columns is needed")
            if text_column is not None and text_column not in columns:
                raise ClientError(f"{path} has no column {text_column!r}: {columns}")
            rows = []
            for values in reader:
                if not values:
                    continue
                if len(values) > len(columns):
                    raise ClientError(
                        f"{path} line {reader.line_num} has {len(values)} fields, its header "
                        f"{len(columns)}"
                    )
                rows.append(values + [""] * (len(columns) - len(values)))
        index = columns.index(text_column) if text_column is not None else None
        return cls(str(path), columns, rows, index)

    @classmethod
    def from_texts(cls, texts: list[str]) -> InputTable:
        """Texts given on the command line, as a table with one `text` column."""
        return cls("the texts given", ["text"], [[text] for text in texts], 0)

    @classmethod
    def from_records(cls, source: str, records: list[dict[str, Any]]) -> InputTable:
        """Rows given as JSON objects: every key seen is a column, values kept as text."""
        columns = list(dict.fromkeys(key for record in records for key in record))
        rows = [[_field(record.get(column)) for column in columns] for record in records]
        return cls(source, columns, rows, None)

    @classmethod
    def from_numbers(cls, source: str, rows: list[list[float]]) -> InputTable:
        """Rows of numbers for a raw model, as columns x0, x1, ..."""
        width = len(rows[0]) if rows else 0
        columns = [f"x{index}" for index in range(width)]
        return cls(source, columns, [[repr(value) for value in row] for row in rows], None, True)

    @property
    def texts(self) -> list[str]:
        """The text of each row, in order."""
        return [self.text(number) for number in range(1, len(self.rows) + 1)]

    def text(self, number: int) -> str:
        """The text of one row, by its number (1 for the first)."""
        if self.text_index is None:
            raise ClientError(f"{self.source} holds table rows, not texts")
        return self.rows[number - 1][self.text_index]

    def item(self, number: int) -> Any:
        """What row `number` asks the model: its text, its row (column: value), or its numbers."""
        values = self.rows[number - 1]
        if self.text_index is not None:
            return values[self.text_index]
        if self.raw:
            return [float(value) for value in values]
        return dict(zip(self.columns, values, strict=True))

    @property
    def items(self) -> list[Any]:
        """Every row's item, in order."""
        return [self.item(number) for number in range(1, len(self.rows) + 1)]


def _field(value: Any) -> str:
    """A JSON value as a CSV field: strings as they are, null as empty, others as JSON."""
    if value is None:
        return ""
    return value if isinstance(value, str) else json.dumps(value)


def prediction_columns(task: str, labels: list[str]) -> list[str]:
    """The columns a prediction fills: label and scores, a value, or a raw output array."""
    if task.endswith("classification"):
        return ["label", *[f"score_{label}" for label in labels]]
    if task == "tabular-regression":
        return ["value"]
    return ["output"]


class BatchOutput:
    """The predictions CSV of one batch, appended and flushed one finished row at a time."""

    def __init__(
        self,
        path: Path,
        table: InputTable,
        model: str,
        labels: list[str],
        task: str = "text-classification",
    ) -> None:
        self.path = path
        self.table = table
        self.model = model
        self.labels = labels
        self.task = task
        self.header = [
            ROW_COLUMN,
            *table.columns,
            "model",
            *prediction_columns(task, labels),
            "seconds",
        ]
        taken = set(table.columns) & {ROW_COLUMN, *self.header[len(table.columns) + 1 :]}
        if taken:
            raise ClientError(
                f"{table.source} already has column(s) {sorted(taken)}, which the predictions "
                "need: rename them"
            )
        self.done: dict[int, list[str]] = {}
        self.order: list[int] = []
        self.dropped_partial_line = False
        self._handle: IO[str] | None = None
        self._writer: Any = None
        self._needs_rewrite = False

    @property
    def total(self) -> int:
        """Rows in the input."""
        return len(self.table.rows)

    def _mismatch(self, what: str) -> ClientError:
        return ClientError(
            f"{self.path} {what}: it was written from another input, model or column layout. "
            "Pass --overwrite to replace it, or choose another --output"
        )

    def _check(self, values: list[str]) -> str | None:
        """Why a complete output record cannot belong to this batch, or None when it does."""
        if len(values) != len(self.header):
            return f"has a row of {len(values)} fields, expected {len(self.header)}"
        number = values[0]
        if not (number.isascii() and number.isdigit()) or not 1 <= int(number) <= self.total:
            return f"has a row numbered {number!r}, but the input has rows 1 to {self.total}"
        width = len(self.table.columns)
        if values[1 : 1 + width] != self.table.rows[int(number) - 1]:
            return f"row {number} differs from row {number} of {self.table.source}"
        model, first = values[1 + width], values[2 + width]
        if model != self.model:
            return f"row {number} was predicted by model {model!r}, not {self.model!r}"
        if self.labels and first not in self.labels:
            return f"row {number} has label {first!r}, not one of {self.labels}"
        return None

    def _read(self) -> None:
        """Take the rows already written; drop a partly written last line, refuse anything else."""
        with self.path.open(newline="", encoding="utf-8") as handle:
            text = handle.read()
        header_line = _csv_line(self.header)
        if header_line.startswith(text):
            return
        records = list(csv.reader(io.StringIO(text, newline="")))
        if records[0] != self.header:
            raise self._mismatch(f"has columns {records[0]}, this run writes {self.header}")
        complete_end = text.endswith("\n")
        for index, values in enumerate(records[1:], start=1):
            last = index == len(records) - 1
            if last and (not complete_end or len(values) < len(self.header)):
                self.dropped_partial_line = True
                break
            reason = self._check(values)
            if reason is not None:
                raise self._mismatch(reason)
            number = int(values[0])
            if number in self.done:
                self._needs_rewrite = True
                continue
            self.done[number] = values
            self.order.append(number)

    def open(self, overwrite: bool = False) -> BatchOutput:
        """Read what an earlier run wrote (unless overwrite), repair it, then open for appending."""
        existing = self.path.exists() and not overwrite
        if existing:
            self._read()
        if not existing or self.dropped_partial_line or self._needs_rewrite or not self.done:
            self._rewrite(self.order)
        self._handle = self.path.open("a", newline="", encoding="utf-8")
        self._writer = csv.writer(self._handle)
        return self

    def _rewrite(self, numbers: list[int]) -> None:
        """Replace the file at once by the header and the given done rows, in that order."""
        with open_atomic(self.path, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(self.header)
            writer.writerows(self.done[number] for number in numbers)

    def write(self, number: int, prediction: Prediction) -> None:
        """Append one finished row and flush it, so that no kill can lose it."""
        if self._writer is None or self._handle is None:
            raise RuntimeError("BatchOutput.open() first")
        if prediction.label is not None:
            predicted = [
                prediction.label,
                *[f"{prediction.scores[label]:.6f}" for label in self.labels],
            ]
        elif prediction.value is not None:
            predicted = [repr(prediction.value)]
        else:
            predicted = [json.dumps(prediction.output)]
        values = [
            str(number),
            *self.table.rows[number - 1],
            self.model,
            *predicted,
            f"{prediction.seconds.get('total', 0.0):.3f}",
        ]
        self._writer.writerow(values)
        self._handle.flush()
        self.done[number] = values
        self.order.append(number)

    def todo(self) -> list[int]:
        """Numbers of the input rows not written yet, in input order."""
        return [number for number in range(1, self.total + 1) if number not in self.done]

    def close(self) -> None:
        """Close the file; once every row is done, put the rows in input order."""
        if self._handle is not None:
            self._handle.close()
            self._handle = self._writer = None
        if len(self.done) == self.total and self.order != sorted(self.done):
            self._rewrite(sorted(self.done))

    def __enter__(self) -> BatchOutput:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def _csv_line(values: list[str]) -> str:
    """One record as the csv module writes it, line terminator included."""
    buffer = io.StringIO()
    csv.writer(buffer).writerow(values)
    return buffer.getvalue()
