"""Saturation layers (Geva et al. 2022) and epsilon-effective depth (after Galanti et al.).

Definitions (PAPER.md section 4), over the traced layers ``layers`` (sorted, the last one is L):

* saturation layer of a prediction: the smallest traced layer l such that argmax R(h_k) equals the
  *final* prediction argmax R(h_L) for every traced k >= l. It is relative to the model's own
  prediction, not to the label, so it exists for every sample (at worst it is L).
* epsilon-effective depth: the smallest traced layer l with Acc(l) >= 1 - epsilon (absolute form)
  or Acc(l) >= (1 - epsilon) * Acc(L) (relative form); L when no layer qualifies.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

# Accuracies are means of 0/1 values; a tiny slack keeps 0.975 >= 1 - 0.025 true in floating point.
_DEPTH_SLACK = 1e-12


def saturation_positions(preds: np.ndarray) -> np.ndarray:
    """Position (into the traced layers) of each prediction's saturation layer.

    Args:
        preds: (n, S) predicted class / token at each traced layer; column S-1 is the final layer.

    Returns:
        (n,) int64 in ``0..S-1``: the first position from which every later prediction equals
        ``preds[:, -1]``.
    """
    preds = np.asarray(preds)
    if preds.ndim != 2 or preds.shape[1] == 0:
        raise ValueError(f"preds must be (n, S) with S >= 1, got shape {preds.shape}")
    agree = preds == preds[:, -1:]
    # Number of trailing layers that agree with the final prediction (>= 1: the last one itself).
    trailing = np.cumprod(agree[:, ::-1], axis=1).sum(axis=1)
    return (preds.shape[1] - trailing).astype(np.int64)


def saturation_layers(preds: np.ndarray, layers: Sequence[int]) -> np.ndarray:
    """Saturation layer of each prediction, as a layer index from ``layers``.

    Args:
        preds: (n, S) predictions at the traced layers ``layers`` (length S, last one = L).
        layers: the traced layer indices.

    Returns:
        (n,) int64 layer indices.
    """
    layers_arr = np.asarray(layers, dtype=np.int64)
    if layers_arr.shape[0] != np.asarray(preds).shape[1]:
        raise ValueError(f"preds has {np.asarray(preds).shape[1]} layers but layers has {len(layers_arr)}")
    return layers_arr[saturation_positions(preds)]


def saturation_histogram(positions: np.ndarray, n_positions: int) -> np.ndarray:
    """Counts of saturation positions: (S,) int64, entry i = predictions saturating at layers[i]."""
    return np.bincount(np.asarray(positions, dtype=np.int64), minlength=n_positions)[:n_positions].astype(np.int64)


def final_agreement_counts(preds: np.ndarray) -> np.ndarray:
    """Per traced layer, how many predictions equal the last layer's: (S,) int64 from (n, S) ``preds``.

    Divided by n this is the fraction a draft read at that layer would get accepted by the last one
    (greedy self-speculation); unlike saturation it does not ask the later layers to agree too, so it
    is at least :func:`saturation_cumulative` at every layer.
    """
    preds = np.asarray(preds)
    return (preds == preds[:, -1:]).sum(axis=0).astype(np.int64)


def saturation_cumulative(hist: np.ndarray) -> np.ndarray:
    """Cumulative saturation curve: (S,) float64, entry i = fraction saturated at or before layers[i]."""
    hist = np.asarray(hist, dtype=np.float64)
    total = hist.sum()
    return np.cumsum(hist) / total if total > 0 else np.full(hist.shape, np.nan)


def effective_depth(accuracy: Sequence[float], layers: Sequence[int], epsilon: float,
                    relative: bool = False) -> int:
    """Epsilon-effective depth of a layer-wise accuracy curve.

    Args:
        accuracy: (S,) accuracy of the shared readout at each traced layer (last = layer L).
        layers: the traced layer indices (length S).
        epsilon: tolerance in [0, 1].
        relative: threshold ``(1 - epsilon) * accuracy[-1]`` instead of ``1 - epsilon``.

    Returns:
        The smallest layer in ``layers`` whose accuracy reaches the threshold, else ``layers[-1]``.
    """
    acc = np.asarray(accuracy, dtype=np.float64)
    if acc.shape[0] != len(layers):
        raise ValueError(f"accuracy has {acc.shape[0]} entries but layers has {len(layers)}")
    if not 0.0 <= epsilon <= 1.0:
        raise ValueError(f"epsilon must lie in [0, 1], got {epsilon}")
    threshold = (1.0 - epsilon) * acc[-1] if relative else 1.0 - epsilon
    reached = np.flatnonzero(acc >= threshold - _DEPTH_SLACK)
    return int(layers[reached[0]]) if reached.size else int(layers[-1])


def effective_depths(accuracy: Sequence[float], layers: Sequence[int],
                     epsilons: Sequence[float]) -> dict[str, list]:
    """Both forms for several epsilons: ``{"epsilons": [...], "absolute": [...], "relative": [...]}``."""
    eps = [float(e) for e in epsilons]
    return {
        "epsilons": eps,
        "absolute": [effective_depth(accuracy, layers, e, relative=False) for e in eps],
        "relative": [effective_depth(accuracy, layers, e, relative=True) for e in eps],
    }
