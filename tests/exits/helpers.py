"""Helpers for the exits tests: naive per-sample reference loops and threshold choice."""

from __future__ import annotations

import math

import torch


def naive_exit_layers(logits: torch.Tensor, policy: str, threshold: float) -> list[int]:
    """The exit rule written per sample with plain Python loops (logits (L, B, K), layers 1..L)."""
    n_layers, n_samples, _ = logits.shape
    out = []
    for b in range(n_samples):
        chosen = n_layers
        run, previous = 0, None
        for layer in range(1, n_layers + 1):
            probs = torch.softmax(logits[layer - 1, b].double(), -1).tolist()
            pred = max(range(len(probs)), key=lambda k: probs[k])
            if policy == "confidence":
                ok = max(probs) >= threshold
            elif policy == "entropy":
                ok = -sum(p * math.log(p) for p in probs if p > 0) <= threshold
            elif policy == "patience":
                run = run + 1 if pred == previous else 1
                previous = pred
                ok = run >= threshold
            elif policy == "fixed":
                ok = layer >= threshold
            else:
                raise ValueError(policy)
            if ok:
                chosen = layer
                break
        out.append(chosen)
    return out


def naive_oracle(logits: torch.Tensor, labels: torch.Tensor) -> list[int]:
    """Earliest layer from which the argmax stays equal to the label (or, if wrong at L, to the final one)."""
    n_layers = logits.shape[0]
    preds = logits.argmax(-1)
    out = []
    for b in range(logits.shape[1]):
        target = int(labels[b]) if int(preds[-1, b]) == int(labels[b]) else int(preds[-1, b])
        layer = n_layers
        while layer > 1 and int(preds[layer - 2, b]) == target:
            layer -= 1
        out.append(layer)
    return out


def scores(logits: torch.Tensor, policy: str) -> torch.Tensor:
    """Per-layer, per-sample score the threshold is compared with (float32 as the policies use)."""
    if policy == "confidence":
        return logits.float().softmax(-1).amax(-1)
    log_p = logits.float().log_softmax(-1)
    return -(log_p.exp() * log_p).sum(-1)


def thresholds_in_gaps(values: torch.Tensor, n: int = 6) -> list[float]:
    """n thresholds at midpoints between distinct observed scores, so no score lies on a threshold
    (float noise between a full-batch and a sliced-batch readout cannot flip a decision)."""
    distinct = torch.unique(values.flatten().double())
    mids = ((distinct[1:] + distinct[:-1]) / 2)
    gaps = distinct[1:] - distinct[:-1]
    mids = mids[gaps > 1e-4]
    pick = torch.linspace(0, len(mids) - 1, n).round().long().unique()
    return [float(m) for m in mids[pick]]
