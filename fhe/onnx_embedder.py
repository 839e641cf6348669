"""The client's fast embedder: the exact weights a bundle was trained with (base plus fine-tuned
delta), exported once to ONNX and run with ONNX Runtime and the `tokenizers` library.

A one-shot `fhe-client predict` otherwise spends seconds importing torch and transformers. The
export runs once per weights (the first prediction pays for it), is checked against the torch
model on sample texts before it is kept, and is cached under the sha256 of the weights, the delta
and the maximum length, so a changed bundle never reuses it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import threading
import warnings
from collections.abc import Callable, Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np

from fhe.embedder import TextEmbedder

CHECK_TEXTS = (
    "I love this airline, the crew was wonderful",
    "worst flight ever, they lost my bag and nobody helped",
    "ok",
)
"""Texts the exported model must embed as the torch model does before it is kept."""
TOLERANCE = 1e-4
"""Largest difference allowed between the ONNX and torch embeddings of the check texts."""
EXPORT_FORMAT = 1


def cache_key(embedder: TextEmbedder) -> str:
    """What names one export: the weights, the delta, the maximum length and this format."""
    return identity_key(embedder.identity)


def identity_key(identity: str) -> str:
    """The export's name for an embedder identity (`fhe.embedder.embedder_identity`)."""
    return hashlib.sha256(f"{identity}:onnx{EXPORT_FORMAT}".encode()).hexdigest()[:32]


class OnnxEmbedder:
    """Mean-pooled sentence embeddings from an ONNX export, as `TextEmbedder.embed` gives them."""

    def __init__(self, onnx_path: Path, tokenizer_path: Path, max_length: int) -> None:
        import onnxruntime
        from tokenizers import Tokenizer

        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3
        self.session = onnxruntime.InferenceSession(
            str(onnx_path), options, providers=["CPUExecutionProvider"]
        )
        self.tokenizer = Tokenizer.from_file(str(tokenizer_path))
        self.tokenizer.enable_truncation(max_length=max_length)
        self.tokenizer.enable_padding()
        self.inputs = {given.name for given in self.session.get_inputs()}
        self._lock = threading.Lock()

    def load(self) -> OnnxEmbedder:
        """Already loaded; here so that callers can treat it as a TextEmbedder."""
        return self

    def embed(
        self, texts: Sequence[str], progress: Callable[[int], None] | None = None
    ) -> np.ndarray:
        """Embed texts in one batch per call; float32, one row per text."""
        with self._lock:
            encoded = self.tokenizer.encode_batch([str(text) for text in texts])
        ids = np.array([item.ids for item in encoded], dtype=np.int64)
        mask = np.array([item.attention_mask for item in encoded], dtype=np.int64)
        feeds = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in self.inputs:
            feeds["token_type_ids"] = np.array([item.type_ids for item in encoded], dtype=np.int64)
        hidden = self.session.run(None, feeds)[0]
        weights = mask[..., None].astype(hidden.dtype)
        pooled = (hidden * weights).sum(axis=1) / np.clip(weights.sum(axis=1), 1e-9, None)
        if progress is not None:
            progress(len(texts))
        return pooled.astype(np.float32)


def export(embedder: TextEmbedder, path: Path) -> None:
    """Export the loaded torch model (delta applied) to ONNX at `path`, checked before kept."""
    import torch

    tokenizer, model = embedder.load()._tokenizer_and_model
    sample = tokenizer(list(CHECK_TEXTS), padding=True, return_tensors="pt")
    names = [name for name in ("input_ids", "attention_mask", "token_type_ids") if name in sample]
    partial = path.with_suffix(f".{os.getpid()}.partial")

    class LastHidden(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
            return self.model(**dict(zip(names, tensors, strict=True))).last_hidden_state

    axes = {name: {0: "batch", 1: "tokens"} for name in names}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's notes on constants, not for the user
        torch.onnx.export(
            LastHidden().eval(),  # export restores this mode on the shared model afterwards
            tuple(sample[name] for name in names),
            str(partial),
            input_names=names,
            output_names=["last_hidden_state"],
            dynamic_axes={**axes, "last_hidden_state": {0: "batch", 1: "tokens"}},
            opset_version=17,
        )
    exported = OnnxEmbedder(partial, embedder.model_dir / "tokenizer.json", embedder.max_length)
    difference = float(
        np.abs(exported.embed(CHECK_TEXTS) - embedder.embed(list(CHECK_TEXTS))).max()
    )
    if difference > TOLERANCE:
        partial.unlink(missing_ok=True)
        raise RuntimeError(f"the ONNX export differs from torch by {difference:g}")
    partial.replace(path)


def cached_onnx_embedder(embedder: TextEmbedder, cache_dir: Path) -> OnnxEmbedder | None:
    """The fast embedder for these weights, exported on first use; None when the weights have no
    tokenizer.json (the torch embedder then serves).

    The export is kept with a copy of the tokenizer, so that `exported_embedder` can load both
    later by the weights' hashes alone, without hashing or even finding the weights again.
    """
    tokenizer = embedder.model_dir / "tokenizer.json"
    if not tokenizer.is_file():
        return None
    key = cache_key(embedder)
    path = cache_dir / f"{key}.onnx"
    kept_tokenizer = cache_dir / f"{key}.tokenizer.json"
    if not path.is_file() or not kept_tokenizer.is_file():
        cache_dir.mkdir(parents=True, exist_ok=True)
        partial = kept_tokenizer.with_suffix(f".{os.getpid()}.partial")
        shutil.copyfile(tokenizer, partial)
        partial.replace(kept_tokenizer)
        if not path.is_file():
            export(embedder, path)
        (cache_dir / f"{key}.json").write_text(
            json.dumps({"identity": embedder.identity, "model": embedder.model_name}) + "\n"
        )
    return exported_embedder(cache_dir, embedder.identity, embedder.max_length)


_exported: dict[tuple[Path, str, int], OnnxEmbedder] = {}


def exported_embedder(cache_dir: Path, identity: str, max_length: int) -> OnnxEmbedder | None:
    """The export made earlier for the weights this identity names, loaded once per process (the
    one place that loads an export); None when there is none yet.

    A bundle's card gives the sha256 of its base weights and delta: when an export for exactly
    those exists (it was checked against torch on those weights, verified by hash, when it was
    made), a one-shot client needs neither the weights nor their 90 MB of hashing.
    """
    found = _exported.get((cache_dir, identity, max_length))
    if found is not None:
        return found
    key = identity_key(identity)
    path, tokenizer = cache_dir / f"{key}.onnx", cache_dir / f"{key}.tokenizer.json"
    if not path.is_file() or not tokenizer.is_file():
        return None
    with _exporting:
        return _exported.setdefault(
            (cache_dir, identity, max_length), OnnxEmbedder(path, tokenizer, max_length)
        )


_exporting = threading.RLock()
"""torch.onnx.export is not thread-safe: the demo's sessions may ask for the embedder at once.
Reentrant, since an export ends by loading through `exported_embedder`, which takes it too."""


@lru_cache(maxsize=4)
def _shared(embedder: TextEmbedder, cache_dir: Path) -> OnnxEmbedder | None:
    try:
        return cached_onnx_embedder(embedder, cache_dir)
    except Exception as error:  # any failure of the export leaves the exact torch path
        warnings.warn(
            f"using the torch embedder: no ONNX export ({type(error).__name__}: {error})",
            stacklevel=3,
        )
        return None


def shared_onnx_embedder(embedder: TextEmbedder, cache_dir: Path) -> OnnxEmbedder | None:
    """One fast embedder per weights for the whole process (the demo's sessions share it),
    made by one thread at a time.

    None, with a warning, when the export fails or differs from torch: the torch embedder, which
    gives the same vectors more slowly, then serves.
    """
    with _exporting:
        return _shared(embedder, cache_dir)
