"""Permutation-null calibrated COS and CKA for every layer pair, the nulls computed in bulk.

Raw similarity is inflated at small sample counts and by width (CKA of two unrelated 384-dim layers
is far from 0 at n = 500). The calibration of the ``calibrated-similarity`` package (its
Algorithm 1, ``calibrate``), applied to every pair (l, m) at once:

1. the observed score ``s = sim(X_l, X_m)``;
2. a null of K scores ``sim(X_l, X_m[pi_k])``: the samples of the later layer m reordered by K
   seeded permutations, which breaks the sample correspondence and keeps everything else;
3. ``tau`` = the ceil((1 - alpha)(K + 1))-th smallest of the K + 1 values {s, null} (alpha = 0.05:
   the 95 % quantile); ``p = (1 + #{null >= s}) / (K + 1)``;
4. the calibrated score ``clip((s - tau) / (1 - tau), 0, 1)``: 0 when the pair is not more similar
   than chance at level alpha, 1 for identical layers.

Bulk: the same K permutations serve every pair, so each permutation costs ONE stacked product for
all L^2 pairs (COS: ``U U_pi^T`` over the (L, n d) unit vectors; linear CKA: ``G G_pi^T`` over the
(L, n^2) centred Gram matrices, gathered, never recomputed), not L (L - 1) / 2 metric calls. The
permutations are ``torch.randperm(n, generator=torch.Generator().manual_seed(seed))`` drawn K times
in order, exactly the sequence ``calibrated_similarity.calibrate(..., generator=)`` draws for one pair
from a generator seeded the same way (tests/metrics/test_calibration.py checks the package).

Minibatch CKA's null is streamed with the estimate: ``MinibatchCKA(L, null_permutations=K)``
permutes rows within each batch (a block permutation; the estimator never pairs samples across
batches anyway).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..errors import LayertraceError, did_you_mean
from ._input import as_features, degenerate_layers
from .cka import PermutedGrams, _centred_stack, _check_precision, _multiply_dtype, inner_products
from .permutations import (  # noqa: F401  (re-exported: layertrace.metrics.calibration.ALPHA, ...)
    ALPHA,
    DEFAULT_PERMUTATIONS,
    calibrate_scores,
    check_permutations,
    draw_permutations,
    seeded_permutations,
)

CALIBRATED_METRICS = ("cos", "linear_cka")

#: Largest float (L, n, n) Gram stack the exact-CKA null holds (bytes); above it, subsample first.
NULL_GRAM_MAX_BYTES = 2 * 2**30


def _mirror_upper(null: torch.Tensor) -> torch.Tensor:
    """(K, L, L): keep l < m (pair (l, m) permutes layer m), mirror it below, diagonal 1."""
    upper = torch.triu(null, diagonal=1)
    out = upper + upper.transpose(1, 2)
    out.diagonal(dim1=1, dim2=2).fill_(1.0)
    return out


def cos_null(features: Any, perms: torch.Tensor, center: str = "mean", precision: str = "auto") -> np.ndarray:
    """(K, L, L) COS of every pair with the later layer's samples reordered by each permutation.

    ``null[k, l, m] = mean_i cos(h_l(i) - c_l, h_m(perms[k, i]) - c_m)`` over the samples whose
    centred vectors are non-zero at both (the rule of :func:`cos_matrix`), for l < m; mirrored, diagonal 1.
    """
    from .cos import _check_center, _unit_chunks

    x = as_features(features)
    n_layers, n, dim = x.shape
    _check_center(center)
    units, valids = zip(*_unit_chunks(x, center))
    unit = torch.cat(units, dim=1)  # (L, n, d) float64
    valid = torch.cat(valids, dim=1).to(torch.float64)  # (L, n)
    dtype = _multiply_dtype(_check_precision(precision), n_layers * n_layers * n * dim)
    flat = unit.reshape(n_layers, -1).to(dtype)
    moving = unit.to(dtype)
    out = torch.empty(len(perms), n_layers, n_layers, dtype=torch.float64)
    for k, perm in enumerate(perms.to(x.device)):
        sums = inner_products(flat, moving[:, perm].reshape(n_layers, -1))
        counts = valid @ valid[:, perm].T
        out[k] = torch.where(counts > 0, sums / counts.clamp(min=1.0), torch.zeros_like(sums)).cpu()
    return _mirror_upper(out.clamp(-1.0, 1.0)).numpy()


def linear_cka_null(features: Any, perms: torch.Tensor, precision: str = "auto") -> np.ndarray:
    """(K, L, L) exact linear CKA of every pair with the later layer's samples reordered by each permutation.

    The centred Gram matrices (L, n, n) are computed once; each permutation gathers them
    (``K_m[pi][:, pi]`` is the Gram of ``X_m[pi]``) and takes one (L, n^2 / 2) x (n^2 / 2, L) product.
    Memory: two (L, n, n) stacks (float32 on the float32 path): refused above NULL_GRAM_MAX_BYTES.
    (See :class:`~layertrace.metrics.cka.PermutedGrams`: only the upper triangle is gathered.)
    """
    x = as_features(features, min_samples=2)
    n_layers, n, dim = x.shape
    dtype = _multiply_dtype(_check_precision(precision), n_layers * n * n * dim)
    need = 2 * n_layers * n * n * (4 if dtype == torch.float32 else 8)
    if need > NULL_GRAM_MAX_BYTES:
        raise LayertraceError(
            f"linear CKA permutation null: {n_layers} layers x {n} samples needs {need / 2**30:.1f} GiB of Gram "
            f"matrices (limit {NULL_GRAM_MAX_BYTES / 2**30:.0f} GiB); calibrate on a subsample of the samples "
            f"(e.g. 2000) or use MinibatchCKA(null_permutations=K)")
    stacked, centred_sq, raw_sq = _centred_stack(x)
    per_layer = stacked.reshape(n, n_layers, dim).permute(1, 0, 2).to(dtype)
    del stacked
    grams = per_layer @ per_layer.transpose(1, 2)  # (L, n, n)
    self_sq = torch.stack([g.to(torch.float64).pow(2).sum() for g in grams])  # ||K_l||_F^2, float64 sums
    permuted = PermutedGrams(grams)
    out = torch.empty(len(perms), n_layers, n_layers, dtype=torch.float64)
    for k, perm in enumerate(perms.to(x.device)):
        out[k] = permuted.products(perm).cpu()
    # not finish_similarity: it symmetrises, and (l, m) and (m, l) here permute different layers
    scale = torch.sqrt(torch.where(self_sq > 0, self_sq, torch.ones_like(self_sq))).cpu()
    out = (out / scale[:, None] / scale[None, :]).clamp(0.0, 1.0)
    for layer in degenerate_layers(centred_sq, raw_sq):
        out[:, layer, :] = 0.0
        out[:, :, layer] = 0.0
    return _mirror_upper(out).numpy()


def calibrated_similarity(features: Any, metric: str = "linear_cka", *,
                          n_permutations: int = DEFAULT_PERMUTATIONS, seed: int = 0, alpha: float = ALPHA,
                          permutations: Any = None, center: str = "mean", precision: str = "auto") -> dict[str, Any]:
    """Permutation-null calibrated COS or exact linear CKA for every pair of layers.

    Args:
        features: (layers L, samples n, dim d), torch or numpy, any float dtype, CPU or CUDA.
        metric: ``"linear_cka"`` (exact, column-centred) or ``"cos"`` (the paper's COS, ``center``).
        n_permutations: K (ignored when ``permutations`` is given).
        seed: seeds the K permutations (see :func:`seeded_permutations`).
        alpha: tau is the (1 - alpha) quantile of observed + null.
        permutations: optional (K, n) row permutations to use instead of seeded ones.
        center: COS centring (``"mean"``, ``"none"``, ``"feature"``).
        precision: dtype of the large products, as for :func:`linear_cka_matrix`.

    Returns:
        :func:`calibrate_scores`'s dict (``score``, ``calibrated``, ``tau``, ``p_value`` (L, L) float64,
        ``n_permutations``, ``alpha``) plus ``"metric"``, ``"seed"`` and ``"n_samples"``.
        Cost: one stacked product per permutation for all pairs (see the module docstring).
    """
    if metric not in CALIBRATED_METRICS:
        raise LayertraceError(f"calibrated_similarity: metric={metric!r} is not one of {list(CALIBRATED_METRICS)}"
                              f"{did_you_mean(metric, CALIBRATED_METRICS)}")
    x = as_features(features, min_samples=2)
    n = x.shape[1]
    perms = (seeded_permutations(n, n_permutations, seed) if permutations is None
             else check_permutations(permutations, n, None, "calibrated_similarity"))
    if metric == "cos":
        from .cos import cos_matrix

        observed = cos_matrix(x, center=center)
        null = cos_null(x, perms, center=center, precision=precision)
    else:
        from .cka import linear_cka_matrix

        observed = linear_cka_matrix(x, precision=precision)
        null = linear_cka_null(x, perms, precision=precision)
    out = calibrate_scores(observed, null, alpha=alpha)
    out.update(metric=metric, seed=None if permutations is not None else int(seed), n_samples=int(n))
    return out


def calibrated_cos_matrix(features: Any, n_permutations: int = DEFAULT_PERMUTATIONS, seed: int = 0) -> np.ndarray:
    """(L, L) calibrated COS (mean-centred): ``calibrated_similarity(features, "cos")["calibrated"]``."""
    return calibrated_similarity(features, "cos", n_permutations=n_permutations, seed=seed)["calibrated"]


def calibrated_cka_matrix(features: Any, n_permutations: int = DEFAULT_PERMUTATIONS, seed: int = 0) -> np.ndarray:
    """(L, L) calibrated exact linear CKA: ``calibrated_similarity(features, "linear_cka")["calibrated"]``."""
    return calibrated_similarity(features, "linear_cka", n_permutations=n_permutations, seed=seed)["calibrated"]


__all__ = [
    "ALPHA", "CALIBRATED_METRICS", "DEFAULT_PERMUTATIONS", "calibrate_scores", "calibrated_cka_matrix",
    "calibrated_cos_matrix", "calibrated_similarity", "cos_null", "linear_cka_null", "seeded_permutations",
]
