"""The library versions a bundle is built with, recorded so mismatches can be named later."""

from __future__ import annotations

import platform
from importlib.metadata import PackageNotFoundError, version

RECORDED_PACKAGES = (
    "concrete-ml",
    "concrete-python",
    "scikit-learn",
    "xgboost",
    "numpy",
    "torch",
    "transformers",
)


def library_versions() -> dict[str, str]:
    """Installed versions of the packages that shape a bundle, plus the Python version."""
    found = {"python": platform.python_version()}
    for name in RECORDED_PACKAGES:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "not installed"
    return found
