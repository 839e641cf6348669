"""Labelled text data for training: CSV loading, de-duplication and the fixed test split."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import train_test_split

from fhe.contract.digest import file_sha256

DEFAULT_DATA = (
    Path(__file__).resolve().parents[2].parent
    / "shared"
    / "data"
    / ("twitter_airline_sentiment.csv")
)
"""The airline tweets beside the checkout (../shared/data); never copied into the repository."""


@dataclass(frozen=True)
class TextSplit:
    """Train and test texts with their string labels, and where they came from."""

    train_texts: list[str]
    train_labels: np.ndarray
    test_texts: list[str]
    test_labels: np.ndarray
    labels: list[str]
    source: str
    source_sha256: str
    rows_read: int
    rows_kept: int
    test_size: float
    seed: int


def load_split(
    path: Path = DEFAULT_DATA,
    *,
    text_column: str = "text",
    label_column: str = "airline_sentiment",
    id_column: str | None = "tweet_id",
    test_size: float = 0.1,
    seed: int = 42,
) -> TextSplit:
    """Read a CSV, drop rows without text or label, keep the first row per id, split stratified."""
    if not path.is_file():
        raise FileNotFoundError(f"training data not found: {path}")
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    for column in (text_column, label_column):
        if column not in frame.columns:
            raise ValueError(f"{path} has no column {column!r}; columns: {list(frame.columns)}")
    rows_read = len(frame)
    frame = frame[(frame[text_column].str.strip() != "") & (frame[label_column] != "")]
    if id_column and id_column in frame.columns:
        frame = frame.drop_duplicates(subset=id_column, keep="first")
    labels = sorted(frame[label_column].unique().tolist())
    train, test = train_test_split(
        frame, test_size=test_size, random_state=seed, stratify=frame[label_column]
    )
    return TextSplit(
        train_texts=train[text_column].tolist(),
        train_labels=train[label_column].to_numpy(),
        test_texts=test[text_column].tolist(),
        test_labels=test[label_column].to_numpy(),
        labels=labels,
        source=path.name,
        source_sha256=file_sha256(path),
        rows_read=rows_read,
        rows_kept=len(frame),
        test_size=test_size,
        seed=seed,
    )
