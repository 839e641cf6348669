"""What key and input compression save: evaluation key and input ciphertext bytes, on and off.

It reads a bundle's `client.zip`, generates keys and encrypts one zero input as shipped (seeded
compression of keys and inputs) and again with every compression switched off in the same client
spec, so both figures come from the same cryptographic parameters. Usage:

    .venv/bin/python -m benchmarks.keys --bundle models/sentiment [--json docs/bench-keys.json]
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Annotated, Any, Optional

import numpy as np
import typer

from fhe.contract.bundle import read_metadata
from fhe.contract.keyset import read_client_specs


def uncompressed(specs: dict[str, Any]) -> dict[str, Any]:
    """The same client spec with seeded compression switched off everywhere."""
    if isinstance(specs, dict):
        return {
            key: "none" if key == "compression" else uncompressed(value)
            for key, value in specs.items()
        }
    if isinstance(specs, list):
        return [uncompressed(value) for value in specs]
    return specs


def sizes(specs: dict[str, Any]) -> dict[str, float]:
    """Keygen seconds, evaluation key bytes and one input ciphertext's bytes for a client spec."""
    from concrete import fhe

    client = fhe.Client(fhe.ClientSpecs.deserialize(json.dumps(specs).encode()))
    started = time.perf_counter()
    client.keygen(force=True)
    keygen = time.perf_counter() - started
    shape = specs["circuits"][0]["inputs"][0]["typeInfo"]["lweCiphertext"]["abstractShape"]
    sample = np.zeros(shape["dimensions"], dtype=np.int64)
    ciphertext = client.encrypt(sample)
    return {
        "keygen_seconds": keygen,
        "evaluation_key_bytes": len(client.evaluation_keys.serialize()),
        "ciphertext_in_bytes": len(ciphertext.serialize()),
    }


def main(
    bundle: Annotated[Path, typer.Option(help="FHE bundle directory")] = Path("models/sentiment"),
    json_out: Annotated[Optional[Path], typer.Option("--json", help="write results here")] = None,
) -> None:
    """Print evaluation key and input ciphertext sizes with compression on and off."""
    specs = read_client_specs(bundle / "client.zip")
    shipped = sizes(specs)
    plain = sizes(uncompressed(specs))
    results = {
        "model": read_metadata(bundle).name,
        "compressed": shipped,
        "uncompressed": plain,
        "evaluation_key_ratio": plain["evaluation_key_bytes"] / shipped["evaluation_key_bytes"],
        "ciphertext_in_ratio": plain["ciphertext_in_bytes"] / shipped["ciphertext_in_bytes"],
    }
    for name in ("evaluation_key_bytes", "ciphertext_in_bytes"):
        typer.echo(
            f"{name:22} compressed {shipped[name]:>13,}  uncompressed {plain[name]:>13,}  "
            f"({plain[name] / shipped[name]:.2f}x)"
        )
    if json_out is not None:
        json_out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    sys.exit(typer.run(main))
