"""What a clear-model worker process does with one request: parse the JSON body, bound the work
it asks for, load the model (once per process), predict, and answer in plain tuples.

Parsing and predicting happen here, in a process of their own, so neither the memory a body
expands to nor a slow or crashing estimator reaches the API process. Bounds are checked on the
parsed inputs before any frame is built: scikit-learn pads missing columns, so one column of a
million rows would become tens of millions of cells.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fhe.contract.sklearn_files import ModelPolicy
from server.models.clear import ClearModel, InvalidInputs, PredictionFailed, load_clear_model
from server.models.clear_inputs import parse_inputs, predict_strict


@dataclass(frozen=True)
class InputBounds:
    """The most work one clear request may ask for."""

    max_rows: int
    max_cells: int
    max_text_chars: int


@dataclass(frozen=True)
class ClearSource:
    """How a worker loads a clear model: the same directory, name, task and policy as the API."""

    path: str
    name: str
    task: str | None
    columns: tuple[str, ...] | None
    policy: ModelPolicy

    @classmethod
    def of(cls, model: ClearModel) -> ClearSource:
        """The source of a model the API loaded."""
        columns = tuple(model.columns) if model.columns else None
        return cls(str(model.path), model.name, model.task, columns, model.policy)


class InputsTooLarge(InvalidInputs):
    """The inputs ask for more work than the operator's bounds allow."""


Answer = tuple[str, Any, Any]
"""("ok", output, warnings) | ("invalid", message, compat) | ("too_large", message, None) |
("refused", message, compat) (the model refused the inputs' shape) | ("failed", message,
warnings) | ("unloadable", reason, None): plain values cross processes."""

_models: dict[tuple[Any, ...], ClearModel] = {}


def _model(source: ClearSource) -> ClearModel:
    """The model, loaded on first use in this process."""
    policy = source.policy
    key = (source.path, source.name, source.task, policy.allow_pickle, *policy.trusted_types)
    model = _models.get(key)
    if model is None:
        model = load_clear_model(Path(source.path), source.name, policy, source.task)
        _models[key] = model
    return model


def check_bounds(
    task: str | None, columns: tuple[str, ...] | None, inputs: Any, bounds: InputBounds
) -> None:
    """InputsTooLarge when the inputs pass a bound (rows, cells after padding, text length);
    InvalidInputs when they do not have the task's shape."""
    if task == "text-classification":
        if isinstance(inputs, str) and len(inputs) > bounds.max_text_chars:
            raise InputsTooLarge(
                f"the text has {len(inputs)} characters; this server takes at most "
                f"{bounds.max_text_chars} (FHE_SERVER_CLEAR_MAX_TEXT_CHARS)"
            )
        return
    if not isinstance(inputs, dict) or not isinstance(inputs.get("data"), dict):
        return  # the model's own check answers with the usual message
    data = inputs["data"]
    rows = max((len(v) for v in data.values() if isinstance(v, list)), default=0)
    width = len(set(data) | set(columns or ()))
    if rows > bounds.max_rows:
        raise InputsTooLarge(
            f"the inputs have {rows} rows; this server takes at most {bounds.max_rows} per "
            "request (FHE_SERVER_CLEAR_MAX_ROWS)"
        )
    if rows * width > bounds.max_cells:
        raise InputsTooLarge(
            f"the inputs make {rows} rows x {width} columns = {rows * width} cells (missing "
            f"columns are filled in); this server takes at most {bounds.max_cells} "
            "(FHE_SERVER_CLEAR_MAX_CELLS)"
        )


def check_payload(source: ClearSource, payload: bytes, bounds: InputBounds) -> Answer:
    """Parse and bound a body without predicting (a job's admission)."""
    try:
        check_bounds(source.task, source.columns, parse_inputs(payload), bounds)
    except InputsTooLarge as error:
        return "too_large", str(error), None
    except InvalidInputs as error:
        return "invalid", str(error), error.compat
    return "ok", None, None


def predict_payload(source: ClearSource, payload: bytes, bounds: InputBounds) -> Answer:
    """Parse, bound and predict one body."""
    try:
        inputs = parse_inputs(payload)
        check_bounds(source.task, source.columns, inputs, bounds)
    except InputsTooLarge as error:
        return "too_large", str(error), None
    except InvalidInputs as error:
        return "invalid", str(error), error.compat
    model = _model(source)
    if not model.ready:
        return "unloadable", model.load_error, None
    try:
        output, warnings = predict_strict(model, inputs)
    except InvalidInputs as error:
        return "refused", str(error), error.compat
    except PredictionFailed as error:
        return "failed", str(error), error.warnings
    return "ok", output, warnings


def warm(sources: list[ClearSource]) -> None:
    """Load the models and what predicting imports (pandas) now, so that no request's time
    limit pays for them: a worker that replaces a stopped one would otherwise time out again."""
    import pandas  # noqa: F401  (imported by the first tabular prediction otherwise)

    for source in sources:
        model = _model(source)
        example = model.config.get("example_input")
        if model.ready and example is not None:
            text = model.task == "text-classification"
            # A warm-up only: a real request with this input would report its own errors.
            with contextlib.suppress(Exception):
                predict_strict(model, example["data"][0] if text else {"data": example})
