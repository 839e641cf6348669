"""What an encrypted model takes, one adapter per input kind: a text (embedded, then reduced by
the bundle's projection), a table row (columns checked, then preprocessed) or a raw array of
numbers. Each turns the caller's items into the circuit's float inputs on this machine."""

from __future__ import annotations

import importlib.util
import time
from collections.abc import Callable, Iterator, Sequence
from functools import cached_property
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from client.api import FHEServerAPI
from client.errors import ClientError, EmbedderMismatch
from client.row_features import TabularRows, raw_row
from fhe.contract.bundle import (
    EmbeddingInfo,
    InputInfo,
    RawInput,
    TabularInput,
    TextInput,
)
from fhe.contract.projection import Projection, UnusableProjection, circuit_features
from fhe.embedding.onnx_embedder import (
    OnnxEmbedder,
    bundled_embedder,
    exported_embedder,
)
from fhe.embedding.weights import EmbeddingModelMismatch, embedder_identity

EMBED_BATCH = 32
"""Texts embedded at once in a batch prediction."""

Fetch = Callable[[str, str, str, Callable[[], bytes]], Path]
"""(what, sha256, suffix, download) -> a bundle file downloaded once, checked and kept by hash."""


class ModelInput(Protocol):
    """One input kind: how items are checked and turned into the circuit's float inputs."""

    kind: str
    shown_as: str
    """The key an input is shown under in the CLI's JSON: `text`, `row` or `input`."""

    def check(self, item: Any) -> None:
        """ClientError unless `item` is what the model takes."""

    def features(self, item: Any) -> np.ndarray:
        """The circuit's float input (1 x n) for one item."""

    def prepare_many(self, items: Sequence[Any]) -> Iterator[tuple[np.ndarray, float]]:
        """Each item's features and its share of the seconds they took."""

    def warnings(self, items: Sequence[Any]) -> list[str]:
        """What the caller should know about the items before they are encrypted."""

    def warm_up(self) -> None:
        """Load what inputs are prepared with (the embedder, the preprocessing) ahead of use."""


class _OneByOne:
    """Items prepared one at a time, with nothing to warn about."""

    def features(self, item: Any) -> np.ndarray:
        raise NotImplementedError

    def prepare_many(self, items: Sequence[Any]) -> Iterator[tuple[np.ndarray, float]]:
        for item in items:
            started = time.perf_counter()
            yield self.features(item), time.perf_counter() - started

    def warnings(self, items: Sequence[Any]) -> list[str]:
        for item in items:
            self.check(item)
        return []

    def check(self, item: Any) -> None:
        raise NotImplementedError

    def warm_up(self) -> None:
        return None


class TextItems:
    """Texts, embedded by the bundle's own embedder and reduced by its projection."""

    kind = "text"
    shown_as = "text"

    def __init__(
        self,
        model: str,
        info: EmbeddingInfo,
        api: FHEServerAPI,
        fetch: Fetch,
        cache: Path,
        embedding_model: str | None = None,
    ) -> None:
        self.model = model
        self.info = info
        self.api = api
        self.fetch = fetch
        self.cache = cache
        self.embedding_model = embedding_model

    def check(self, item: Any) -> None:
        if not isinstance(item, str):
            raise ClientError(f"model {self.model!r} takes text, not {type(item).__name__}")

    def features(self, item: Any) -> np.ndarray:
        self.check(item)
        return self.embed([item])

    def prepare_many(self, items: Sequence[Any]) -> Iterator[tuple[np.ndarray, float]]:
        """Texts are embedded EMBED_BATCH at a time, which costs far less per text."""
        for start in range(0, len(items), EMBED_BATCH):
            chunk = items[start : start + EMBED_BATCH]
            for item in chunk:
                self.check(item)
            started = time.perf_counter()
            vectors = self.embed(list(chunk))
            share = (time.perf_counter() - started) / len(chunk)
            for vector in vectors:
                yield vector[None, :], share

    def warnings(self, items: Sequence[Any]) -> list[str]:
        return []

    def warm_up(self) -> None:
        self.embedder.load()

    def embed(self, texts: list[str]) -> np.ndarray:
        """The circuit's float inputs for texts: their embeddings, reduced by the bundle's
        projection when it has one."""
        return circuit_features(self.embedder.embed(texts), self.projection)

    @cached_property
    def projection(self) -> Projection | None:
        """The bundle's client-side reduction of the embedding (downloaded once, checked by
        sha256 and shape), or None when the circuit takes the whole embedding."""
        info = self.info.projection
        if info is None:
            return None
        path = self.fetch(
            "projection", info.sha256, ".npz", lambda: self.api.projection(self.model)
        )
        try:
            projection = Projection.load(path, self.info.dimension)
        except UnusableProjection as error:
            raise ClientError(f"the projection of {self.model!r} is unusable: {error}") from None
        if projection.width != info.width:
            raise ClientError(
                f"the projection of {self.model!r} has width {projection.width}, its card says "
                f"{info.width}"
            )
        return projection

    @cached_property
    def embedder(self) -> Any:
        """The embedder the bundle was trained with, loaded once per model object (its files'
        hashes are checked then, not on every batch of texts); weights checked.

        A bundle ships its embedder as ONNX with its tokenizer (made and checked against torch
        when it was built): both are downloaded once, checked by sha256 and kept by hash, and
        run with ONNX Runtime, so the client needs no torch. A bundle without one is exported
        here once from its weights (base plus the bundle's delta), which needs torch.
        """
        info = self.info
        if info.onnx is not None and self.embedding_model is None:
            return self._bundled()
        if self.embedding_model is None:
            identity = embedder_identity(info.weights_sha256, info.delta_sha256, info.max_length)
            ready = exported_embedder(self.cache / "onnx", identity, info.max_length)
            if ready is not None:
                return ready
        return self._exported_here()

    def _bundled(self) -> OnnxEmbedder:
        onnx = self.info.onnx
        assert onnx is not None
        model = self.fetch(
            "ONNX embedder", onnx.sha256, ".onnx", lambda: self.api.embedder_onnx(self.model)
        )
        tokenizer = self.fetch(
            "tokenizer",
            onnx.tokenizer_sha256,
            ".tokenizer.json",
            lambda: self.api.tokenizer(self.model),
        )
        try:
            return bundled_embedder(model, tokenizer, self.info.max_length)
        except Exception as error:  # ONNX Runtime and tokenizers raise their own types
            raise ClientError(
                f"the ONNX embedder of {self.model!r} does not load: "
                f"{type(error).__name__}: {error}"
            ) from None

    def _exported_here(self) -> Any:
        """The bundle's weights exported to ONNX in this client (once), or run in torch."""
        if importlib.util.find_spec("torch") is None:  # a light install (make client-install)
            raise ClientError(
                f"model {self.model!r} ships no ONNX embedder and this client has no torch to "
                "make one; rebuild the bundle (fhe.build.recipe ships one) or install the full "
                "client"
            )
        from fhe.embedding.onnx_export import shared_onnx_embedder
        from fhe.embedding.torch_embedder import shared_embedder

        info = self.info
        delta = None
        if info.delta_sha256:
            delta = self.fetch(
                "embedder delta",
                info.delta_sha256,
                ".safetensors",
                lambda: self.api.embedder_delta(self.model),
            )
        try:
            embedder = shared_embedder(
                self.embedding_model or info.model_id,
                info.max_length,
                info.weights_sha256,
                delta,
                info.delta_sha256,
            )
        except EmbeddingModelMismatch as error:
            raise EmbedderMismatch(str(error)) from None
        fast = shared_onnx_embedder(embedder, self.cache / "onnx")
        return fast if fast is not None else embedder.load()


class TableRows(_OneByOne):
    """Table rows (column: value), checked against the model's columns and preprocessed."""

    kind = "tabular"
    shown_as = "row"

    def __init__(self, model: str, info: TabularInput, api: FHEServerAPI, fetch: Fetch) -> None:
        self.model = model
        self.info = info
        self.api = api
        self.fetch = fetch

    def check(self, item: Any) -> None:
        if not isinstance(item, dict):
            shown = "text" if isinstance(item, str) else type(item).__name__
            raise ClientError(f"model {self.model!r} takes table rows (column: value), not {shown}")

    def features(self, item: Any) -> np.ndarray:
        self.check(item)
        return self.rows.encode(item)

    def warm_up(self) -> None:
        self.rows.encode(self.info.example or {})

    def warnings(self, items: Sequence[Any]) -> list[str]:
        """Extra columns, and missing ones the preprocessing imputes (each said once)."""
        found: list[str] = []
        for item in items:
            self.check(item)
            found += [w for w in self.rows.check_columns(item) if w not in found]
        return found

    @cached_property
    def rows(self) -> TabularRows:
        """The columns and the preprocessing, downloaded once (kept by hash): plain parameters
        where the bundle has them (no scikit-learn needed), else the skops file through the
        same audit the server applies to clear models."""
        from fhe.contract.preprocessing import PlainPreprocessing, UnusablePreprocessing

        info = self.info
        step = info.preprocessing
        if step is None:
            return TabularRows(info)
        if step.plain_sha256:
            path = self.fetch(
                "plain preprocessing",
                step.plain_sha256,
                ".json",
                lambda: self.api.plain_preprocessing(self.model),
            )
            try:
                return TabularRows(info, PlainPreprocessing.load(path))
            except UnusablePreprocessing as error:
                raise ClientError(
                    f"the preprocessing of {self.model!r} is unusable: {error}"
                ) from None
        return TabularRows(info, self._skops(step.sha256))

    def _skops(self, sha256: str) -> Any:
        """A bundle's skops preprocessing, audited; it needs scikit-learn and skops here."""
        from fhe.contract.preprocessing import ModelLoadRefused, load_preprocessing

        if importlib.util.find_spec("skops") is None:  # a light install (make client-install)
            raise ClientError(
                f"model {self.model!r} has its preprocessing only as scikit-learn steps, which "
                "this client cannot run without scikit-learn and skops; install the full client"
            )
        path = self.fetch(
            "preprocessing", sha256, ".skops", lambda: self.api.preprocessing(self.model)
        )
        try:
            return load_preprocessing(path)
        except ModelLoadRefused as error:
            raise ClientError(f"the preprocessing of {self.model!r} was refused: {error}") from None


class RawArrays(_OneByOne):
    """Numbers already prepared: flat, or in the shape the circuit takes."""

    kind = "raw"
    shown_as = "input"

    def __init__(self, model: str, info: RawInput) -> None:
        self.model = model
        self.info = info

    def check(self, item: Any) -> None:
        if isinstance(item, str | dict):
            raise ClientError(f"model {self.model!r} takes a bare array of numbers")

    def features(self, item: Any) -> np.ndarray:
        self.check(item)
        return raw_row(item, self.info.features, shape=self.info.shape or None)


def model_input(
    model: str,
    info: InputInfo,
    api: FHEServerAPI,
    fetch: Fetch,
    cache: Path,
    embedding_model: str | None = None,
) -> ModelInput:
    """The adapter for what the model's card says it takes."""
    if isinstance(info, TextInput):
        return TextItems(model, info.embedding, api, fetch, cache, embedding_model)
    if isinstance(info, TabularInput):
        return TableRows(model, info, api, fetch)
    return RawArrays(model, info)
