"""COS: the mean per-sample cosine similarity between two layers' features (PAPER.md section 2).

``COS(l, m) = mean over samples x of cos(h_l(x) - c_l, h_m(x) - c_m)``. It compares the same sample
at two layers, so all layers must share one width. Centering ``c``:

* ``"mean"``    (default) the per-layer mean over the evaluated samples (the paper's footnote);
* ``"none"``    no centering;
* ``"feature"`` each vector's own mean over its d coordinates (a variant in the authors' code).

All pairs come from one product: centred vectors are normalised per sample and layer, giving unit
vectors ``u`` (L, n, d); ``sum_x u_l(x) . u_m(x)`` for every (l, m) is ``U U^T`` with ``U`` the
(L, n*d) reshape, i.e. the per-sample Gram matrices across layers summed over samples.

Zero-norm vectors after centering (exactly zero, or equal to their centre c up to float64 rounding:
``|x - c| <= ZERO_NORM_RTOL |c|``) have no direction: they are excluded, never turned into NaN. ``COS(l, m)`` averages
over the samples whose vectors are non-zero at both l and m; ``return_zero_count=True`` returns the
per-layer number of excluded vectors. A layer whose vectors are all zero (e.g. the [CLS] embedding at
layer 0 under mean centering, which does not depend on the input) gets COS 0 with every other layer and
1 with itself, with a :class:`DegenerateLayerWarning`.

Invariances (all centerings): scaling one layer by a positive constant; the same orthogonal transform
of every layer (not for ``"feature"``). Not invariant to an orthogonal transform of one layer only
(that is what CKA ignores and COS sees). ``"none"`` and ``"feature"`` are also invariant to scaling any
single vector by a positive factor (per-sample positive scaling); ``"mean"`` is invariant to
translating a layer.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..errors import LayertraceError, did_you_mean
from ._input import (
    ZERO_NORM_RTOL,
    as_features,
    check_layer_count,
    fresh_float64,
    layer_means,
    sample_chunks,
    warn_degenerate,
)

CENTERS = ("mean", "none", "feature")


def _check_center(center: str, allowed: tuple[str, ...] = CENTERS) -> str:
    if center not in allowed:
        raise LayertraceError(f"center={center!r} is not one of {list(allowed)}{did_you_mean(center, allowed)}")
    return center


def _unit_chunks(x: torch.Tensor, center: str, means: torch.Tensor | None = None):
    """Yield (unit vectors (L, b, d), valid mask (L, b)) for cache-sized sample chunks of x (L, n, d).

    A centred vector ``v = x - c`` counts as zero (excluded) when ``|v| <= ZERO_NORM_RTOL * |c|``:
    exactly zero for ``"none"``, or equal to its centre up to float64 rounding. ``c`` is the layer
    mean (``"mean"``) or the vector's own coordinate mean times the ones vector (``"feature"``).
    """
    n_layers, n_samples, dim = x.shape
    if center == "mean" and means is None:
        means = layer_means(x)
    if center == "mean":
        centre_norms = torch.linalg.vector_norm(means, dim=1)[:, None]  # (L, 1)
    for part in sample_chunks(n_samples, n_layers, dim):
        # a fresh float64 copy, centred in place (mixed-dtype arithmetic is much slower than a copy)
        centred = fresh_float64(x[:, part])
        if center == "mean":
            centred -= means[:, None, :]
        elif center == "feature":
            own_mean = centred.mean(dim=2, keepdim=True)
            centred -= own_mean
            centre_norms = own_mean[..., 0].abs() * dim**0.5
        else:
            centre_norms = 0.0
        norms = torch.linalg.vector_norm(centred, dim=2)
        valid = norms > ZERO_NORM_RTOL * centre_norms
        inverse = torch.where(valid, 1.0 / torch.where(valid, norms, torch.ones_like(norms)), torch.zeros_like(norms))
        yield centred.mul_(inverse[..., None]), valid  # scaled in place: one pass


def _resolve_ref(ref: int, n_layers: int) -> int:
    if not -n_layers <= int(ref) < n_layers:
        raise LayertraceError(f"ref={ref} is out of range for {n_layers} layers: use 0..{n_layers - 1} or -{n_layers}..-1")
    return int(ref) % n_layers


def cos_matrix(features: Any, center: str = "mean", *, return_zero_count: bool = False):
    """COS for every pair of layers.

    Args:
        features: (layers L, samples n, dim d), torch or numpy, any float dtype, CPU or CUDA.
        center: ``"mean"`` (default), ``"none"`` or ``"feature"`` (see the module docstring).
        return_zero_count: also return the (L,) int64 number of zero-norm vectors excluded per layer.

    Returns:
        (L, L) float64 numpy array, symmetric, values in [-1, 1], diagonal 1 (and the zero counts if
        asked). Accumulated in float64 whatever the input dtype.
    """
    x = as_features(features, min_samples=1)
    _check_center(center)
    acc = CosAccumulator(x.shape[0], center="mean-given" if center == "mean" else center,
                         centers=layer_means(x) if center == "mean" else None)
    acc._add(x)  # x is validated above; skip a second NaN scan
    matrix = acc.compute(_warn_name=f"cos_matrix(center={center!r})")
    return (matrix, acc.zero_counts) if return_zero_count else matrix


def zero_norm_counts(features: Any, center: str = "mean") -> np.ndarray:
    """(L,) int64: how many vectors of each layer are zero after centering (excluded from COS)."""
    x = as_features(features)
    _check_center(center)
    counts = torch.zeros(x.shape[0], dtype=torch.int64)
    for _, valid in _unit_chunks(x, center):
        counts += (~valid).sum(dim=1).cpu()
    return counts.numpy()


def per_sample_cos(features: Any, ref: int = -1, center: str = "mean", *, return_valid: bool = False):
    """Per-sample cosine of every layer with layer ``ref`` (default: the last), for box plots.

    Returns:
        values (L, n) float64 numpy; ``values[l, x] = cos(h_l(x) - c_l, h_ref(x) - c_ref)``. Entries
        where either vector is zero after centering are excluded: they hold 0.0 and are False in the
        (L, n) bool mask returned with ``return_valid=True`` (pass it to :func:`box_stats`).
    """
    x = as_features(features)
    _check_center(center)
    ref = _resolve_ref(ref, x.shape[0])
    values, valids = [], []
    for unit, valid in _unit_chunks(x, center):
        values.append((unit * unit[ref]).sum(dim=2).clamp(-1.0, 1.0))
        valids.append(valid & valid[ref])
    out = torch.cat(values, dim=1).cpu().numpy()
    valid = torch.cat(valids, dim=1).cpu().numpy()
    out[~valid] = 0.0
    return (out, valid) if return_valid else out


def per_sample_adjacent_cos(features: Any, center: str = "mean", *, return_valid: bool = False):
    """Per-sample cosine between consecutive layers: (L-1, n), row l-1 is cos(h_{l-1}(x), h_l(x)).

    Exclusions as in :func:`per_sample_cos` (0.0, and False in the mask with ``return_valid=True``).
    """
    x = as_features(features)
    _check_center(center)
    if x.shape[0] < 2:
        raise LayertraceError(f"features: adjacent COS needs at least 2 layers, got {x.shape[0]}")
    values, valids = [], []
    for unit, valid in _unit_chunks(x, center):
        values.append((unit[1:] * unit[:-1]).sum(dim=2).clamp(-1.0, 1.0))
        valids.append(valid[1:] & valid[:-1])
    out = torch.cat(values, dim=1).cpu().numpy()
    valid = torch.cat(valids, dim=1).cpu().numpy()
    out[~valid] = 0.0
    return (out, valid) if return_valid else out


def _masked_mean(values: np.ndarray, valid: np.ndarray) -> np.ndarray:
    counts = valid.sum(axis=1)
    sums = np.where(valid, values, 0.0).sum(axis=1)
    return np.where(counts > 0, sums / np.maximum(counts, 1), 0.0)


def cos_to_layer(features: Any, ref: int = -1, center: str = "mean") -> np.ndarray:
    """COS of every layer with layer ``ref`` (default the last): (L,) float64, entry ``ref`` is 1.

    Equals row ``ref`` of :func:`cos_matrix` at O(L n d) cost instead of O(L^2 n d).
    """
    values, valid = per_sample_cos(features, ref=ref, center=center, return_valid=True)
    out = _masked_mean(values, valid)
    out[_resolve_ref(ref, values.shape[0])] = 1.0
    return out


def adjacent_cos(features: Any, center: str = "mean") -> np.ndarray:
    """COS between consecutive layers: (L-1,) float64, entry l-1 is COS(l-1, l)."""
    values, valid = per_sample_adjacent_cos(features, center=center, return_valid=True)
    return _masked_mean(values, valid)


def box_stats(values: Any, valid: Any = None) -> dict[str, np.ndarray]:
    """Quantile summary per row of per-sample values (L, n), for box plots.

    Returns a dict of (L,) float64 arrays ``q0, q25, q50, q75, q100, mean`` (q0 / q100 are min / max;
    quantiles by linear interpolation) and ``count`` (L,) int64, the number of values used. ``valid``
    (L, n) bool excludes entries (as returned by :func:`per_sample_cos` with ``return_valid=True``);
    a row with no valid value reports 0.0 for every statistic and count 0.
    """
    arr = values.detach().cpu().numpy() if isinstance(values, torch.Tensor) else np.asarray(values)
    arr = np.asarray(arr, dtype=np.float64)
    if arr.ndim != 2:
        raise LayertraceError(f"box_stats: expected values of shape (layers, samples), got {arr.shape}")
    mask = np.ones(arr.shape, dtype=bool) if valid is None else np.asarray(valid, dtype=bool)
    if mask.shape != arr.shape:
        raise LayertraceError(f"box_stats: valid mask shape {mask.shape} differs from values shape {arr.shape}")
    keys = ("q0", "q25", "q50", "q75", "q100", "mean")
    out = {key: np.zeros(arr.shape[0]) for key in keys}
    out["count"] = mask.sum(axis=1).astype(np.int64)
    for row in range(arr.shape[0]):
        kept = arr[row, mask[row]]
        if kept.size == 0:
            continue
        q = np.quantile(kept, [0.0, 0.25, 0.5, 0.75, 1.0])
        for key, value in zip(keys[:5], q):
            out[key][row] = value
        out["mean"][row] = kept.mean()
    return out


class MeanAccumulator:
    """Per-layer feature means accumulated batch by batch (the first pass of mean-centred COS).

    ``update(batch (L, b, d))``, ``compute() -> (L, d)`` float64. State is two sums (``state_dict``),
    so processes can all-reduce them (SUM) or :meth:`merge` accumulators.
    """

    def __init__(self, n_layers: int):
        self.n_layers = int(n_layers)
        self.sums: torch.Tensor | None = None
        self.n_samples = 0

    def update(self, batch_features: Any) -> "MeanAccumulator":
        x = as_features(batch_features, name="batch_features")
        check_layer_count(x, self.n_layers, "MeanAccumulator.update")
        batch_sum = x.to(torch.float64).sum(dim=1)
        if self.sums is None:
            self.sums = torch.zeros_like(batch_sum)
        elif self.sums.shape != batch_sum.shape:
            raise LayertraceError(f"MeanAccumulator.update: batch dim {x.shape[2]} differs from earlier batches ({self.sums.shape[1]})")
        self.sums += batch_sum.to(self.sums.device)
        self.n_samples += x.shape[1]
        return self

    def compute(self) -> np.ndarray:
        if self.sums is None or self.n_samples == 0:
            raise LayertraceError("MeanAccumulator.compute: no batch was added; call update() first")
        return (self.sums / self.n_samples).cpu().numpy()

    def state_dict(self) -> dict[str, Any]:
        return {"n_layers": self.n_layers, "n_samples": self.n_samples,
                "sums": None if self.sums is None else self.sums.cpu().numpy()}

    def merge(self, other: "MeanAccumulator") -> "MeanAccumulator":
        if other.n_layers != self.n_layers:
            raise LayertraceError(f"MeanAccumulator.merge: {other.n_layers} layers vs {self.n_layers}")
        if other.sums is not None:
            if self.sums is None:
                self.sums = other.sums.clone()
            else:
                self.sums += other.sums.to(self.sums.device)
            self.n_samples += other.n_samples
        return self


class CosAccumulator:
    """All-pairs COS accumulated batch by batch; memory O(L^2), independent of the number of samples.

    Args:
        n_layers: L.
        centers: (L, d) per-layer centres for ``center="mean-given"``. Mean-centred COS needs the
            means of the *whole* evaluated set before the first batch (a cosine is not linear in its
            centre), so the analysis pass supplies them: from a feature cache, or from a first pass
            with :class:`MeanAccumulator`.
        center: ``"none"``, ``"feature"`` or ``"mean-given"`` (``"mean"`` is accepted as an alias
            when ``centers`` is given). Default: ``"mean-given"`` if ``centers`` is given, else
            ``"none"``.

    ``update(batch (L, b, d))`` adds per-sample cosines for every pair; ``compute() -> (L, L)``.
    ``zero_counts`` (L,) counts excluded zero-norm vectors. The state (``state_dict``) is sums only
    (cosine sums, pair counts, zero counts, sample count), so processes can all-reduce every entry
    with SUM, or call :meth:`merge`; the centres must be the same everywhere.
    """

    def __init__(self, n_layers: int, centers: Any = None, center: str | None = None):
        self.n_layers = int(n_layers)
        if center is None:
            center = "mean-given" if centers is not None else "none"
        if center == "mean" and centers is not None:
            center = "mean-given"
        if center == "mean":
            raise LayertraceError(
                "CosAccumulator: center='mean' needs the per-layer means of the whole set: pass "
                "centers=(L, d) (from a feature cache or a first pass with MeanAccumulator), or use center='none'"
            )
        self.center = _check_center(center, ("none", "feature", "mean-given"))
        self.centers: torch.Tensor | None = None
        if self.center == "mean-given":
            if centers is None:
                raise LayertraceError("CosAccumulator: center='mean-given' needs centers=(L, d) per-layer means")
            c = centers.detach() if isinstance(centers, torch.Tensor) else torch.as_tensor(np.asarray(centers))
            if c.ndim != 2 or c.shape[0] != self.n_layers:
                raise LayertraceError(f"CosAccumulator: centers must have shape ({self.n_layers}, dim), got {tuple(c.shape)}")
            if not bool(torch.isfinite(c).all()):
                raise LayertraceError("CosAccumulator: centers contain NaN or Inf")
            self.centers = c.to(torch.float64)
        elif centers is not None:
            raise LayertraceError(f"CosAccumulator: centers given but center={center!r}; use center='mean-given'")
        self.sums = torch.zeros(self.n_layers, self.n_layers, dtype=torch.float64)
        self.pair_counts = torch.zeros(self.n_layers, self.n_layers, dtype=torch.int64)
        self._zero_counts = torch.zeros(self.n_layers, dtype=torch.int64)
        self.n_samples = 0

    def update(self, batch_features: Any) -> "CosAccumulator":
        """Add a batch (L, b, d) of features (torch or numpy, any float dtype, any device)."""
        x = as_features(batch_features, name="batch_features")
        check_layer_count(x, self.n_layers, "CosAccumulator.update")
        return self._add(x)

    def _add(self, x: torch.Tensor) -> "CosAccumulator":
        """Add an already validated batch (L, b, d)."""
        means = None
        if self.centers is not None:
            if self.centers.shape[1] != x.shape[2]:
                raise LayertraceError(f"CosAccumulator.update: batch dim {x.shape[2]} differs from centers dim {self.centers.shape[1]}")
            means = self.centers.to(x.device)
        device = x.device
        sums = torch.zeros(self.n_layers, self.n_layers, dtype=torch.float64, device=device)
        counts = torch.zeros(self.n_layers, self.n_layers, dtype=torch.float64, device=device)
        zeros = torch.zeros(self.n_layers, dtype=torch.int64, device=device)
        center = "mean" if self.center == "mean-given" else self.center
        for unit, valid in _unit_chunks(x, center, means):
            flat = unit.reshape(self.n_layers, -1)
            sums += flat @ flat.T
            v = valid.to(torch.float64)
            counts += v @ v.T
            zeros += (~valid).sum(dim=1)
        self.sums += sums.cpu()
        self.pair_counts += counts.round().to(torch.int64).cpu()
        self._zero_counts += zeros.cpu()
        self.n_samples += x.shape[1]
        return self

    @property
    def zero_counts(self) -> np.ndarray:
        """(L,) int64 number of zero-norm vectors (after centering) excluded so far, per layer."""
        return self._zero_counts.numpy().copy()

    def compute(self, *, _warn_name: str = "CosAccumulator") -> np.ndarray:
        """(L, L) float64 COS matrix: mean over samples valid at both layers; see the module docstring."""
        if self.n_samples == 0:
            raise LayertraceError("CosAccumulator.compute: no batch was added; call update() first")
        counts = self.pair_counts.to(torch.float64)
        matrix = torch.where(counts > 0, self.sums / counts.clamp(min=1.0), torch.zeros_like(counts))
        matrix = (0.5 * (matrix + matrix.T)).clamp(-1.0, 1.0)
        matrix.fill_diagonal_(1.0)
        empty = [int(l) for l in torch.nonzero(self._zero_counts == self.n_samples).flatten().tolist()]
        warn_degenerate(_warn_name, empty, "have only zero vectors after centering")
        return matrix.numpy()

    def state_dict(self) -> dict[str, Any]:
        """Plain-numpy state; every numeric entry except ``centers`` is a sum (all-reduce with SUM)."""
        return {
            "n_layers": self.n_layers,
            "center": self.center,
            "centers": None if self.centers is None else self.centers.cpu().numpy(),
            "sums": self.sums.numpy().copy(),
            "pair_counts": self.pair_counts.numpy().copy(),
            "zero_counts": self._zero_counts.numpy().copy(),
            "n_samples": self.n_samples,
        }

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> "CosAccumulator":
        acc = cls(state["n_layers"], centers=state["centers"], center=state["center"])
        acc.sums = torch.as_tensor(np.asarray(state["sums"], dtype=np.float64)).clone()
        acc.pair_counts = torch.as_tensor(np.asarray(state["pair_counts"], dtype=np.int64)).clone()
        acc._zero_counts = torch.as_tensor(np.asarray(state["zero_counts"], dtype=np.int64)).clone()
        acc.n_samples = int(state["n_samples"])
        return acc

    def merge(self, other: "CosAccumulator") -> "CosAccumulator":
        """Add another accumulator's state (same layers, centering and centres) into this one."""
        if other.n_layers != self.n_layers or other.center != self.center:
            raise LayertraceError(
                f"CosAccumulator.merge: incompatible ({other.n_layers} layers, {other.center!r}) vs "
                f"({self.n_layers} layers, {self.center!r})"
            )
        if self.centers is not None and not torch.equal(self.centers.cpu(), other.centers.cpu()):
            raise LayertraceError("CosAccumulator.merge: the two accumulators use different centers")
        self.sums += other.sums
        self.pair_counts += other.pair_counts
        self._zero_counts += other._zero_counts
        self.n_samples += other.n_samples
        return self
