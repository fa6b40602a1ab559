"""Centered kernel alignment (CKA) for every pair of layers: exact, the unbiased HSIC, streaming.

:class:`MinibatchCKA` lives in :mod:`.cka_minibatch`, :func:`rbf_cka_matrix` in :mod:`.rbf_cka`; the
shared helpers (centring, Gram inner products, precision) are here.

Linear CKA (Kornblith et al. 2019) of column-centred X, Y (n, d)::

    CKA(X, Y) = ||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F)
              = <K, L> / (||K||_F ||L||_F)      with Gram matrices K = X X^T, L = Y Y^T

It lies in [0, 1], equals 1 for X = Y, and is invariant to an orthogonal transform and an isotropic
scaling of either representation (and to translations: the columns are centred).

All pairs come from stacked products, never a loop of per-pair Gram matrices:

* feature space (n > d): ``||X_l^T X_m||_F^2`` are block norms of the stacked cross-covariance
  ``S^T S`` with S = [X_0 .. X_{L-1}] (n, L d); computed one block row at a time
  (``X_l^T S[:, l d:]``), which halves the work and keeps memory at O(n L d + L d^2);
* sample space (n small beside d): ``<K_l, K_m>`` are inner products of the flattened Gram
  matrices, computed by upper block triangle (GRAM_BLOCK_ROWS rows at a time, never the whole
  (L, n, n) stack). ``space="auto"`` takes the one with fewer multiply-adds.

Minibatch CKA (Nguyen et al. 2021) sums the unbiased HSIC of Song et al. (2012) over batches::

    CKA = sum_b HSIC_1(K_b, L_b) / sqrt(sum_b HSIC_1(K_b, K_b) * sum_b HSIC_1(L_b, L_b))

    HSIC_1(K, L) = [tr(K~ L~) + 1'K~1 1'L~1 / ((b - 1)(b - 2)) - 2 / (b - 2) 1'K~L~1] / (b (b - 3))

with K~ the Gram matrix with zeroed diagonal. Only tr(K~ L~) = <K~, L~> needs O(b^2) products (the
blocked Gram inner products above, all pairs at once); the other terms come from feature sums in
float64. As an inner product of U-centred Gram matrices (Szekely & Rizzo 2014) the self terms are
>= 0 and |CKA| <= 1 (Cauchy-Schwarz), so the estimator never produces NaN; cross terms, and so
minibatch CKA values, can be slightly negative for unrelated layers (this is the unbiased estimator,
not clipped to 0). Each batch is column-centred before its Gram matrices: HSIC_1 is exactly shift
invariant, and centring removes float cancellation.

Precision: ``precision="auto"`` multiplies the large products in float32 (above FLOAT32_MIN_MACS),
with every float32 sum over at most FLOAT32_INNER terms / FLOAT32_CHUNK_ROWS samples and the partial
results, the centring and the small terms in float64 (docs/metrics.md, "Precision").

A degenerate layer (no variation after centering, see ``DegenerateLayerWarning``) gets CKA 0 with every
other layer and 1 with itself.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..errors import LayertraceError, did_you_mean
from ._input import (
    as_features,
    check_layer_count,
    degenerate_layers,
    finish_similarity,
    fresh_float64,
    layer_means,
    warn_degenerate,
)

SPACES = ("auto", "feature", "sample")
PRECISIONS = ("auto", "float64", "float32")

#: Memory budget (bytes) for the temporaries of one stacked product (kernel blocks of RBF CKA).
WORK_BYTES = 256 * 2**20

#: Rows of one Gram block in the sample-space products: the working memory is one (L, rows, b)
#: block, whatever the batch size (no (L, b, b) Gram stack is ever held).
GRAM_BLOCK_ROWS = 256

#: Rows of one float32 chunk of the feature-space cross-covariances, each chunk's product then
#: accumulated in float64: the float32 sums never run over more than this many samples.
FLOAT32_CHUNK_ROWS = 2048

#: ``precision="auto"`` multiplies in float32 when the products need at least this many
#: multiply-adds (below it float64 costs nothing noticeable); measured error of the float32 path on
#: 13 x 10,000 x 384 residual-stream features: 6.9e-09 (BENCHMARKS.md, "CKA and calibration against pytorch-cka").
FLOAT32_MIN_MACS = 2**24

#: Default refusal threshold of StreamingLinearCKA's (L d)^2 float64 cross-covariance state.
STREAMING_MAX_BYTES = 2 * 2**30


def _check_space(space: str) -> str:
    if space not in SPACES:
        raise LayertraceError(f"space={space!r} is not one of {list(SPACES)}{did_you_mean(space, SPACES)}")
    return space


def _check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise LayertraceError(f"precision={precision!r} is not one of {list(PRECISIONS)}"
                              f"{did_you_mean(precision, PRECISIONS)}")
    return precision


def _multiply_dtype(precision: str, macs: float) -> torch.dtype:
    """The dtype of the large products: float32 for ``"float32"``, or ``"auto"`` above FLOAT32_MIN_MACS."""
    if precision == "float32" or (precision == "auto" and macs >= FLOAT32_MIN_MACS):
        return torch.float32
    return torch.float64


def _centred_stack(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Column-centre features exactly: (L, n, d) -> float64 (n, L d) stack, centred and raw sq norms (L,)."""
    n_layers, n_samples, dim = x.shape
    means = layer_means(x)
    stacked = fresh_float64(x.permute(1, 0, 2)).reshape(n_samples, n_layers * dim)
    stacked -= means.reshape(1, -1)
    centred_sq = stacked.pow(2).sum(dim=0).reshape(n_layers, dim).sum(dim=1)
    raw_sq = centred_sq + n_samples * means.pow(2).sum(dim=1)
    return stacked, centred_sq, raw_sq


def _cross_cov_sq_norms(stacked: torch.Tensor, n_layers: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """(n, L d) centred float64 stack -> (L, L) float64 with entries ||X_l^T X_m||_F^2.

    One block row ``X_l^T S[:, l d:]`` per layer (the upper block triangle: half the work). With
    ``dtype=float32`` each block is multiplied in float32 over chunks of FLOAT32_CHUNK_ROWS samples
    and the chunks are summed in float64 (the inputs are centred in float64 first, so no float32
    cancellation of large means).
    """
    n_samples, width = stacked.shape
    dim = width // n_layers
    out = torch.zeros(n_layers, n_layers, dtype=torch.float64, device=stacked.device)
    if dtype == torch.float64:
        chunks = [stacked]
    else:
        chunks = [stacked[s:s + FLOAT32_CHUNK_ROWS].to(dtype) for s in range(0, n_samples, FLOAT32_CHUNK_ROWS)]
    for l in range(n_layers):
        block = None
        for part in chunks:
            prod = (part[:, l * dim:(l + 1) * dim].T @ part[:, l * dim:]).to(torch.float64)  # (d, (L - l) d)
            block = prod if block is None else block.add_(prod)
        out[l, l:] = block.reshape(dim, n_layers - l, dim).pow(2).sum(dim=(0, 2))
    return out + torch.triu(out, diagonal=1).T


#: Inner length of one float32 partial product in :func:`inner_products` (the partial sums are
#: added in float64, so no float32 sum runs over more than this many terms).
FLOAT32_INNER = 4096


def inner_products(a: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
    """``a @ b.T`` for flattened stacks (L, N), (M, N) -> (L, M) float64.

    float64 inputs: one product. float32 inputs: the N axis is cut into pieces of FLOAT32_INNER,
    one batched float32 product per piece, and the pieces summed in float64 (a single float32 dot
    product over N ~ 10^6 terms loses ~1e-6 relative; pieces of 4096 keep it at ~1e-8).
    """
    b = a if b is None else b
    if a.dtype == torch.float64:
        return a @ b.T
    n = a.shape[1]
    whole = n - n % FLOAT32_INNER
    out = torch.zeros(a.shape[0], b.shape[0], dtype=torch.float64, device=a.device)
    if whole:
        pa = a[:, :whole].reshape(a.shape[0], -1, FLOAT32_INNER).transpose(0, 1)  # (P, L, c)
        pb = b[:, :whole].reshape(b.shape[0], -1, FLOAT32_INNER).transpose(0, 1)
        out += (pa @ pb.transpose(1, 2)).to(torch.float64).sum(dim=0)
    if whole < n:
        out += (a[:, whole:] @ b[:, whole:].T).to(torch.float64)
    return out


def _gram_products(per_layer: torch.Tensor, dtype: torch.dtype = torch.float64,
                   zero_diagonal: bool = False) -> torch.Tensor:
    """All-pairs Gram inner products ``<K_l, K_m>`` of a stack (L, n, d), K_l = X_l X_l^T -> (L, L) float64.

    Gram rows come in blocks of GRAM_BLOCK_ROWS against the rows from that block on (the upper block
    triangle, mirrored by counting the off-diagonal blocks twice), so the working memory is one
    (L, rows, n) block, never the (L, n, n) stack. Each block's (L, rows * n) x (rows * n, L) product
    is added in float64 (:func:`inner_products`). ``zero_diagonal``: use K with its diagonal set to 0 (the unbiased HSIC's K~).
    """
    n_layers, n, _ = per_layer.shape
    x = per_layer.to(dtype)
    out = torch.zeros(n_layers, n_layers, dtype=torch.float64, device=per_layer.device)
    for start in range(0, n, GRAM_BLOCK_ROWS):
        stop = min(n, start + GRAM_BLOCK_ROWS)
        block = x[:, start:stop] @ x[:, start:].transpose(1, 2)  # (L, r, n - start)
        if zero_diagonal:
            block.diagonal(dim1=1, dim2=2).zero_()
        flat = block.reshape(n_layers, -1)
        square = block[:, :, :stop - start].reshape(n_layers, -1)  # the diagonal block, counted once
        out += 2.0 * inner_products(flat) - inner_products(square)
    return out


def _gram_inner_products(stacked: torch.Tensor, n_layers: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """(n, L d) centred stack -> (L, L) with entries <K_l, K_m>, K_l = X_l X_l^T (sample space)."""
    n_samples = stacked.shape[0]
    per_layer = stacked.reshape(n_samples, n_layers, -1).permute(1, 0, 2)  # (L, n, d)
    return _gram_products(per_layer, dtype)


def _linear_cka_space(n_layers: int, n: int, dim: int) -> str:
    """The cheaper space for exact linear CKA: feature n d^2 L(L+1)/2 vs sample L n^2 d / 2 + L^2 n^2 / 2."""
    feature = n * dim * dim * n_layers * (n_layers + 1) / 2
    sample = n_layers * n * n * dim / 2 + n_layers * n_layers * n * n / 2
    return "feature" if feature <= sample else "sample"


def linear_cka_matrix(features: Any, space: str = "auto", *, precision: str = "auto") -> np.ndarray:
    """Exact column-centred linear CKA for every pair of layers.

    Args:
        features: (layers L, samples n, dim d), torch or numpy, any float dtype, CPU or CUDA.
        space: ``"auto"`` (the cheaper of the two by multiply-adds), ``"feature"`` or ``"sample"``;
            both give the same values, they differ in cost (O(n L^2 d^2 / 2) vs O(L n^2 d / 2 + L^2 n^2 / 2)).
        precision: dtype of the large products (centring and every sum are float64): ``"auto"``
            (float32 when the products need >= FLOAT32_MIN_MACS multiply-adds, else float64),
            ``"float64"`` or ``"float32"``. The float32 path's error is measured in BENCHMARKS.md.

    Returns:
        (L, L) float64 numpy, symmetric, in [0, 1], diagonal 1. Invariant to an orthogonal transform
        and an isotropic scaling of any layer, and to translations.
    """
    x = as_features(features, min_samples=2)
    n_layers, n_samples, dim = x.shape
    space = _check_space(space)
    precision = _check_precision(precision)
    if space == "auto":
        space = _linear_cka_space(n_layers, n_samples, dim)
    stacked, centred_sq, raw_sq = _centred_stack(x)
    if space == "feature":
        dtype = _multiply_dtype(precision, n_samples * dim * dim * n_layers * (n_layers + 1) / 2)
        gram = _cross_cov_sq_norms(stacked, n_layers, dtype)
    else:
        dtype = _multiply_dtype(precision, n_layers * n_samples * n_samples * dim / 2)
        gram = _gram_inner_products(stacked, n_layers, dtype)
    degenerate = degenerate_layers(centred_sq, raw_sq)
    warn_degenerate("linear_cka_matrix", degenerate)
    return finish_similarity(gram, degenerate, 0.0, 1.0)


# --------------------------------------------------------------------------- minibatch (unbiased HSIC)


def _hsic_space(n_layers: int, batch: int, dim: int, space: str) -> str:
    """Sample space (blocked Gram products, upper triangle) unless the feature-space form needs fewer
    multiply-adds (batches much larger than the width). Memory is one Gram block either way."""
    if space != "auto":
        return space
    sample_cost = n_layers * batch * batch * dim / 2 + n_layers * n_layers * batch * batch / 2
    feature_cost = batch * dim * dim * n_layers * (n_layers + 1) / 2
    return "sample" if sample_cost <= feature_cost else "feature"


def _unbiased_hsic(xc: torch.Tensor, space: str = "auto", precision: str = "auto") -> torch.Tensor:
    """Unbiased HSIC_1 of linear kernels for every layer pair of one batch.

    ``xc`` is a float64 (L, b, d) batch (column-centred by the caller for accuracy; the estimator
    itself is shift invariant). Returns (L, L) float64 on xc's device.

    Song et al.'s three terms, with K~ = K - diag(K)::

        tr(K~ L~)    sample space: <K~, L~> from blocked Gram products (float32 multiplies allowed);
                     feature space: ||X^T Y||_F^2 - sum_i |x_i|^2 |y_i|^2
        1^T K~ 1     = |sum_i x_i|^2 - sum_i |x_i|^2                              (float64, O(L b d))
        1^T K~ L~ 1  = sum_i (x_i . sum_x - |x_i|^2)(y_i . sum_y - |y_i|^2)        (float64, O(L b d))

    Only tr(K~ L~) needs O(b^2) or O(d^2) products; with centred batches it dominates the other
    terms, so its float32 rounding is the whole error of the float32 path.
    """
    n_layers, b, dim = xc.shape
    space = _hsic_space(n_layers, b, dim, space)
    sq = xc.pow(2).sum(dim=2)  # (L, b)
    sums = xc.sum(dim=1)  # (L, d)
    k_one = torch.einsum("lbd,ld->lb", xc, sums) - sq  # K~ 1, (L, b)
    k_total = sums.pow(2).sum(dim=1) - sq.sum(dim=1)  # (L,)
    if space == "sample":
        dtype = _multiply_dtype(precision, n_layers * b * b * dim / 2)
        trace_kl = _gram_products(xc, dtype, zero_diagonal=True)
    else:
        dtype = _multiply_dtype(precision, b * dim * dim * n_layers * (n_layers + 1) / 2)
        stacked = xc.permute(1, 0, 2).reshape(b, n_layers * dim)
        trace_kl = _cross_cov_sq_norms(stacked, n_layers, dtype) - sq @ sq.T
    hsic = trace_kl + torch.outer(k_total, k_total) / ((b - 1) * (b - 2)) - 2.0 * (k_one @ k_one.T) / (b - 2)
    return hsic / (b * (b - 3))


def unbiased_hsic_matrix(batch_features: Any, space: str = "auto", *, precision: str = "auto") -> np.ndarray:
    """Song et al.'s unbiased HSIC_1 with linear kernels for every layer pair of one batch.

    Args:
        batch_features: (L, b, d) with b >= 4.
        space / precision: as for :class:`MinibatchCKA`.
    Returns:
        (L, L) float64 numpy, symmetric; diagonal >= 0; off-diagonal may be negative.
    """
    x = as_features(batch_features, name="batch_features")
    if x.shape[1] < 4:
        raise LayertraceError(f"unbiased HSIC needs a batch of at least 4 samples, got {x.shape[1]}")
    xc = fresh_float64(x)
    xc -= xc.mean(dim=1, keepdim=True)
    return _unbiased_hsic(xc, _check_space(space), _check_precision(precision)).cpu().numpy()


class PermutedGrams:
    """``<K_l, P K_m P^T>`` for every layer pair of a held Gram stack (L, n, n) and any permutation P.

    ``P K_m P^T`` is the Gram matrix of ``X_m[perm]``, so a permutation costs a gather, not a new
    Gram product. By symmetry only the upper triangle i < j is gathered (``K_m[perm_i, perm_j]``, one
    flat ``index_select``) plus the diagonal: half the memory traffic of permuting the whole stack.
    """

    def __init__(self, grams: torch.Tensor):
        self.n_layers, n, _ = grams.shape
        self.n = n
        self.rows, self.cols = torch.triu_indices(n, n, offset=1, device=grams.device)
        self.flat = grams.reshape(self.n_layers, -1)
        self.upper = grams[:, self.rows, self.cols]  # (L, n (n - 1) / 2)
        self.diag = grams.diagonal(dim1=1, dim2=2).contiguous()  # (L, n)

    def products(self, perm: torch.Tensor) -> torch.Tensor:
        """(L, L) float64: entry (l, m) is <K_l, K_m[perm][:, perm]>."""
        perm = perm.to(self.flat.device)
        moved = self.flat.index_select(1, perm[self.rows] * self.n + perm[self.cols])
        return 2.0 * inner_products(self.upper, moved) + inner_products(self.diag, self.diag[:, perm])


# --------------------------------------------------------------------------- streaming exact linear CKA


class StreamingLinearCKA:
    """Exact linear CKA accumulated batch by batch, memory independent of the number of samples.

    Keeps the running mean (L d,) and the centred cross-moment matrix ``sum_x (x - mean)(x - mean)^T``
    over the stacked (L d) features, updated with Chan et al.'s pairwise formula (numerically stable,
    no cancellation from large means). ``compute()`` equals :func:`linear_cka_matrix` on all samples.

    Memory: (L d)^2 float64 (e.g. 13 x 384 -> 190 MiB, 13 x 768 -> 761 MiB, 25 x 1024 -> 4.9 GiB).
    Construction refuses above ``max_bytes`` (default 2 GiB): use :class:`MinibatchCKA` or fewer layers.
    Only the upper block triangle is filled (half the work per batch).

    ``merge(other)`` combines two accumulators exactly (e.g. after ``torch.distributed``'s
    ``all_gather_object`` of ``state_dict()``s); the state holds a mean, so it is merged, not summed.
    """

    def __init__(self, n_layers: int, dim: int, *, max_bytes: int = STREAMING_MAX_BYTES):
        self.n_layers, self.dim = int(n_layers), int(dim)
        width = self.n_layers * self.dim
        need = width * width * 8
        if need > max_bytes:
            raise LayertraceError(
                f"StreamingLinearCKA: {self.n_layers} layers x {self.dim} dims needs {need / 2**30:.2f} GiB of "
                f"float64 cross-covariances (limit {max_bytes / 2**30:.2f} GiB); use MinibatchCKA, fewer layers, "
                f"or pass a larger max_bytes"
            )
        self.mean = torch.zeros(width, dtype=torch.float64)
        self.comoment = torch.zeros(width, width, dtype=torch.float64)
        self.n_samples = 0

    def _add_moments(self, count: int, mean: torch.Tensor, comoment_update) -> None:
        """Chan et al.: M = M_a + M_b + (n_a n_b / n) (mean_b - mean_a)(mean_b - mean_a)^T."""
        total = self.n_samples + count
        delta = mean - self.mean
        if self.n_samples > 0:
            self.comoment.addr_(delta, delta, alpha=self.n_samples * count / total)
        comoment_update()
        self.mean += delta * (count / total)
        self.n_samples = total

    def update(self, batch_features: Any) -> "StreamingLinearCKA":
        """Add one batch (L, b, d) (torch or numpy, any float dtype, any device; b >= 1)."""
        x = as_features(batch_features, name="batch_features")
        check_layer_count(x, self.n_layers, "StreamingLinearCKA.update")
        if x.shape[2] != self.dim:
            raise LayertraceError(f"StreamingLinearCKA.update: batch dim {x.shape[2]}, accumulator built for {self.dim}")
        b = x.shape[1]
        if self.n_samples == 0 and self.comoment.device != x.device:  # state follows the first batch
            self.mean, self.comoment = self.mean.to(x.device), self.comoment.to(x.device)
        stacked = fresh_float64(x.permute(1, 0, 2).to(self.comoment.device)).reshape(b, -1)
        batch_mean = stacked.mean(dim=0)
        stacked -= batch_mean
        d = self.dim

        def add_batch_comoment() -> None:
            for l in range(self.n_layers):
                rows = slice(l * d, (l + 1) * d)
                self.comoment[rows, l * d:].addmm_(stacked[:, rows].T, stacked[:, l * d:])

        self._add_moments(b, batch_mean, add_batch_comoment)
        return self

    def compute(self) -> np.ndarray:
        """(L, L) float64 exact linear CKA of all samples so far (needs at least 2)."""
        if self.n_samples < 2:
            raise LayertraceError(f"StreamingLinearCKA.compute: needs at least 2 samples, got {self.n_samples}")
        L, d = self.n_layers, self.dim
        gram = torch.zeros(L, L, dtype=torch.float64, device=self.comoment.device)
        for l in range(L):
            block = self.comoment[l * d:(l + 1) * d, l * d:]
            gram[l, l:] = block.reshape(d, L - l, d).pow(2).sum(dim=(0, 2))
        gram = gram + torch.triu(gram, diagonal=1).T
        centred_sq = torch.stack([self.comoment[l * d:(l + 1) * d, l * d:(l + 1) * d].trace() for l in range(L)])
        raw_sq = centred_sq + self.n_samples * self.mean.reshape(L, d).pow(2).sum(dim=1)
        degenerate = degenerate_layers(centred_sq, raw_sq)
        warn_degenerate("StreamingLinearCKA", degenerate)
        return finish_similarity(gram, degenerate, 0.0, 1.0)

    def state_dict(self) -> dict[str, Any]:
        return {"n_layers": self.n_layers, "dim": self.dim, "n_samples": self.n_samples,
                "mean": self.mean.cpu().numpy().copy(), "comoment": self.comoment.cpu().numpy().copy()}

    @classmethod
    def from_state_dict(cls, state: dict[str, Any], *, max_bytes: int = STREAMING_MAX_BYTES) -> "StreamingLinearCKA":
        acc = cls(state["n_layers"], state["dim"], max_bytes=max_bytes)
        acc.mean = torch.as_tensor(np.asarray(state["mean"], dtype=np.float64)).clone()
        acc.comoment = torch.as_tensor(np.asarray(state["comoment"], dtype=np.float64)).clone()
        acc.n_samples = int(state["n_samples"])
        return acc

    def merge(self, other: "StreamingLinearCKA") -> "StreamingLinearCKA":
        """Combine another accumulator (same layers and dim) exactly into this one."""
        if (other.n_layers, other.dim) != (self.n_layers, self.dim):
            raise LayertraceError(
                f"StreamingLinearCKA.merge: ({other.n_layers} layers, dim {other.dim}) vs ({self.n_layers}, {self.dim})"
            )
        if other.n_samples == 0:
            return self
        device = self.comoment.device
        self._add_moments(other.n_samples, other.mean.to(device).clone(),
                          lambda: self.comoment.add_(other.comoment.to(device)))
        return self
