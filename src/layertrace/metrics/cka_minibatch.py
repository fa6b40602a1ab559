"""Minibatch CKA (Nguyen et al. 2021): the unbiased HSIC summed over batches, with an optional streamed
permutation null (:class:`MinibatchCKA`, :func:`minibatch_cka_matrix`); the estimator is described in
:mod:`.cka`."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..errors import LayertraceError
from .cka import PermutedGrams, _check_precision, _check_space, _multiply_dtype, _unbiased_hsic
from ._input import (
    as_features,
    check_layer_count,
    degenerate_layers,
    finish_similarity,
    fresh_float64,
    warn_degenerate,
)
from .permutations import calibrate_scores, check_permutations, draw_permutations


def _null_hsic(xc: torch.Tensor, perms: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Unbiased HSIC_1(K_l, K_m permuted) of one centred batch (L, b, d) for K row permutations (K, b).

    Entry [k, l, m] is HSIC_1 between layer l and layer m with its samples reordered by ``perms[k]``
    (``U(P K P^T) = P U(K) P^T``: the Gram stack is computed once and only gathered per permutation).
    Returns (K, L, L) float64; only the upper triangle l < m is the null of pair (l, m).
    """
    n_layers, b, _ = xc.shape
    x = xc.to(dtype)
    grams = x @ x.transpose(1, 2)  # (L, b, b), held once per batch
    grams.diagonal(dim1=1, dim2=2).zero_()  # K~
    sq = xc.pow(2).sum(dim=2)
    k_one = torch.einsum("lbd,ld->lb", xc, xc.sum(dim=1)) - sq  # K~ 1 (float64)
    k_total = k_one.sum(dim=1)
    permuted = PermutedGrams(grams)
    out = torch.empty(len(perms), n_layers, n_layers, dtype=torch.float64, device=xc.device)
    perms = perms.to(xc.device)
    for k, perm in enumerate(perms):
        out[k] = permuted.products(perm) + torch.outer(k_total, k_total) / ((b - 1) * (b - 2)) \
            - 2.0 * (k_one @ k_one[:, perm].T) / (b - 2)
    return out / (b * (b - 3))


class MinibatchCKA:
    """Minibatch linear CKA (Nguyen et al. 2021) for all layer pairs, accumulated batch by batch.

    ``update(batch (L, b, d))`` adds the unbiased HSIC_1 (Song et al. 2012) of every layer pair of
    the batch; ``compute() -> (L, L)``. Memory O(L^2) plus one (L, 256, b) Gram block, independent
    of the number of samples; the cost per batch is the upper block triangle of the Gram products
    (L b^2 d / 2) plus their flattened inner products (L^2 b^2 / 2), or the feature-space form when
    that needs fewer multiply-adds (batches much larger than the width).

    Args:
        n_layers: L.
        space: ``"auto"`` | ``"sample"`` | ``"feature"`` (same values, different cost).
        precision: dtype of the large products: ``"auto"`` (float32 when a batch needs at least
            FLOAT32_MIN_MACS multiply-adds), ``"float64"`` or ``"float32"``. Centring, the small
            terms and every sum are float64 either way.
        null_permutations: K > 0 also accumulates a permutation null (see :meth:`calibrated`):
            per batch, K seeded within-batch row permutations of each later layer of a pair, so the
            null is streamed like the estimate itself (memory: one (L, b, b) Gram stack per batch).
        seed: seeds the null's permutations (one generator, drawn batch after batch), or pass
            ``permutations=`` to :meth:`update`.

    Values are symmetric, in [-1, 1] (Cauchy-Schwarz: the estimator is an inner product of U-centred
    Gram matrices), diagonal 1. Summed cross terms may be negative for unrelated layers and are kept
    (no NaN: self terms are >= 0; a layer whose self term is 0 is degenerate and gets 0).

    The state is sums only (``state_dict``), so processes can all-reduce every entry with SUM, or
    :meth:`merge` two accumulators; merging equals one pass over the union of the batches.
    """

    def __init__(self, n_layers: int, *, space: str = "auto", precision: str = "auto",
                 null_permutations: int = 0, seed: int = 0):
        self.n_layers = int(n_layers)
        self.space = _check_space(space)
        self.precision = _check_precision(precision)
        self.hsic = torch.zeros(self.n_layers, self.n_layers, dtype=torch.float64)
        self.raw_sq = torch.zeros(self.n_layers, dtype=torch.float64)
        self.centred_sq = torch.zeros(self.n_layers, dtype=torch.float64)
        self.n_batches = 0
        self.n_samples = 0
        if int(null_permutations) < 0:
            raise LayertraceError(f"MinibatchCKA: null_permutations={null_permutations} must be >= 0")
        self.null_permutations = int(null_permutations)
        self.null_hsic = torch.zeros(self.null_permutations, self.n_layers, self.n_layers, dtype=torch.float64)
        self._generator = torch.Generator().manual_seed(int(seed))

    def update(self, batch_features: Any, permutations: Any = None) -> "MinibatchCKA":
        """Add one batch (L, b, d), b >= 4 (torch or numpy, any float dtype, any device).

        ``permutations``: (K, b) row permutations for the null (default: drawn from the seeded
        generator, ``torch.randperm(b)`` K times); only with ``null_permutations=K``.
        """
        x = as_features(batch_features, name="batch_features")
        check_layer_count(x, self.n_layers, "MinibatchCKA.update")
        b = x.shape[1]
        if b < 4:
            raise LayertraceError(
                f"MinibatchCKA.update: batch of {b} samples; the unbiased HSIC needs at least 4 "
                f"(use a larger batch or fold the last small batch into the previous one)"
            )
        xc = fresh_float64(x)  # centred in place (mixed-dtype arithmetic is much slower than a copy first)
        mean = xc.mean(dim=1, keepdim=True)
        xc -= mean
        centred_sq = torch.linalg.vector_norm(xc, dim=(1, 2)).square()
        self.raw_sq += (centred_sq + b * mean.square().sum(dim=(1, 2))).cpu()
        self.centred_sq += centred_sq.cpu()
        self.hsic += _unbiased_hsic(xc, self.space, self.precision).cpu()
        if self.null_permutations:
            if permutations is None:
                perms = draw_permutations(b, self.null_permutations, self._generator)
            else:
                perms = check_permutations(permutations, b, self.null_permutations, "MinibatchCKA.update")
            dtype = _multiply_dtype(self.precision, self.n_layers * b * b * x.shape[2])
            self.null_hsic += _null_hsic(xc, perms, dtype).cpu()
        elif permutations is not None:
            raise LayertraceError("MinibatchCKA.update: permutations given but the accumulator was built with "
                                  "null_permutations=0; pass null_permutations=K")
        self.n_batches += 1
        self.n_samples += b
        return self

    def compute(self) -> np.ndarray:
        """(L, L) float64 minibatch CKA over all batches so far."""
        if self.n_batches == 0:
            raise LayertraceError("MinibatchCKA.compute: no batch was added; call update() first")
        degenerate = degenerate_layers(self.centred_sq, self.raw_sq)
        warn_degenerate("MinibatchCKA", degenerate, "are constant within every batch")
        return finish_similarity(self.hsic, degenerate, -1.0, 1.0)

    def null(self) -> np.ndarray:
        """(K, L, L) float64: minibatch CKA of every pair under each of the K streamed permutations
        (pair (l, m), l < m, permutes layer m; the lower triangle mirrors it, the diagonal is 1)."""
        if not self.null_permutations:
            raise LayertraceError("MinibatchCKA.null: built with null_permutations=0; pass null_permutations=K")
        if self.n_batches == 0:
            raise LayertraceError("MinibatchCKA.null: no batch was added; call update() first")
        degenerate = degenerate_layers(self.centred_sq, self.raw_sq)
        diag = torch.diagonal(self.hsic)
        upper = torch.triu(self.null_hsic, diagonal=1)
        sums = upper + upper.transpose(1, 2) + torch.diag_embed(diag.expand(self.null_permutations, -1))
        return np.stack([finish_similarity(s, degenerate, -1.0, 1.0) for s in sums])

    def calibrated(self, alpha: float = 0.05) -> dict[str, Any]:
        """Permutation-calibrated minibatch CKA: :func:`~layertrace.metrics.calibrate_scores` of
        :meth:`compute` against :meth:`null` (keys ``score``, ``calibrated``, ``tau``, ``p_value``, ...)."""
        return calibrate_scores(self.compute(), self.null(), alpha=alpha)

    def state_dict(self) -> dict[str, Any]:
        """Plain-numpy state; every numeric entry is a sum (all-reduce with SUM works)."""
        return {
            "n_layers": self.n_layers,
            "hsic": self.hsic.numpy().copy(),
            "raw_sq": self.raw_sq.numpy().copy(),
            "centred_sq": self.centred_sq.numpy().copy(),
            "n_batches": self.n_batches,
            "n_samples": self.n_samples,
            "null_hsic": self.null_hsic.numpy().copy(),
        }

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> "MinibatchCKA":
        null = np.asarray(state.get("null_hsic", np.zeros((0, state["n_layers"], state["n_layers"]))), dtype=np.float64)
        acc = cls(state["n_layers"], null_permutations=null.shape[0])
        acc.hsic = torch.as_tensor(np.asarray(state["hsic"], dtype=np.float64)).clone()
        acc.raw_sq = torch.as_tensor(np.asarray(state["raw_sq"], dtype=np.float64)).clone()
        acc.centred_sq = torch.as_tensor(np.asarray(state["centred_sq"], dtype=np.float64)).clone()
        acc.null_hsic = torch.as_tensor(null).clone()
        acc.n_batches = int(state["n_batches"])
        acc.n_samples = int(state["n_samples"])
        return acc

    def merge(self, other: "MinibatchCKA") -> "MinibatchCKA":
        """Add another accumulator's batches (same number of layers and permutations) into this one."""
        if other.n_layers != self.n_layers or other.null_permutations != self.null_permutations:
            raise LayertraceError(f"MinibatchCKA.merge: {other.n_layers} layers / {other.null_permutations} "
                                  f"permutations vs {self.n_layers} / {self.null_permutations}")
        self.hsic += other.hsic
        self.raw_sq += other.raw_sq
        self.centred_sq += other.centred_sq
        self.null_hsic += other.null_hsic
        self.n_batches += other.n_batches
        self.n_samples += other.n_samples
        return self


def minibatch_cka_matrix(features: Any, batch_size: int = 256, *, precision: str = "auto") -> np.ndarray:
    """Minibatch CKA over consecutive batches of ``batch_size`` samples (see :class:`MinibatchCKA`).

    A last batch under 4 samples is folded into the previous one. (L, L) float64 in [-1, 1].
    """
    x = as_features(features, min_samples=4)
    if batch_size < 4:
        raise LayertraceError(f"batch_size={batch_size}: the unbiased HSIC needs batches of at least 4 samples")
    n = x.shape[1]
    starts = list(range(0, n, batch_size))
    if n - starts[-1] < 4 and len(starts) > 1:
        starts.pop()
    acc = MinibatchCKA(x.shape[0], precision=precision)
    for i, start in enumerate(starts):
        stop = starts[i + 1] if i + 1 < len(starts) else n
        acc.update(x[:, start:stop])
    return acc.compute()
