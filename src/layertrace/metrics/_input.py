"""Input handling shared by every metric.

One place accepts torch tensors or numpy arrays of shape (layers, samples, dim), in any float dtype
and on any device, checks them (shape, NaN / Inf naming the layer) and decides what a degenerate layer
or a zero-norm vector is. Metrics upcast to float64 on the input's device and return numpy.
"""

from __future__ import annotations

import warnings
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from ..errors import LayertraceError

FEATURES_SHAPE = "(layers, samples, dim)"

#: A centred vector x - c with |x - c| <= ZERO_NORM_RTOL * |c| is treated as zero (exactly zero, or
#: equal to its centre up to float64 rounding); likewise a layer whose centred sum of squares is at
#: most ZERO_NORM_RTOL^2 times its raw sum of squares is degenerate.
ZERO_NORM_RTOL = 1e-10

#: Target size in bytes of one float64 chunk of samples processed at a time: small enough to stay in
#: cache (element-wise passes over cached chunks are several times faster than over the whole array).
CHUNK_BYTES = 4 * 2**20


class DegenerateLayerWarning(UserWarning):
    """A layer has no variation left after centering, so its similarity to others is undefined.

    Every metric then reports similarity 0 between that layer and the others (1 with itself) and
    names the layer in this warning. Typical cause: a token whose features do not depend on the input
    at layer 0 (the [CLS] embedding of BERT / ViT), or a dead layer.
    """


def as_features(features: Any, *, name: str = "features", min_samples: int = 1) -> torch.Tensor:
    """Return ``features`` as a torch tensor of shape (L, n, d) on its own device, dtype unchanged.

    Accepts a torch tensor, a numpy array, or a sequence of L per-layer (n, d) arrays / tensors.
    Raises a one-line :class:`LayertraceError` for a wrong shape, too few samples, a non-real dtype,
    or NaN / Inf (naming the first bad layer index along axis 0).
    """
    x = _to_tensor(features, name)
    if x.ndim != 3:
        raise LayertraceError(
            f"{name}: expected shape {FEATURES_SHAPE}, got {tuple(x.shape)}; "
            f"stack per-layer (samples, dim) arrays along a new first axis"
        )
    n_layers, n_samples, dim = x.shape
    if n_layers < 1 or dim < 1:
        raise LayertraceError(f"{name}: expected shape {FEATURES_SHAPE} with at least 1 layer and 1 dim, got {tuple(x.shape)}")
    if n_samples < min_samples:
        raise LayertraceError(f"{name}: need at least {min_samples} samples, got {n_samples} (shape {tuple(x.shape)} is {FEATURES_SHAPE})")
    if x.dtype.is_complex:
        raise LayertraceError(f"{name}: complex dtype {x.dtype} is not supported; pass real features")
    if not x.dtype.is_floating_point:
        x = x.to(torch.float64)
    check_finite(x, name=name)
    return x


def _to_tensor(features: Any, name: str) -> torch.Tensor:
    if isinstance(features, torch.Tensor):
        return features.detach()
    if isinstance(features, np.ndarray):
        if features.dtype == object:
            raise LayertraceError(f"{name}: object array; pass a numeric array of shape {FEATURES_SHAPE}")
        return torch.from_numpy(np.ascontiguousarray(features))
    if isinstance(features, Sequence) and len(features) > 0 and not isinstance(features, (str, bytes)):
        layers = [_to_tensor(layer, name) for layer in features]
        shapes = {tuple(t.shape) for t in layers}
        if len(shapes) != 1:
            raise LayertraceError(f"{name}: per-layer arrays have different shapes {sorted(shapes)}; all must be (samples, dim)")
        devices = {t.device for t in layers}
        if len(devices) != 1:
            raise LayertraceError(f"{name}: per-layer tensors live on different devices {sorted(map(str, devices))}")
        dtype = layers[0].dtype
        for t in layers[1:]:
            dtype = torch.promote_types(dtype, t.dtype)
        return torch.stack([t.to(dtype) for t in layers])
    raise LayertraceError(
        f"{name}: expected a torch tensor or numpy array of shape {FEATURES_SHAPE}, got {type(features).__name__}"
    )


def check_finite(x: torch.Tensor, *, name: str = "features") -> None:
    """Raise a one-line error naming the first layer (index along axis 0) holding NaN or Inf.

    Fast path: per-layer float64 sums, chunk by chunk (a NaN or Inf makes its layer's sum non-finite);
    only if some sum is not finite (or overflowed) are the layers scanned element by element.
    """
    n_layers, n_samples, dim = x.shape
    sums = torch.zeros(n_layers, dtype=torch.float64, device=x.device)
    for part in sample_chunks(n_samples, n_layers, dim):
        sums += x[:, part].sum(dim=(1, 2), dtype=torch.float64)
    if bool(torch.isfinite(sums).all()):
        return
    for layer in range(n_layers):
        finite = torch.isfinite(x[layer])
        if not bool(finite.all()):
            bad_samples = int((~finite).reshape(finite.shape[0], -1).any(dim=1).sum())
            raise LayertraceError(
                f"{name}: layer index {layer} contains NaN or Inf in {bad_samples} of {x.shape[1]} samples; "
                f"fix the model's numerics (e.g. fp16 overflow: run in float32/bf16) or drop those samples"
            )


def fresh_float64(x: torch.Tensor) -> torch.Tensor:
    """A new contiguous float64 copy of ``x``, never a view of it: safe to centre or scale in place."""
    return x.to(torch.float64, memory_format=torch.contiguous_format, copy=True)


def sample_chunks(n_samples: int, n_layers: int, dim: int, chunk_bytes: int = CHUNK_BYTES) -> Iterator[slice]:
    """Yield slices over the sample axis so that one float64 chunk (L, b, d) is about ``chunk_bytes``."""
    size = max(1, chunk_bytes // max(1, 8 * n_layers * dim))
    for start in range(0, n_samples, size):
        yield slice(start, min(n_samples, start + size))


def layer_means(x: torch.Tensor) -> torch.Tensor:
    """Per-layer mean over samples, (L, n, d) -> (L, d) float64, accumulated chunk by chunk."""
    n_layers, n_samples, dim = x.shape
    total = torch.zeros(n_layers, dim, dtype=torch.float64, device=x.device)
    for part in sample_chunks(n_samples, n_layers, dim):
        total += x[:, part].sum(dim=1, dtype=torch.float64)
    return total / n_samples


def degenerate_layers(centred_sq: torch.Tensor, raw_sq: torch.Tensor) -> list[int]:
    """Layers whose centred squared norm is negligible beside their raw squared norm (or both zero).

    ``centred_sq`` and ``raw_sq`` are (L,) sums of squared entries after and before centering.
    """
    bad = centred_sq <= (ZERO_NORM_RTOL**2) * raw_sq
    return [int(i) for i in torch.nonzero(bad).flatten().tolist()]


def warn_degenerate(metric: str, layers: list[int], what: str = "constant over samples") -> None:
    """Emit one :class:`DegenerateLayerWarning` naming the degenerate layers of ``metric``."""
    if layers:
        warnings.warn(
            f"{metric}: layer index(es) {layers} {what}; their similarity to other layers is set to 0 "
            f"(1 with themselves)",
            DegenerateLayerWarning,
            stacklevel=3,
        )


def finish_similarity(gram: torch.Tensor, degenerate: list[int], lower: float, upper: float) -> np.ndarray:
    """Normalise an (L, L) matrix of inner products into a similarity matrix.

    ``sim[l, m] = gram[l, m] / sqrt(gram[l, l] * gram[m, m])``, clipped to [lower, upper] (clipping
    only removes float64 rounding: the inputs obey Cauchy-Schwarz), symmetrised, diagonal exactly 1,
    degenerate layers (and layers with non-positive self term) 0 off the diagonal.
    """
    gram = gram.detach().to(torch.float64).cpu()
    diag = torch.diagonal(gram).clone()
    bad = set(degenerate) | {int(i) for i in torch.nonzero(diag <= 0).flatten().tolist()}
    safe = torch.where(diag > 0, diag, torch.ones_like(diag))
    scale = torch.sqrt(safe)
    sim = gram / scale[:, None] / scale[None, :]
    sim = 0.5 * (sim + sim.T)
    sim = sim.clamp(lower, upper)
    for layer in bad:
        sim[layer, :] = 0.0
        sim[:, layer] = 0.0
    sim.fill_diagonal_(1.0)
    return sim.numpy()


def check_layer_count(x: torch.Tensor, n_layers: int, who: str) -> None:
    """Raise if a batch for an accumulator built for ``n_layers`` layers has another count."""
    if x.shape[0] != n_layers:
        raise LayertraceError(
            f"{who}: batch has {x.shape[0]} layers but the accumulator was built for {n_layers}; "
            f"pass batches of shape {FEATURES_SHAPE} with the same layers every time"
        )
