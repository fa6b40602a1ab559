"""RBF-kernel CKA for every pair of layers (:func:`rbf_cka_matrix`); linear CKA and the shared helpers
are in :mod:`.cka`."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from ..errors import LayertraceError
from .cka import WORK_BYTES, _centred_stack
from ._input import as_features, degenerate_layers, finish_similarity, warn_degenerate


def _sq_distances(xc: torch.Tensor, sq: torch.Tensor, rows: slice) -> torch.Tensor:
    """Squared Euclidean distances (L, r, n) between samples ``rows`` and all samples, per layer."""
    d2 = sq[:, rows, None] + sq[:, None, :] - 2.0 * (xc[:, rows] @ xc.transpose(1, 2))
    d2 = d2.clamp_min_(0.0)
    idx = torch.arange(rows.start, rows.stop, device=xc.device)
    d2[:, idx - rows.start, idx] = 0.0
    return d2


def _median_bandwidths(xc: torch.Tensor, sq: torch.Tensor, median_samples: int) -> tuple[np.ndarray, list[int]]:
    """Per-layer median pairwise Euclidean distance (over i < j; an evenly spaced subset of at most
    ``median_samples`` samples when n is larger). Returns medians (L,) and layers with no distance."""
    n_layers, n = xc.shape[0], xc.shape[1]
    idx = np.unique(np.linspace(0, n - 1, min(n, median_samples)).round().astype(np.int64))
    sub = xc[:, torch.as_tensor(idx, device=xc.device)]
    sub_sq = sq[:, torch.as_tensor(idx, device=xc.device)]
    m = len(idx)
    iu = torch.triu_indices(m, m, offset=1, device=xc.device)
    medians, empty = np.zeros(n_layers), []
    for l in range(n_layers):
        d2 = _sq_distances(sub[l:l + 1], sub_sq[l:l + 1], slice(0, m))[0]
        dist = torch.sqrt(d2[iu[0], iu[1]]).cpu().numpy()
        med = float(np.median(dist))
        if med == 0.0:  # most samples coincide: fall back to the median of the non-zero distances
            nonzero = dist[dist > 0]
            med = float(np.median(nonzero)) if nonzero.size else 0.0
        if med == 0.0:
            empty.append(l)
            med = 1.0
        medians[l] = med
    return medians, empty


def rbf_cka_matrix(features: Any, sigma: float | Sequence[float] | None = None, *, fraction: float = 0.8,
                   median_samples: int = 4096) -> np.ndarray:
    """Gaussian-kernel (RBF) CKA for every pair of layers (Kornblith et al. 2019), biased HSIC.

    ``K_l[i, j] = exp(-|x_i - x_j|^2 / (2 sigma_l^2))``; ``CKA = <HKH, HLH> / (|HKH|_F |HLH|_F)``.

    Args:
        features: (layers L, samples n, dim d), torch or numpy, any float dtype, CPU or CUDA.
        sigma: ``None`` (default): per layer, ``fraction`` x the median pairwise distance between
            samples (over pairs i < j; Kornblith et al.'s code takes the median over the full matrix,
            diagonal zeros included, which differs by O(1/n)); with n > ``median_samples`` the median
            is taken over an evenly spaced subset of that many samples. A float: the same absolute
            bandwidth for every layer; a sequence of L floats: one per layer.
        fraction: bandwidth as a fraction of the median distance (default 0.8).

    Returns:
        (L, L) float64 numpy, symmetric, in [0, 1], diagonal 1. With the default (relative)
        bandwidth: invariant to orthogonal transforms, isotropic scaling and translation of a layer.

    Cost O(L n^2 d) time; memory stays under ~256 MiB by processing blocks of kernel rows (two passes
    when L n^2 does not fit). Meant for moderate n (a few thousand samples).
    """
    x = as_features(features, min_samples=2)
    n_layers, n, dim = x.shape
    if fraction <= 0:
        raise LayertraceError(f"rbf_cka_matrix: fraction={fraction} must be > 0")
    stacked, centred_sq, raw_sq = _centred_stack(x)
    xc = stacked.reshape(n, n_layers, dim).permute(1, 0, 2).contiguous()  # (L, n, d), centred
    del stacked
    sq = xc.pow(2).sum(dim=2)
    degenerate = degenerate_layers(centred_sq, raw_sq)
    if sigma is None:
        medians, empty = _median_bandwidths(xc, sq, median_samples)
        degenerate = sorted(set(degenerate) | set(empty))
        sigmas = fraction * medians
    else:
        sigmas = np.broadcast_to(np.asarray(sigma, dtype=np.float64), (n_layers,)).copy()
        if sigmas.shape != (n_layers,) or not np.all(sigmas > 0) or not np.all(np.isfinite(sigmas)):
            raise LayertraceError(f"rbf_cka_matrix: sigma must be a positive float or {n_layers} positive floats, got {sigma!r}")
    inv_two_var = torch.as_tensor(1.0 / (2.0 * sigmas**2), dtype=torch.float64, device=xc.device)

    def kernel_rows(rows: slice) -> torch.Tensor:
        return torch.exp(-_sq_distances(xc, sq, rows) * inv_two_var[:, None, None])

    block = max(1, WORK_BYTES // (3 * 8 * n_layers * n))
    gram = torch.zeros(n_layers, n_layers, dtype=torch.float64, device=xc.device)
    if block >= n:  # everything fits: one kernel stack, double-centred, one product
        k = kernel_rows(slice(0, n))
        k = k - k.mean(dim=2, keepdim=True) - k.mean(dim=1, keepdim=True) + k.mean(dim=(1, 2), keepdim=True)
        flat = k.reshape(n_layers, -1)
        gram = flat @ flat.T
    else:  # pass 1: row means (= column means, K is symmetric); pass 2: centred row blocks
        row_means = torch.zeros(n_layers, n, dtype=torch.float64, device=xc.device)
        for start in range(0, n, block):
            rows = slice(start, min(n, start + block))
            row_means[:, rows] = kernel_rows(rows).mean(dim=2)
        grand = row_means.mean(dim=1)
        for start in range(0, n, block):
            rows = slice(start, min(n, start + block))
            k = kernel_rows(rows) - row_means[:, rows, None] - row_means[:, None, :] + grand[:, None, None]
            flat = k.reshape(n_layers, -1)
            gram += flat @ flat.T
    warn_degenerate("rbf_cka_matrix", degenerate)
    return finish_similarity(gram, degenerate, 0.0, 1.0)
