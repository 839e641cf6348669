"""Loading scikit-learn model files under the operator's policy: the audit skops files pass.

The server loads clear models with it and clients load a bundle's preprocessing with it, so a file
that one refuses the other refuses too. Pickle and joblib files run code when loaded: they load
only where the policy allows them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DATA_TYPES = frozenset(
    [
        f"numpy.{name}"
        for name in (
            "bool_", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
            "float16", "float32", "float64", "str_",
        )
    ]
    + [f"scipy.sparse._{kind}.{kind}_matrix" for kind in ("csr", "csc", "coo", "dia", "lil")]
    + ["numpy.dtype", "sklearn.compose._column_transformer._RemainderColsList"]
)  # fmt: skip
"""Plain numpy scalars and scipy sparse matrices: data, not code. skops 0.5.0 does not trust them
by default, yet a classifier trained on integer labels holds one (`classes_`) and an older
TfidfVectorizer a sparse matrix, so they are trusted here; so are a dtype and the list of a
ColumnTransformer's remaining columns, which every fitted ColumnTransformer holds."""


class ModelLoadRefused(RuntimeError):
    """The operator's policy forbids loading this file (pickle not allowed, untrusted types)."""


@dataclass
class ModelPolicy:
    """What the operator allows for one model, and how a refusal tells them to allow more."""

    allow_pickle: bool = False
    trusted_types: list[str] = field(default_factory=list)
    allow_pickle_hint: str = "an operator can allow it with FHE_SERVER_ALLOW_PICKLE"
    trust_hint: str = "an operator can allow them for this model with FHE_SERVER_TRUSTED_TYPES"
    trust_all_hint: str = (
        'an operator who trusts it can set FHE_SERVER_TRUSTED_TYPES=\'{"<model>": ["*"]}\''
    )


def load_estimator(path: Path, model_format: str, policy: ModelPolicy) -> Any:
    """Load a skops file whose types pass the audit, or a pickle the policy allows; else refuse."""
    if model_format == "skops":
        import skops.io as sio

        if "*" in policy.trusted_types:
            return sio.load(path, trusted=True)
        try:
            untrusted = sio.get_untrusted_types(file=path)
        except Exception as error:  # skops 0.5.0 cannot audit some files (numpy Generators)
            raise ModelLoadRefused(
                f"skops could not audit the types in this file ({type(error).__name__}: {error}); "
                + policy.trust_all_hint
            ) from None
        refused = sorted(set(untrusted) - set(policy.trusted_types) - DATA_TYPES)
        if refused:
            raise ModelLoadRefused(
                f"the skops file holds types that are not trusted: {refused}; " + policy.trust_hint
            )
        return sio.load(path, trusted=untrusted or None)
    if model_format == "pickle":
        if not policy.allow_pickle:
            raise ModelLoadRefused(
                "pickle and joblib files run code when loaded, and pickle is not allowed for this "
                "model; " + policy.allow_pickle_hint
            )
        import joblib

        return joblib.load(path)
    raise ModelLoadRefused(f"unknown model_format {model_format!r} (skops or pickle)")
