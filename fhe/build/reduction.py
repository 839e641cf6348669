"""Fitting a text bundle's client-side reduction of the embedding (a PCA) at build time."""

from __future__ import annotations

import numpy as np

from fhe.contract.projection import Projection


def fit_projection(vectors: np.ndarray, width: int, seed: int) -> Projection:
    """PCA of the training embeddings, kept to `width` components."""
    from sklearn.decomposition import PCA

    pca = PCA(width, random_state=seed).fit(vectors)
    return Projection(
        mean=pca.mean_.astype(np.float32),
        components=pca.components_.astype(np.float32),
        explained_variance=float(pca.explained_variance_ratio_.sum()),
    )
