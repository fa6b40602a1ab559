"""Layer-wise readout evaluation during and after training (cheap: one forward pass per batch).

For each layer l in 0..L: accuracy of ``argmax R(h_l)`` against the labels and the mean
cross-entropy (next-token accuracy / cross-entropy for causal LMs, whose head is applied one layer
at a time so that (L+1, B, T, V) logits never coexist). With per-layer heads, each layer is read by
its own head instead. Accumulated in float64.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..models.layer_readout import LayerReadout
from .losses import IGNORE_INDEX, causal_lm_labels


@dataclass
class LayerwiseEval:
    """Per-layer readout statistics over an evaluation set.

    Attributes:
        layers: the evaluated layer indices (0..L).
        accuracy: per layer, fraction of samples (tokens for LMs) whose argmax matches the label.
        loss: per layer, mean cross-entropy.
        n: number of samples (tokens for LMs) counted.
    """

    layers: list[int]
    accuracy: list[float]
    loss: list[float]
    n: int

    def to_dict(self) -> dict[str, Any]:
        return {"layers": self.layers, "accuracy": self.accuracy, "loss": self.loss, "n": self.n}


@torch.no_grad()
def evaluate_layerwise(adapter: nn.Module, batches: Iterable[Mapping[str, Any]], heads: nn.Module | None = None,
                       layers: list[int] | None = None) -> LayerwiseEval:
    """Layer-wise readout accuracy and cross-entropy of ``adapter`` over ``batches``.

    Args:
        adapter: a model adapter; put in eval mode for the pass and restored afterwards.
        batches: dicts the model takes, with ``labels`` ((B,) class ids; causal LMs may omit them).
        heads: optional :class:`~layertrace.training.heads.PerLayerHeads` reading each layer.
        layers: layers to evaluate (default 0..L, or the layers that have a head).
    """
    read = LayerReadout.of(adapter, heads)
    if layers is None:
        layers = read.layers
    was_training = adapter.training
    adapter.eval()
    correct = np.zeros(len(layers), dtype=np.float64)
    loss_sum = np.zeros(len(layers), dtype=np.float64)
    count = 0
    causal = getattr(adapter, "kind", "classifier") == "causal_lm"
    try:
        for batch in batches:
            feats, _ = adapter.layer_features(batch, layers)
            if causal:
                labels = causal_lm_labels(dict(batch)).to(adapter.device)[:, 1:]
                valid = labels != IGNORE_INDEX
                n = int(valid.sum())
                for i, (layer, h) in enumerate(zip(layers, feats)):
                    logits = read(layer, h)[:, :-1].float()
                    correct[i] += float(((logits.argmax(-1) == labels) & valid).sum())
                    loss_sum[i] += float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1),
                                                         ignore_index=IGNORE_INDEX, reduction="sum"))
                count += n
                continue
            labels = batch["labels"].to(adapter.device)
            logits = read.stacked(layers, feats).float()
            correct += (logits.argmax(-1) == labels[None]).sum(dim=1).double().cpu().numpy()
            ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.repeat(len(layers)), reduction="none")
            loss_sum += ce.view(len(layers), -1).sum(dim=1).double().cpu().numpy()
            count += int(labels.shape[0])
    finally:
        adapter.train(was_training)
    denom = max(count, 1)
    return LayerwiseEval(layers=list(layers), accuracy=(correct / denom).tolist(), loss=(loss_sum / denom).tolist(),
                         n=count)
