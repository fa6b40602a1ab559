"""The similarity part of the analysis pass, fed chunk by chunk (one chunk = one original batch).

:class:`SimilarityStage` owns the accumulators of ``layertrace.metrics`` (COS, linear CKA) and the
per-sample quantities that need the *centred* features: the per-sample COS of every traced layer
to the last one, and the Theorem 2.1 triple counts. It needs the centres up front, which is why
the analysis either caches features (mean centring) or feeds it inline (``"none"`` / ``"feature"``
centring, or user-given centres).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from .. import metrics
from ..metrics import ZERO_NORM_RTOL
from ..readout.theory import THEORY_TOLERANCE, theorem_2_1_violations



def per_sample_cos_matrices(x: Tensor, centers: Tensor | None, center: str) -> tuple[Tensor, Tensor]:
    """Per-sample cosine between every pair of traced layers, after centring.

    Zero-norm vectors follow the rule of :mod:`layertrace.metrics` (a centred vector whose norm is at
    most ``ZERO_NORM_RTOL`` times its raw norm has no direction and is excluded): their cosines are
    NaN here, and they are False in the returned mask.

    Args:
        x: (S, b, d) float64 features.
        centers: (S, d) per-layer centres for ``center="mean"`` (ignored otherwise).
        center: ``"mean"`` (subtract ``centers``), ``"none"``, or ``"feature"`` (each vector's own mean).

    Returns:
        ``(cos, valid)``: (b, S, S) cosines (NaN where a vector is excluded, 1 on the diagonal of
        valid vectors) and the (S, b) bool mask of valid (non-zero) centred vectors.
    """
    if center == "mean":
        xc = x - centers[:, None, :].to(x)
    elif center == "feature":
        xc = x - x.mean(dim=-1, keepdim=True)
    else:
        xc = x
    norm = xc.norm(dim=-1)  # (S, b)
    valid = norm > ZERO_NORM_RTOL * x.norm(dim=-1)
    unit = xc / torch.where(valid, norm, torch.ones_like(norm))[..., None]
    cos = torch.einsum("lbd,mbd->blm", unit, unit).clamp(-1.0, 1.0)
    eye = torch.eye(x.shape[0], dtype=torch.bool, device=x.device)
    cos = cos.masked_fill(eye, 1.0)
    both = valid.T[:, :, None] & valid.T[:, None, :]  # (b, S, S)
    cos = cos.masked_fill(~both, float("nan"))
    return cos, valid


class SimilarityStage:
    """Accumulates COS / CKA over feature chunks and returns the per-sample centred quantities.

    Args:
        n_layers: S, traced layers.
        dim: d, feature width.
        center: ``"mean"`` | ``"none"`` | ``"feature"``.
        centers: (S, d) float64 per-layer means, required for ``"mean"``.
        cka: ``"exact"`` (streaming feature-space linear CKA), ``"minibatch"`` (unbiased HSIC summed
            over chunks), or ``"none"``.
        theory: also count Theorem 2.1 violations per sample.
        tolerance: slack of the Theorem 2.1 comparison.
        null_permutations / seed: minibatch CKA also streams a permutation null of K seeded
            within-batch permutations (``MinibatchCKA(null_permutations=K)``).
    """

    def __init__(self, n_layers: int, dim: int, center: str, centers: np.ndarray | None, cka: str,
                 theory: bool = True, tolerance: float = THEORY_TOLERANCE, null_permutations: int = 0,
                 seed: int = 0):
        self.n_layers = n_layers
        self.dim = dim
        self.center = center
        self.centers = None if centers is None else torch.as_tensor(np.asarray(centers, dtype=np.float64))
        if center == "mean" and self.centers is None:
            raise ValueError("center='mean' needs the per-layer centres")
        self.cka = cka
        self.theory = theory
        self.tolerance = tolerance
        self.cos_acc = metrics.CosAccumulator(n_layers, center="mean-given" if center == "mean" else center,
                                              centers=self.centers)
        if cka == "exact":
            self.cka_acc: Any = metrics.StreamingLinearCKA(n_layers, dim)
        elif cka == "minibatch":
            self.cka_acc = metrics.MinibatchCKA(n_layers, null_permutations=null_permutations, seed=seed)
        else:
            self.cka_acc = None

    def update(self, features: Tensor | np.ndarray) -> dict[str, np.ndarray]:
        """Add one chunk of (S, b, d) features; return its per-sample arrays.

        Returns:
            ``cos_to_last`` (b, S) float64 (NaN where a centred vector is zero at that layer or at
            the last), and with ``theory`` ``theorem_2_1_violations`` / ``theorem_2_1_triples``
            (b,) int64: violated / evaluated triples (triples with a zero vector are not evaluated).
        """
        x = torch.as_tensor(features).to(torch.float64)
        cos, valid = per_sample_cos_matrices(x, self.centers, self.center)
        out = {"cos_to_last": cos[:, :, -1].cpu().numpy().copy()}  # a copy: do not pin the (b, S, S) block
        if self.theory:
            out["theorem_2_1_violations"] = theorem_2_1_violations(cos, self.tolerance)
            out["theorem_2_1_triples"] = theorem_2_1_violations(cos, self.tolerance, count_evaluated=True)
        self.cos_acc.update(x)
        if self.cka_acc is not None and (self.cka != "minibatch" or x.shape[1] >= 4):
            self.cka_acc.update(x)
        return out

    @property
    def zero_counts(self) -> np.ndarray:
        """(S,) number of zero-norm centred vectors per layer (excluded from COS)."""
        return np.asarray(self.cos_acc.zero_counts, dtype=np.int64)

    def merge(self, other: "SimilarityStage") -> "SimilarityStage":
        """Add another stage's accumulators (another process's shard)."""
        self.cos_acc.merge(other.cos_acc)
        if self.cka_acc is not None:
            self.cka_acc.merge(other.cka_acc)
        return self

    def compute(self) -> tuple[np.ndarray, np.ndarray | None]:
        """``(cos_matrix (S, S), cka_matrix (S, S) or None)``."""
        from ..errors import LayertraceError

        cos = np.asarray(self.cos_acc.compute(), dtype=np.float64)
        if self.cka_acc is None:
            return cos, None
        if self.cka == "minibatch" and self.cka_acc.n_batches == 0:
            raise LayertraceError("minibatch CKA needs batches of at least 4 samples and every batch had fewer: "
                                  "use a larger batch_size or cka='exact'")
        if self.cka_acc.n_samples < 2:
            raise LayertraceError(f"CKA needs at least 2 samples, got {self.cka_acc.n_samples}: analyse more data "
                                  f"or pass cka='none'")
        return cos, np.asarray(self.cka_acc.compute(), dtype=np.float64)
