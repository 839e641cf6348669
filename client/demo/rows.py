"""The row editor of the tabular tab: a table of column, type and value, one line per column of
the model, prefilled from the real example row its card carries."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from fhe.contract.bundle import InputInfo, TabularInput

HEADERS = ["column", "type", "value"]
SHOWN_CHANGES = 3
"""How many edited values a row's description names before it only counts them."""


def cell(value: Any) -> str:
    """A value as the editor shows it: missing (None or NaN) is an empty cell."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return str(value).strip()


def example_lines(info: InputInfo) -> list[list[str]]:
    """The editor's lines for a tabular model's input: each column, its dtype, the example value
    (none for an input that is not a table row)."""
    if not isinstance(info, TabularInput):
        return []
    example = info.example or {}
    return [[column.name, column.dtype, cell(example.get(column.name))] for column in info.columns]


def row_of(lines: Any) -> dict[str, str]:
    """The row (column: value as typed) from the editor's lines; an empty value stays empty, for
    the model's preprocessing to impute or the client to refuse."""
    if hasattr(lines, "to_numpy"):
        lines = lines.to_numpy().tolist()
    row = {}
    for line in lines or []:
        if len(line) >= len(HEADERS) and cell(line[0]):
            row[cell(line[0])] = cell(line[-1])
    return row


def _same(value: str, example: Any) -> bool:
    """Whether an edited value is the example's, as numbers when both are numbers."""
    if value == cell(example):
        return True
    try:
        return float(value) == float(example)
    except (TypeError, ValueError):
        return False


def describe_row(row: Mapping[str, str], example: Mapping[str, Any] | None) -> str:
    """The row in a few words: the example row, which values were edited, or how many."""
    if not example:
        return "your row"
    changed = [name for name, value in row.items() if not _same(value, example.get(name))]
    if not changed:
        return "the example row"
    if len(changed) > SHOWN_CHANGES:
        return f"your row ({len(changed)} values differ from the example)"
    edits = ", ".join(f"{name} {row[name] or 'empty'}" for name in changed)
    return f"the example row with {edits}"
