"""A batch of texts read from CSV and its predictions CSV, written row by row so that a run cut
short (client or server killed) keeps every finished row and the same command resumes it.

The output holds a `row` column (the input row's number, 1 for the first row after the header,
blank lines not counted), every input column in its order, then `model`, `label`, one
`score_<label>` per class and `seconds`. Rows are matched to the input by `row`, and a row is
only taken as done when its input columns still equal that input row's, so an output written
from another input, model or column layout is refused rather than mixed.
"""

from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from client.encrypted_model import Prediction
from client.errors import ClientError

ROW_COLUMN = "row"


@dataclass(frozen=True)
class InputTable:
    """The rows to classify: the input's columns, its rows and the column that holds the text."""

    source: str
    columns: list[str]
    rows: list[list[str]]
    text_index: int

    @classmethod
    def from_csv(cls, path: Path, text_column: str) -> InputTable:
        """Read a CSV with a header line; short rows are padded with empty fields."""
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.reader(handle)
            columns = next(reader, None)
            if not columns:
                raise ClientError(f"{path} is empty: a header line naming its columns is needed")
            if text_column not in columns:
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
        return cls(str(path), columns, rows, columns.index(text_column))

    @classmethod
    def from_texts(cls, texts: list[str]) -> InputTable:
        """Texts given on the command line, as a table with one `text` column."""
        return cls("the texts given", ["text"], [[text] for text in texts], 0)

    @property
    def texts(self) -> list[str]:
        """The text of each row, in order."""
        return [values[self.text_index] for values in self.rows]

    def text(self, number: int) -> str:
        """The text of one row, by its number (1 for the first)."""
        return self.rows[number - 1][self.text_index]


class BatchOutput:
    """The predictions CSV of one batch, appended and flushed one finished row at a time."""

    def __init__(self, path: Path, table: InputTable, model: str, labels: list[str]) -> None:
        self.path = path
        self.table = table
        self.model = model
        self.labels = labels
        self.header = [
            ROW_COLUMN,
            *table.columns,
            "model",
            "label",
            *[f"score_{label}" for label in labels],
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
        model, label = values[1 + width], values[2 + width]
        if model != self.model:
            return f"row {number} was predicted by model {model!r}, not {self.model!r}"
        if label not in self.labels:
            return f"row {number} has label {label!r}, not one of {self.labels}"
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
        partial = self.path.with_name(f".{self.path.name}.{os.getpid()}.partial")
        with partial.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(self.header)
            writer.writerows(self.done[number] for number in numbers)
        partial.replace(self.path)

    def write(self, number: int, prediction: Prediction) -> None:
        """Append one finished row and flush it, so that no kill can lose it."""
        if self._writer is None or self._handle is None:
            raise RuntimeError("BatchOutput.open() first")
        values = [
            str(number),
            *self.table.rows[number - 1],
            self.model,
            prediction.label,
            *[f"{prediction.scores[label]:.6f}" for label in self.labels],
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
