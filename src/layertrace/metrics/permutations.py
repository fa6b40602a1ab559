"""Seeded row permutations and the calibration rule of a permutation test (the primitives that
:mod:`.calibration` and :class:`~layertrace.metrics.cka_minibatch.MinibatchCKA`'s streamed null share).

The permutations are ``torch.randperm(n, generator=torch.Generator().manual_seed(seed))`` drawn K
times in order, the sequence the ``calibrated-similarity`` package draws; the rule is its Algorithm 1
(see :mod:`.calibration`).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from ..errors import LayertraceError

ALPHA = 0.05
DEFAULT_PERMUTATIONS = 200


def draw_permutations(n: int, n_permutations: int, generator: torch.Generator) -> torch.Tensor:
    """(K, n) int64: ``torch.randperm(n, generator=generator)`` K times, in order."""
    if n_permutations < 1:
        raise LayertraceError(f"n_permutations={n_permutations} must be >= 1")
    return torch.stack([torch.randperm(n, generator=generator) for _ in range(int(n_permutations))])


def seeded_permutations(n: int, n_permutations: int = DEFAULT_PERMUTATIONS, seed: int = 0) -> torch.Tensor:
    """(K, n) int64 seeded row permutations: the sequence ``calibrated-similarity`` draws from
    ``torch.Generator().manual_seed(seed)``."""
    return draw_permutations(n, n_permutations, torch.Generator().manual_seed(int(seed)))


def check_permutations(perms: Any, n: int, n_permutations: int | None, who: str) -> torch.Tensor:
    """Validate a (K, n) array of row permutations; returns it as int64 torch."""
    p = torch.as_tensor(np.asarray(perms) if not isinstance(perms, torch.Tensor) else perms).to(torch.int64)
    if p.ndim != 2 or p.shape[1] != n or (n_permutations is not None and p.shape[0] != n_permutations):
        want = f"({n_permutations if n_permutations is not None else 'K'}, {n})"
        raise LayertraceError(f"{who}: permutations must have shape {want}, got {tuple(p.shape)}")
    if not bool((torch.sort(p, dim=1).values == torch.arange(n)).all()):
        raise LayertraceError(f"{who}: every row of permutations must be a permutation of 0..{n - 1}")
    return p


def calibrate_scores(observed: Any, null: Any, alpha: float = ALPHA, smax: float = 1.0) -> dict[str, Any]:
    """Calibrate (L, L) observed scores against a (K, L, L) permutation null, entry by entry.

    ``calibrated-similarity``'s rule: tau = the ceil((1 - alpha)(K + 1))-th smallest of the K + 1
    values (observed and null), ``p = (1 + #{null >= observed}) / (K + 1)``,
    ``calibrated = clip((observed - tau) / max(smax - tau, 1e-12), 0, 1)``.

    Returns:
        ``{"score", "calibrated", "tau", "p_value"}`` (L, L) float64 numpy each, plus
        ``"n_permutations"`` and ``"alpha"``. The diagonal of ``calibrated`` is 1 and of ``p_value``
        1 / (K + 1) (a layer is identical to itself), as ``score``'s diagonal is 1.
    """
    obs = np.asarray(observed, dtype=np.float64)
    nul = np.asarray(null, dtype=np.float64)
    if not 0.0 < alpha < 1.0:
        raise LayertraceError(f"alpha={alpha} must lie in (0, 1)")
    if nul.ndim != 3 or nul.shape[1:] != obs.shape or nul.shape[0] < 1:
        raise LayertraceError(f"calibrate_scores: null must have shape (K, {obs.shape[0]}, {obs.shape[-1]}), "
                              f"got {nul.shape}")
    k = nul.shape[0]
    combined = np.sort(np.concatenate([obs[None], nul]), axis=0)
    index = min(max(int(math.ceil((1.0 - alpha) * (k + 1))) - 1, 0), k)
    tau = combined[index]
    p_value = (1.0 + (nul >= obs[None]).sum(axis=0)) / (k + 1)
    calibrated = np.clip((obs - tau) / np.maximum(smax - tau, 1e-12), 0.0, 1.0)
    eye = np.eye(obs.shape[0], dtype=bool) & (obs == 1.0)
    calibrated[eye] = 1.0
    p_value[eye] = 1.0 / (k + 1)
    return {"score": obs, "calibrated": calibrated, "tau": tau, "p_value": p_value,
            "n_permutations": int(k), "alpha": float(alpha)}
