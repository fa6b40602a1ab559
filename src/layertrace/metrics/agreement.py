"""How far one similarity matrix follows another (e.g. COS vs CKA): Pearson and Spearman correlation
over the off-diagonal layer pairs."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from ..errors import LayertraceError


def _as_square(matrix: Any, name: str) -> np.ndarray:
    arr = matrix.detach().cpu().numpy() if isinstance(matrix, torch.Tensor) else np.asarray(matrix)
    arr = np.asarray(arr, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[0] != arr.shape[1]:
        raise LayertraceError(f"agreement: {name} must be a square (layers, layers) matrix, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise LayertraceError(f"agreement: {name} contains NaN or Inf")
    return arr


def average_ranks(values: np.ndarray) -> np.ndarray:
    """Ranks 1..n of a 1-D array, ties sharing the average of their ranks (as scipy's rankdata)."""
    values = np.asarray(values, dtype=np.float64)
    order = np.argsort(values, kind="mergesort")
    sorted_values = values[order]
    new_group = np.concatenate([[True], sorted_values[1:] != sorted_values[:-1]])
    group_of_sorted = np.cumsum(new_group) - 1  # 0-based tie group of each sorted position
    starts = np.flatnonzero(new_group)  # first sorted position of each group
    ends = np.concatenate([starts[1:], [values.size]])  # one past the last
    group_rank = (starts + 1 + ends) / 2.0  # average of 1-based ranks starts+1 .. ends
    ranks = np.empty(values.size, dtype=np.float64)
    ranks[order] = group_rank[group_of_sorted]
    return ranks


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    if np.ptp(a) == 0.0 or np.ptp(b) == 0.0:  # constant: undefined (rounding would fake a value)
        return float("nan")
    a = a - a.mean()
    b = b - b.mean()
    denom = math.sqrt(float(a @ a) * float(b @ b))
    if denom == 0.0:
        return float("nan")
    return float(np.clip((a @ b) / denom, -1.0, 1.0))


def agreement(a: Any, b: Any) -> dict[str, float]:
    """Pearson and Spearman correlation of two (L, L) similarity matrices over pairs l < m.

    Only the upper triangle off the diagonal is used (both matrices are symmetric and their diagonal
    is 1 by construction, which would inflate the correlation). Spearman is the Pearson correlation
    of average ranks (ties share ranks), computed in numpy.

    Returns:
        ``{"pearson": float, "spearman": float}``. A correlation is undefined (NaN, written as null
        in JSON by ``layertrace.io``) when there are fewer than 2 pairs (L <= 2) or when either
        matrix is constant over the pairs.
    """
    left, right = _as_square(a, "first matrix"), _as_square(b, "second matrix")
    if left.shape != right.shape:
        raise LayertraceError(f"agreement: matrices have different shapes {left.shape} and {right.shape}")
    rows, cols = np.triu_indices(left.shape[0], k=1)
    x, y = left[rows, cols], right[rows, cols]
    if x.size < 2:
        return {"pearson": float("nan"), "spearman": float("nan")}
    return {"pearson": _pearson(x, y), "spearman": _pearson(average_ranks(x), average_ranks(y))}
