"""Layer-wise readout statistics of the shared head: accuracy, probabilities, entropy, cross-entropy.

Everything here works on logits that were already produced by the shared readout R(h_l) of one
layer, so the same code serves classifiers (one prediction per sample) and causal LMs (one
prediction per scored token). Per-sample values are returned as float64 / int64 tensors; the
streaming :class:`ReadoutAccumulator` sums them per layer in float64 so that batches, shards and
processes can be merged exactly (up to summation order).

Names: :class:`ReadoutValues` is what one layer's logits give per prediction; the readout *object*
that produces logits from a layer, ``(layer, h) -> logits``, is
:class:`layertrace.models.layer_readout.LayerReadout`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

# Order of the rows of ReadoutAccumulator.sums (also the order of its merged state).
READOUT_FIELDS = ("accuracy", "true_class_prob", "max_prob", "entropy", "cross_entropy")


@dataclass
class ReadoutValues:
    """Per-prediction readout values of one layer, for n predictions (samples or tokens).

    Attributes:
        pred: (n,) int64 argmax class / token.
        correct: (n,) float64, 1.0 where ``pred == target``.
        true_class_prob: (n,) float64 softmax probability of the target.
        max_prob: (n,) float64 largest softmax probability (the early-exit confidence).
        entropy: (n,) float64 entropy of the softmax in nats.
        cross_entropy: (n,) float64 ``-log p(target)`` in nats.
    """

    pred: Tensor
    correct: Tensor
    true_class_prob: Tensor
    max_prob: Tensor
    entropy: Tensor
    cross_entropy: Tensor


def layer_readout(logits: Tensor, targets: Tensor, compute_dtype: torch.dtype = torch.float64) -> ReadoutValues:
    """Readout values of one layer's logits.

    Args:
        logits: (n, K) logits of the shared readout (any float dtype; upcast to ``compute_dtype``).
        targets: (n,) int target classes / next tokens in ``0..K-1``.
        compute_dtype: float64 for classifiers; float32 is enough (and 2x lighter) for a large
            vocabulary, the results are still returned in float64.

    Returns:
        :class:`ReadoutValues` with (n,) tensors on ``logits.device``.
    """
    z = logits.to(compute_dtype)
    logp = torch.log_softmax(z, dim=-1)
    p = logp.exp()
    targets = targets.to(device=z.device, dtype=torch.long)
    pred = z.argmax(dim=-1)
    logp_true = logp.gather(-1, targets[:, None])[:, 0]
    # 0 * log 0 is taken as 0 (p underflows to exactly 0 for very peaked softmaxes).
    entropy = -(p * logp).nan_to_num(0.0).sum(-1)
    return ReadoutValues(
        pred=pred,
        correct=(pred == targets).to(torch.float64),
        true_class_prob=logp_true.exp().to(torch.float64),
        max_prob=p.max(dim=-1).values.to(torch.float64),
        entropy=entropy.to(torch.float64),
        cross_entropy=(-logp_true).to(torch.float64),
    )


def stacked_layer_readout(logits: Tensor, targets: Tensor, compute_dtype: torch.dtype = torch.float64) -> ReadoutValues:
    """:func:`layer_readout` of S layers at once (one call instead of S: fewer small kernels).

    Args:
        logits: (S, n, K) logits of every traced layer.
        targets: (n,) targets shared by the layers.

    Returns:
        :class:`ReadoutValues` whose fields are (S, n).
    """
    s, n, k = logits.shape
    flat = layer_readout(logits.reshape(s * n, k), targets.to(logits.device).repeat(s), compute_dtype)
    return ReadoutValues(**{name: getattr(flat, name).reshape(s, n) for name in ReadoutValues.__dataclass_fields__})


class ReadoutAccumulator:
    """Streaming per-layer means of the readout values (float64 sums, mergeable).

    Args:
        n_layers: S, the number of traced layers.

    ``update(i, readout)`` adds layer ``i``'s values; ``add_count(n)`` counts predictions once
    per batch; ``compute()`` returns ``{field: (S,) float64 mean}`` for the fields of
    :data:`READOUT_FIELDS`. ``state()`` / ``load_state()`` expose one float64 vector for
    ``all_reduce``; ``merge(other)`` adds another accumulator.
    """

    def __init__(self, n_layers: int):
        self.n_layers = int(n_layers)
        self.sums = np.zeros((len(READOUT_FIELDS), self.n_layers), dtype=np.float64)
        self.count = 0.0

    def update(self, layer_position: int, readout: ReadoutValues) -> None:
        """Add the values of one layer (position ``layer_position`` in ``0..S-1``)."""
        for row, name in enumerate(READOUT_FIELDS):
            values = readout.correct if name == "accuracy" else getattr(readout, name)
            self.sums[row, layer_position] += float(values.sum())

    def update_layers(self, readout: ReadoutValues) -> None:
        """Add the values of every layer at once (fields (S, n), from :func:`stacked_layer_readout`)."""
        for row, name in enumerate(READOUT_FIELDS):
            values = readout.correct if name == "accuracy" else getattr(readout, name)
            self.sums[row] += values.sum(dim=1).cpu().numpy()

    def add_count(self, n: int) -> None:
        """Count ``n`` predictions (call once per batch, not once per layer)."""
        self.count += float(n)

    def merge(self, other: "ReadoutAccumulator") -> "ReadoutAccumulator":
        self.sums += other.sums
        self.count += other.count
        return self

    def state(self) -> np.ndarray:
        """One float64 vector ``[count, sums...]`` (sum it across processes, then ``load_state``)."""
        return np.concatenate([[self.count], self.sums.ravel()])

    def load_state(self, state: np.ndarray) -> None:
        self.count = float(state[0])
        self.sums = np.asarray(state[1:], dtype=np.float64).reshape(self.sums.shape).copy()

    def compute(self) -> dict[str, np.ndarray]:
        """``{field: (S,) mean over predictions}``; NaN when nothing was counted."""
        if self.count == 0:
            return {name: np.full(self.n_layers, np.nan) for name in READOUT_FIELDS}
        return {name: self.sums[row] / self.count for row, name in enumerate(READOUT_FIELDS)}
