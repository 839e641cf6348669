"""A fitted linear reduction of a text's embedding (PCA), applied on the client before it
quantizes and encrypts: fewer numbers to encrypt, send and compute on, at no cost to the server.

It travels in the bundle as `embedder-projection.npz` (numpy only, read without pickles), whose
sha256 the card holds; the server hands it to clients as it does the embedder delta.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

PROJECTION_FILE = "embedder-projection.npz"


class UnusableProjection(ValueError):
    """A projection file that is not what a bundle's card describes."""


@dataclass(frozen=True)
class Projection:
    """x -> (x - mean) @ components.T: the embedding's `width` leading principal components."""

    mean: np.ndarray
    components: np.ndarray
    explained_variance: float

    @property
    def width(self) -> int:
        """How many numbers a projected embedding has."""
        return int(self.components.shape[0])

    def apply(self, vectors: np.ndarray) -> np.ndarray:
        """Project embeddings (n x dimension) to n x width, as float32 like the embedder's."""
        return ((np.asarray(vectors, dtype=np.float32) - self.mean) @ self.components.T).astype(
            np.float32
        )

    def save(self, path: Path) -> Path:
        """Write the projection as an .npz of plain float32 arrays."""
        with path.open("wb") as handle:
            np.savez(
                handle,
                mean=self.mean,
                components=self.components,
                explained_variance=np.float32(self.explained_variance),
            )
        return path

    @classmethod
    def load(cls, path: Path, dimension: int) -> Projection:
        """Read and check a projection of `dimension`-wide embeddings; UnusableProjection
        when the file is not an .npz of plain arrays of the right shapes and finite values.

        The members' sizes are bounded before any is read, so a hostile file cannot ask for an
        allocation beyond what a projection of this width can need.
        """
        try:
            with zipfile.ZipFile(path) as archive:
                unpacked = sum(info.file_size for info in archive.infolist())
        except (OSError, zipfile.BadZipFile) as error:
            raise UnusableProjection(f"{path.name} is not a projection: {error}") from None
        if unpacked > 4 * (dimension + 1) * (dimension + 2) + 4096:
            raise UnusableProjection(f"{path.name} unpacks to {unpacked} bytes, too many")
        try:
            with np.load(path, allow_pickle=False) as archive:
                if set(archive.files) != {"mean", "components", "explained_variance"}:
                    raise UnusableProjection(f"{path.name} holds {sorted(archive.files)}")
                mean, components = archive["mean"], archive["components"]
                explained = archive["explained_variance"]
        except UnusableProjection:
            raise
        except Exception as error:  # numpy raises many kinds on a malformed member
            raise UnusableProjection(f"{path.name} is not a projection: {error}") from None
        if mean.dtype != np.float32 or components.dtype != np.float32 or explained.shape != ():
            raise UnusableProjection(f"{path.name} does not hold float32 arrays")
        if mean.shape != (dimension,) or components.ndim != 2:
            raise UnusableProjection(f"{path.name} does not project {dimension}-wide embeddings")
        if components.shape[1] != dimension or not 1 <= components.shape[0] <= dimension:
            raise UnusableProjection(f"{path.name} has components of shape {components.shape}")
        if not (np.isfinite(mean).all() and np.isfinite(components).all()):
            raise UnusableProjection(f"{path.name} holds NaN or infinity")
        return cls(mean=mean, components=components, explained_variance=float(explained))


def circuit_features(vectors: np.ndarray, projection: Projection | None) -> np.ndarray:
    """A text circuit's float input from embeddings: float32, reduced by the bundle's projection
    when it has one. The client and the recipe both call this, so they cannot drift apart."""
    vectors = np.asarray(vectors, dtype=np.float32)
    return vectors if projection is None else projection.apply(vectors)
