"""Mutual k-nearest-neighbour alignment between every pair of layers.

The k-NN overlap of the "platonic representation" line of work (Huh et al. 2024): for each sample i
take its k nearest other samples at layer l and at layer m (cosine similarity of the raw vectors,
as their code: unit-normalise each vector, rank by inner product), and average the shared fraction::

    MKNN(l, m) = 1 / n * sum_i |N_l(i) & N_m(i)| / k          in [0, 1], MKNN(l, l) = 1

It compares neighbourhoods only, so it is invariant to anything that keeps every sample's cosine
ranking: an orthogonal transform or positive scaling of a layer, and positive scaling of single
vectors; not to translations (cosines to the origin change). Chance level is about k / (n - 1).

All pairs from one product per block of samples: the 0/1 neighbour indicators (L, r, n) of a block of
r samples, flattened, give ``A A^T`` = shared-neighbour counts of every pair.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..errors import LayertraceError
from ._input import as_features, degenerate_layers, finish_similarity, layer_means, warn_degenerate

DEFAULT_K = 10

#: Samples per block of the neighbour search (memory: L x block x n floats).
KNN_BLOCK_ROWS = 512


def mutual_knn_matrix(features: Any, k: int = DEFAULT_K) -> np.ndarray:
    """Mutual k-NN alignment for every pair of layers.

    Args:
        features: (layers L, samples n, dim d), torch or numpy, any float dtype, CPU or CUDA; n >= 2.
        k: neighbours per sample (Huh et al. use 10); capped at n - 1.

    Returns:
        (L, L) float64 numpy, symmetric, in [0, 1], diagonal 1. A layer whose vectors do not vary
        over samples (no neighbourhood structure) gets 0 off the diagonal, with a
        :class:`~layertrace.metrics.DegenerateLayerWarning`. A zero vector has cosine 0 with every sample.
    """
    x = as_features(features, min_samples=2)
    n_layers, n, dim = x.shape
    if int(k) < 1:
        raise LayertraceError(f"mutual_knn_matrix: k={k} must be >= 1")
    k = min(int(k), n - 1)
    unit = x.to(torch.float64)
    norms = torch.linalg.vector_norm(unit, dim=2, keepdim=True)
    unit = unit / torch.where(norms > 0, norms, torch.ones_like(norms))
    # degenerate: no variation over samples (centred sum of squares negligible beside the raw one)
    means = layer_means(x)
    centred_sq = torch.stack([(x[l].to(torch.float64) - means[l]).pow(2).sum() for l in range(n_layers)])
    raw_sq = norms.squeeze(2).pow(2).sum(dim=1)
    degenerate = degenerate_layers(centred_sq, raw_sq)
    shared = torch.zeros(n_layers, n_layers, dtype=torch.float64, device=x.device)
    for start in range(0, n, KNN_BLOCK_ROWS):
        stop = min(n, start + KNN_BLOCK_ROWS)
        sims = unit[:, start:stop] @ unit.transpose(1, 2)  # (L, r, n)
        rows = torch.arange(stop - start, device=x.device)
        sims[:, rows, rows + start] = -float("inf")  # a sample is not its own neighbour
        idx = sims.topk(k, dim=2).indices  # (L, r, k)
        hits = torch.zeros_like(sims).scatter_(2, idx, 1.0).reshape(n_layers, -1)
        shared += hits @ hits.T
    warn_degenerate("mutual_knn_matrix", degenerate)
    # shared[l, l] = n k, so finish_similarity's normalisation divides by exactly n k
    return finish_similarity(shared, degenerate, 0.0, 1.0)
