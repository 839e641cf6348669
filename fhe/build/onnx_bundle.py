"""Shipping a text bundle's embedder as ONNX with its tokenizer, so that clients embed with ONNX
Runtime and never need torch: the recipe calls it when it writes a bundle, and
`python -m fhe.build.onnx_bundle models/sentiment ...` adds the export to bundles built before.
"""

from __future__ import annotations

from pathlib import Path

from fhe.build.card import render_card
from fhe.contract.bundle import CARD_FILE, OnnxEmbedderInfo, read_metadata, write_metadata
from fhe.embedding.onnx_export import export_to_bundle
from fhe.embedding.torch_embedder import TextEmbedder


def ship_onnx_embedder(
    embedder: TextEmbedder, bundle_dir: Path, precision: str = "float32"
) -> OnnxEmbedderInfo:
    """Export the embedder (its delta applied) into the bundle, checked against torch."""
    return export_to_bundle(embedder.load(), bundle_dir, precision)


def add_to_bundle(bundle_dir: Path, precision: str = "float32") -> OnnxEmbedderInfo:
    """Add the ONNX export to a text bundle written before, from the weights its card names
    (checked by sha256), and render its card again."""
    metadata = read_metadata(bundle_dir)
    info = metadata.embedding
    if info is None:
        raise ValueError(f"{bundle_dir} is not a text bundle")
    delta = bundle_dir / info.delta_file if info.delta_file else None
    embedder = TextEmbedder(
        info.model_id,
        max_length=info.max_length,
        expected_sha256=info.weights_sha256,
        delta=delta,
        expected_delta_sha256=info.delta_sha256,
    )
    info.onnx = ship_onnx_embedder(embedder, bundle_dir, precision)
    write_metadata(bundle_dir, metadata)
    (bundle_dir / CARD_FILE).write_text(render_card(metadata))
    return info.onnx


def main(argv: list[str] | None = None) -> None:
    """Command line: python -m fhe.build.onnx_bundle BUNDLE_DIR... [--precision float32]."""
    import typer

    app = typer.Typer(add_completion=False)

    @app.command()
    def run(
        bundles: list[Path],
        precision: str = typer.Option("float32", help="float32, or int8 (a quarter the size)"),
    ) -> None:
        for bundle in bundles:
            shipped = add_to_bundle(bundle, precision)
            typer.echo(
                f"{bundle}: {shipped.file} {shipped.bytes:,} bytes ({shipped.precision}), "
                f"largest difference from torch {shipped.max_difference:.2g}"
            )

    app(argv)


if __name__ == "__main__":
    main()
