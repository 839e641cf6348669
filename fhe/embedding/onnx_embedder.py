"""The client's embedder without torch: an ONNX export of the exact weights a bundle was trained
with (base plus fine-tuned delta), run with ONNX Runtime and the `tokenizers` library.

A bundle ships its export (`embedder.onnx` with `tokenizer.json`, made at build time by
fhe.embedding.onnx_export and checked against torch there); older bundles without one are
exported once on a client that has torch, and kept under the weights' identity.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

EXPORT_FORMAT = 1


def identity_key(identity: str) -> str:
    """The export's name for an embedder identity (`fhe.embedding.weights.embedder_identity`)."""
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


_exported: dict[tuple[Path, str, int], OnnxEmbedder] = {}
"""Exports loaded in this process: one ONNX Runtime session per file."""


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
    with _loading:
        return _exported.setdefault(
            (cache_dir, identity, max_length), OnnxEmbedder(path, tokenizer, max_length)
        )


_loading = threading.Lock()


def bundled_embedder(onnx_path: Path, tokenizer_path: Path, max_length: int) -> OnnxEmbedder:
    """A bundle's shipped export (already checked by sha256), loaded once per process."""
    key = (onnx_path.parent, onnx_path.name, max_length)
    with _loading:
        found = _exported.get(key)
        if found is None:
            found = _exported[key] = OnnxEmbedder(onnx_path, tokenizer_path, max_length)
        return found
