"""Orthogonal Procrustes similarity for every pair of layers.

For column-centred representations X, Y (n, d) scaled to unit Frobenius norm
(``X~ = X / ||X||_F``), the orthogonal Procrustes problem ``min_Q ||X~ Q - Y~||_F`` over orthogonal
Q has the optimum ``||X~ Q* - Y~||_F^2 = 2 - 2 ||X~^T Y~||_*`` (nuclear norm: the sum of singular
values; Schonemann 1966, used as a distance by Ding et al. 2021 and Williams et al. 2021). We report
the similarity

    PS(X, Y) = ||X~^T Y~||_* = ||X^T Y||_* / (||X||_F ||Y||_F)  in [0, 1]

i.e. ``1 - d^2 / 2`` for the Procrustes distance d of the normalised representations; 1 iff
Y = c X Q for an orthogonal Q and c > 0. ``arccos(PS)`` is Williams et al.'s angular metric.
Invariant to orthogonal transforms, isotropic scaling and translation of either layer. Unlike CKA it
weighs all directions by their singular values once (not squared), so it is less dominated by the top
principal components.

All pairs: when n <= d each layer is first replaced by ``Z = U S`` (n, n) from its thin SVD, which
keeps every ``X_l^T X_m`` singular value; then one block row of cross products per layer
(``Z_l^T [Z_l .. Z_L]``) and one batched ``svdvals`` per block row.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ._input import as_features, degenerate_layers, finish_similarity, warn_degenerate
from .cka import _centred_stack


def procrustes_similarity_matrix(features: Any) -> np.ndarray:
    """Orthogonal Procrustes similarity ``||X_l^T X_m||_* / (||X_l||_F ||X_m||_F)`` for all pairs.

    Args:
        features: (layers L, samples n, dim d), torch or numpy, any float dtype, CPU or CUDA.

    Returns:
        (L, L) float64 numpy, symmetric, in [0, 1], diagonal 1 (column-centred, see module docstring).
    """
    x = as_features(features, min_samples=2)
    n_layers, n, dim = x.shape
    stacked, centred_sq, raw_sq = _centred_stack(x)
    degenerate = degenerate_layers(centred_sq, raw_sq)
    per_layer = stacked.reshape(n, n_layers, dim).permute(1, 0, 2)  # (L, n, d) centred
    del stacked
    norms = torch.sqrt(torch.where(centred_sq > 0, centred_sq, torch.ones_like(centred_sq)))
    per_layer = per_layer / norms[:, None, None]
    if n < dim:  # same singular values of every X_l^T X_m from (n, n) factors
        u, s, _ = torch.linalg.svd(per_layer, full_matrices=False)
        per_layer = u * s[:, None, :]
    width = per_layer.shape[2]
    stacked = per_layer.permute(1, 0, 2).reshape(n, n_layers * width)
    nuclear = torch.zeros(n_layers, n_layers, dtype=torch.float64, device=stacked.device)
    for l in range(n_layers):
        block = per_layer[l].T @ stacked[:, l * width:]  # (w, (L - l) w)
        blocks = block.reshape(width, n_layers - l, width).permute(1, 0, 2)  # (L - l, w, w)
        nuclear[l, l:] = torch.linalg.svdvals(blocks).sum(dim=1)
    nuclear = nuclear + torch.triu(nuclear, diagonal=1).T
    warn_degenerate("procrustes_similarity_matrix", degenerate)
    return finish_similarity(nuclear, degenerate, 0.0, 1.0)
