"""The card of a bare Concrete-ML directory (raw input), which the server writes at run time from
what `client.zip` and `server.zip` say."""

from __future__ import annotations

from fhe.contract.bundle import BundleMetadata, RawInput


def render_raw_card(meta: BundleMetadata) -> str:
    """The card of a bare Concrete-ML directory, from what its files say."""
    info = meta.input
    features = info.features if isinstance(info, RawInput) else "?"
    versions = ", ".join(f"{key} {value}" for key, value in meta.versions.items())
    params = ", ".join(f"{key}={value}" for key, value in sorted(meta.circuit.params.items()))
    return f"""# {meta.name}: encrypted model (raw input)

A Concrete-ML `{meta.circuit.model_type}` ({params}) saved by `FHEModelDev.save()`; served as is,
with this card generated from its `client.zip` and `server.zip`. The client sends an encrypted
array of {features} numbers (one row, features already prepared) and gets back the encrypted,
dequantized output array, which only it can decrypt.

Nothing was measured for this bundle: it came without a model.json.

Versions that built it: {versions}. Client spec (sha256 of `client.zip`):
`{meta.client_spec_sha256}`.
"""
