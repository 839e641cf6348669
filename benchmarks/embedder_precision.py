"""What shipping the embedder as ONNX costs at each precision, on the airline test split.

It exports a text bundle's exact weights (base plus delta) to ONNX as float32 and as int8
(ONNX Runtime's dynamic quantization), embeds every test tweet with torch and with each export,
and reports the file size, embedding time, the largest difference from torch, how many tweets'
quantized circuit inputs change, and, by real FHE on those tweets only (the others are
unchanged by construction), how many labels change and the accuracy moved. Usage:

    .venv/bin/python -m benchmarks.embedder_precision --bundle models/sentiment-linear \
        [--max-fhe-rows 200] [--json docs/bench-embedder-precision.json]
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Annotated, Any, Optional

import numpy as np
import typer

from client.circuit_client import CircuitClient
from fhe.build.circuit import measure_real_fhe
from fhe.build.dataset import load_split
from fhe.contract.bundle import read_metadata
from fhe.contract.outputs import top_classes
from fhe.contract.projection import Projection, circuit_features
from fhe.embedding.onnx_embedder import OnnxEmbedder
from fhe.embedding.onnx_export import export
from fhe.embedding.torch_embedder import TextEmbedder

PRECISIONS = ("float32", "int8")


def _embed_all(embedder: Any, texts: list[str]) -> tuple[np.ndarray, float]:
    started = time.perf_counter()
    vectors = np.vstack([embedder.embed(texts[i : i + 32]) for i in range(0, len(texts), 32)])
    return vectors, time.perf_counter() - started


def measure(bundle: Path, max_fhe_rows: int) -> dict[str, Any]:
    """The figures of each precision against torch, for one text bundle."""
    import fhe.embedding.onnx_export as onnx_export

    metadata = read_metadata(bundle)
    info = metadata.embedding
    assert info is not None, f"{bundle} is not a text bundle"
    torch_embedder = TextEmbedder(
        info.model_id,
        max_length=info.max_length,
        expected_sha256=info.weights_sha256,
        delta=bundle / info.delta_file if info.delta_file else None,
        expected_delta_sha256=info.delta_sha256,
    ).load()
    split = load_split()
    texts, truth = split.test_texts, split.test_labels
    labels = metadata.labels
    reference, torch_seconds = _embed_all(torch_embedder, texts)
    projection = (
        Projection.load(bundle / info.projection.file, info.dimension) if info.projection else None
    )
    rows: dict[str, Any] = {"bundle": bundle.name, "texts": len(texts)}
    rows["torch"] = {"embed_seconds": round(torch_seconds, 2)}
    with tempfile.TemporaryDirectory() as scratch:
        codec = CircuitClient(bundle / "client.zip", Path(scratch) / "keys")

        def quantized(vectors: np.ndarray) -> np.ndarray:
            features = circuit_features(vectors, projection)
            return np.vstack([codec.quantize(features[i : i + 1]) for i in range(len(features))])

        base = quantized(reference)
        onnx_export.INT8_TOLERANCE = float("inf")  # measured here, not refused
        for precision in PRECISIONS:
            path = Path(scratch) / f"{precision}.onnx"
            export(torch_embedder, path, precision)
            onnx = OnnxEmbedder(path, torch_embedder.model_dir / "tokenizer.json", info.max_length)
            vectors, seconds = _embed_all(onnx, texts)
            differ = np.where((quantized(vectors) != base).any(axis=1))[0]
            row: dict[str, Any] = {
                "bytes": path.stat().st_size,
                "embed_seconds": round(seconds, 2),
                "max_difference": float(np.abs(vectors - reference).max()),
                "quantized_inputs_changed": len(differ),
            }
            if 0 < len(differ) <= max_fhe_rows:
                before = measure_real_fhe(bundle, circuit_features(reference[differ], projection))
                after = measure_real_fhe(bundle, circuit_features(vectors[differ], projection))
                expected = np.array([labels.index(label) for label in truth[differ]])
                old, new = top_classes(before.outputs), top_classes(after.outputs)
                row["labels_changed"] = int((old != new).sum())
                row["accuracy_change_points"] = round(
                    100 * float((new == expected).sum() - (old == expected).sum()) / len(texts), 3
                )
            elif len(differ) == 0:
                row["labels_changed"] = 0
                row["accuracy_change_points"] = 0.0
            rows[precision] = row
    return rows


def main(
    bundle: Annotated[Path, typer.Option(help="a text bundle")] = Path("models/sentiment-linear"),
    max_fhe_rows: Annotated[int, typer.Option(help="real FHE on at most this many tweets")] = 1449,
    json_out: Annotated[Optional[Path], typer.Option("--json")] = None,
) -> None:
    """Print the figures, and write them to --json when given."""
    figures = measure(bundle, max_fhe_rows)
    for precision in PRECISIONS:
        row = figures[precision]
        print(
            f"{figures['bundle']} {precision}: {row['bytes'] / 1e6:.1f} MB, embed "
            f"{row['embed_seconds']} s for {figures['texts']} texts (torch "
            f"{figures['torch']['embed_seconds']} s), max difference {row['max_difference']:.2g}, "
            f"quantized inputs changed {row['quantized_inputs_changed']}, labels changed "
            f"{row.get('labels_changed', 'not run')}, accuracy "
            f"{row.get('accuracy_change_points', 'not run')} points"
        )
    if json_out is not None:
        existing = json.loads(json_out.read_text()) if json_out.is_file() else {}
        existing[figures["bundle"]] = figures
        json_out.write_text(json.dumps(existing, indent=2) + "\n")


if __name__ == "__main__":
    typer.run(main)
