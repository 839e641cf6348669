"""Exporting a torch embedder (base plus delta) to ONNX, checked against torch before it is
kept: into a bundle at build time, or once into a client's cache for a bundle that ships none."""

from __future__ import annotations

import json
import shutil
import threading
import warnings
from functools import lru_cache
from pathlib import Path

import numpy as np

from fhe.contract.atomic import atomic_path
from fhe.contract.bundle import ONNX_EMBEDDER_FILE, TOKENIZER_FILE, OnnxEmbedderInfo
from fhe.contract.digest import file_sha256
from fhe.embedding.onnx_embedder import OnnxEmbedder, exported_embedder, identity_key
from fhe.embedding.torch_embedder import TextEmbedder

CHECK_TEXTS = (
    "I love this airline, the crew was wonderful",
    "worst flight ever, they lost my bag and nobody helped",
    "ok",
)
"""Texts the exported model must embed as the torch model does before it is kept."""
TOLERANCE = 1e-4
"""Largest difference allowed between the ONNX and torch embeddings of the check texts."""
INT8_TOLERANCE = 0.1
"""The same for an export whose weights are quantized to 8 bits."""


def cache_key(embedder: TextEmbedder) -> str:
    """What names one export: the weights, the delta, the maximum length and this format."""
    return identity_key(embedder.identity)


def export(embedder: TextEmbedder, path: Path, precision: str = "float32") -> float:
    """Export the loaded torch model (delta applied) to ONNX at `path`, checked before kept;
    the largest difference from the torch embedding of the check texts.

    `int8` quantizes the weights of the float export with ONNX Runtime's dynamic quantization
    (a quarter of the size), checked against INT8_TOLERANCE instead.
    """
    import torch

    if precision not in ("float32", "int8"):
        raise ValueError(f"precision must be float32 or int8, not {precision!r}")
    tokenizer, model = embedder.load()._tokenizer_and_model
    sample = tokenizer(list(CHECK_TEXTS), padding=True, return_tensors="pt")
    names = [name for name in ("input_ids", "attention_mask", "token_type_ids") if name in sample]

    class LastHidden(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
            return self.model(**dict(zip(names, tensors, strict=True))).last_hidden_state

    axes = {name: {0: "batch", 1: "tokens"} for name in names}
    with atomic_path(path) as partial:
        floats = partial if precision == "float32" else partial.with_suffix(".float.partial")
        try:
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the tracer's notes on constants, not for the user
                torch.onnx.export(
                    LastHidden().eval(),  # export restores this mode on the shared model after
                    tuple(sample[name] for name in names),
                    str(floats),
                    input_names=names,
                    output_names=["last_hidden_state"],
                    dynamic_axes={**axes, "last_hidden_state": {0: "batch", 1: "tokens"}},
                    opset_version=17,
                )
            if precision == "int8":
                from onnxruntime.quantization import QuantType, quantize_dynamic

                quantize_dynamic(str(floats), str(partial), weight_type=QuantType.QInt8)
        finally:
            if floats != partial:
                floats.unlink(missing_ok=True)
        tolerance = TOLERANCE if precision == "float32" else INT8_TOLERANCE
        exported = OnnxEmbedder(partial, embedder.model_dir / "tokenizer.json", embedder.max_length)
        difference = float(
            np.abs(exported.embed(CHECK_TEXTS) - embedder.embed(list(CHECK_TEXTS))).max()
        )
        if difference > tolerance:
            raise RuntimeError(f"the ONNX export differs from torch by {difference:g}")
    return difference


def export_to_bundle(
    embedder: TextEmbedder, bundle_dir: Path, precision: str = "float32"
) -> OnnxEmbedderInfo:
    """Write the bundle's embedder as `embedder.onnx` with its `tokenizer.json`, checked against
    torch, and describe both for the card (clients then never need torch)."""
    tokenizer = embedder.model_dir / TOKENIZER_FILE
    if not tokenizer.is_file():
        raise RuntimeError(f"{embedder.model_dir} has no {TOKENIZER_FILE} to ship with the export")
    onnx_path = bundle_dir / ONNX_EMBEDDER_FILE
    difference = export(embedder, onnx_path, precision)
    shutil.copyfile(tokenizer, bundle_dir / TOKENIZER_FILE)
    return OnnxEmbedderInfo(
        sha256=file_sha256(onnx_path),
        bytes=onnx_path.stat().st_size,
        tokenizer_sha256=file_sha256(bundle_dir / TOKENIZER_FILE),
        tokenizer_bytes=(bundle_dir / TOKENIZER_FILE).stat().st_size,
        precision=precision,
        max_difference=difference,
        tolerance=TOLERANCE if precision == "float32" else INT8_TOLERANCE,
    )


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
        with atomic_path(kept_tokenizer) as partial:
            shutil.copyfile(tokenizer, partial)
        if not path.is_file():
            export(embedder, path)
        (cache_dir / f"{key}.json").write_text(
            json.dumps({"identity": embedder.identity, "model": embedder.model_name}) + "\n"
        )
    return exported_embedder(cache_dir, embedder.identity, embedder.max_length)


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
