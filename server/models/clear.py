"""Clear scikit-learn models in the Hugging Face skops repository layout.

A model directory holds `config.json` (`sklearn.model.file`, `model_format`, `task`, `columns`,
`environment`, `example_input`) and the model file, or only `sklearn_model.joblib`. skops files load
only when every type in them is trusted by skops or allowed by the operator for that model; pickle
and joblib files run code when loaded, so they load only for models the operator allowed.
"""

from __future__ import annotations

import json
import pickle
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fhe.contract.model_card import ModelSummary
from fhe.contract.outputs import column_messages
from fhe.contract.sklearn_files import ModelLoadRefused, ModelPolicy, load_estimator
from fhe.contract.wire import ClearModelCard
from server.models.listing import listing_row

TASKS = ("tabular-classification", "tabular-regression", "text-classification")
DEFAULT_FILENAME = "sklearn_model.joblib"
CONFIG_FILE = "config.json"


class InvalidInputs(ValueError):
    """The request's inputs do not have the shape the task takes.

    `compat` is the message api-inference-community's image would give, where it differs.
    """

    def __init__(self, message: str, compat: str | None = None) -> None:
        super().__init__(message)
        self.compat = compat or message


class PredictionFailed(ValueError):
    """The model raised while predicting; the message is scikit-learn's own."""

    def __init__(self, message: str, warnings: list[str]) -> None:
        super().__init__(message)
        self.warnings = warnings


def is_clear_model_dir(path: Path) -> bool:
    """A directory with a scikit-learn config.json or a sklearn_model.joblib."""
    config = path / CONFIG_FILE
    if config.is_file():
        try:
            return "sklearn" in json.loads(config.read_text())
        except (ValueError, OSError):
            return False
    return (path / DEFAULT_FILENAME).is_file()


def _warning_text(record: warnings.WarningMessage) -> str:
    return f"{record.category.__name__}({record.message})"


@dataclass
class ClearModel:
    """One scikit-learn model: its config, the loaded estimator or why it could not load."""

    name: str
    path: Path
    task: str | None
    config: dict[str, Any]
    model_file: str
    model_format: str
    columns: list[str] | None
    estimator: Any = None
    load_warnings: list[str] = field(default_factory=list)
    load_error: str | None = None
    policy: ModelPolicy = field(default_factory=ModelPolicy)

    kind = "clear"

    @property
    def ready(self) -> bool:
        """True when the estimator loaded."""
        return self.load_error is None

    @property
    def reason(self) -> str | None:
        """Why the model cannot serve, if it cannot."""
        return self.load_error

    @property
    def labels(self) -> list[str]:
        """Class labels of a classifier, as strings."""
        classes = getattr(self.estimator, "classes_", None)
        return [str(label) for label in classes] if classes is not None else []

    @property
    def saved_with(self) -> str | None:
        """The scikit-learn version the config says the model was saved with."""
        for requirement in self.config.get("environment", []):
            name, _, version = str(requirement).partition("=")
            if name.strip().lower() in ("scikit-learn", "sklearn"):
                return version.lstrip("=").strip()
        return None

    def summary(self) -> ModelSummary:
        """The row of the model listing."""
        return listing_row(
            self.name,
            "clear",
            task=self.task,
            input_kind=None if self.task is None else self.task.split("-")[0],
            labels=self.labels,
            columns=self.columns,
            origin=None,
            reason=self.reason,
        )

    def card(self) -> ClearModelCard:
        """The model card: the listing row and how the model was saved and loaded."""
        import sklearn

        readme = self.path / "README.md"
        return ClearModelCard(
            **self.summary().model_dump(exclude={"kind"}),
            format=self.model_format,
            model_file=self.model_file,
            sklearn_saved_with=self.saved_with,
            sklearn_running=sklearn.__version__,
            load_warnings=self.load_warnings,
            example_input=self.config.get("example_input"),
            card=readme.read_text() if readme.is_file() else None,
        )

    def predict(self, inputs: Any) -> tuple[Any, list[str]]:
        """Predict; returns the output and every warning (columns, predicting, loading).

        Raises InvalidInputs for a malformed request and PredictionFailed when the estimator
        raises (for example on NaN from a missing column).
        """
        column_warnings = self._column_warnings(inputs)
        failure = None
        with warnings.catch_warnings(record=True) as records:
            warnings.simplefilter("always")
            try:
                output = self._output(inputs)
            except InvalidInputs:
                raise
            except Exception as error:  # scikit-learn raises many kinds; the message is the point
                failure = str(error)
        found = column_warnings + [_warning_text(record) for record in records] + self.load_warnings
        if failure is not None:
            raise PredictionFailed(failure, found)
        return output, found

    def _column_warnings(self, inputs: Any) -> list[str]:
        if not self.columns or not self.task or not self.task.startswith("tabular"):
            return []
        return column_messages(_tabular_data(inputs).keys(), self.columns)

    def _output(self, inputs: Any) -> Any:
        if self.task == "text-classification":
            if not isinstance(inputs, str):
                raise InvalidInputs("text-classification takes a string in `inputs`")
            scores = self.estimator.predict_proba([inputs]).tolist()[0]
            classes = self.estimator.classes_
            return [[{"label": str(c), "score": s} for c, s in zip(classes, scores, strict=True)]]
        import pandas as pd

        data = _tabular_data(inputs)
        frame = pd.DataFrame(data, columns=self.columns) if self.columns else pd.DataFrame(data)
        return self.estimator.predict(frame).tolist()


def _tabular_data(inputs: Any) -> dict[str, list[Any]]:
    if not isinstance(inputs, dict) or not isinstance(inputs.get("data"), dict):
        raise InvalidInputs('tabular tasks take `inputs` as {"data": {column: [values, ...]}}')
    data = inputs["data"]
    lengths = set()
    for column, values in data.items():
        if not isinstance(values, list):
            raise InvalidInputs(f"column {column!r} must be a list of values")
        lengths.add(len(values))
    if len(lengths) > 1:
        raise InvalidInputs("every column must have the same number of values")
    return data


def load_clear_model(
    path: Path, name: str | None = None, policy: ModelPolicy | None = None, task: str | None = None
) -> ClearModel:
    """Read a model directory; never raises: a load failure is kept and reported on every call."""
    policy = policy or ModelPolicy()
    config: dict[str, Any] = {}
    load_warnings: list[str] = []
    config_path = path / CONFIG_FILE
    if config_path.is_file():
        try:
            config = json.loads(config_path.read_text()).get("sklearn", {})
        except (ValueError, OSError, AttributeError):
            load_warnings.append("UserWarning(`config.json` does not exist or is invalid.)")
    model_file = config.get("model", {}).get("file", DEFAULT_FILENAME)
    model = ClearModel(
        name=name or path.name,
        path=path,
        task=task or config.get("task"),
        config=config,
        model_file=model_file,
        model_format=config.get("model_format", "pickle"),
        columns=config.get("columns"),
        load_warnings=load_warnings,
        policy=policy,
    )
    if model.task is not None and model.task not in TASKS:
        model.load_error = f"unsupported task {model.task!r}; supported: {', '.join(TASKS)}"
        return model
    file = (path / model_file).resolve()
    if not file.is_relative_to(path.resolve()) or not file.is_file():
        model.load_error = f"model file {model_file!r} not found in {path.name}"
        return model
    with warnings.catch_warnings(record=True) as records:
        warnings.simplefilter("always")
        try:
            model.estimator = load_estimator(file, model.model_format, policy)
        except ModelLoadRefused as error:
            model.load_error = str(error)
        except (Exception, pickle.UnpicklingError) as error:  # any failure of a foreign file
            model.load_error = f"{type(error).__name__}: {error}"
    model.load_warnings += [_warning_text(record) for record in records]
    if model.task is None and model.estimator is not None:
        model.task = infer_task(model.estimator)
        if model.task is None:
            model.load_error = "no task in config.json and none can be told from the estimator"
    return model


def infer_task(estimator: Any) -> str | None:
    """The task of a model saved without config.json, told from the estimator itself."""
    from sklearn.base import is_classifier, is_regressor
    from sklearn.feature_extraction.text import CountVectorizer, HashingVectorizer

    steps = getattr(estimator, "steps", [])
    takes_text = bool(steps) and isinstance(steps[0][1], CountVectorizer | HashingVectorizer)
    if is_classifier(estimator):
        return "text-classification" if takes_text else "tabular-classification"
    if is_regressor(estimator) and not takes_text:
        return "tabular-regression"
    return None
