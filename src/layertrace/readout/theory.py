"""The paper's theory as checks on a model's own trajectories (PAPER.md section 3).

Every function is pure and works on per-sample arrays, so the analysis pass can call it batch by
batch (nothing here needs the whole dataset):

* :func:`theorem_2_1_violations` - for traced layers l1 < l2 < l3, Theorem 2.1 says
  COS(h_l1, h_l3) < COS(h_l2, h_l3). A triple *violates* it when
  ``cos[l1, l3] > cos[l2, l3] + tol``. Counted per sample and over (sample, triple) pairs.
* :func:`trajectory_straightness` - end-to-end distance over path length of each sample's feature
  trajectory h_{layers[0]} -> ... -> h_{layers[-1]}: 1 for a straight monotone path, smaller when the
  path bends, 0 for a closed loop.
* :func:`geodesic_residual` - the geodesic assumption itself, h_l ~ (1 - t_l) h_first + t_l h_last
  with t_l = (l - first) / (last - first): mean distance of h_l from that point, relative to the
  chord length ||h_last - h_first||. 0 for a straight path traversed at uniform speed.
* :func:`theorem_2_2_cooccurrence` - over consecutive traced layers, how often an increase of the
  COS to the last layer comes with an increase of the true-class probability of R(h_l).
* :func:`norm_ratios` - ||h_l|| / ||h_next - h_l||: size of the skip path over the residual update
  (large values mean little rotation between layers, the paper's argument for COS).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

# Default slack for "strictly smaller" comparisons between cosines (ties are not violations).
THEORY_TOLERANCE = 1e-6


def n_layer_triples(n_layers: int) -> int:
    """Number of triples l1 < l2 < l3 among ``n_layers`` traced layers."""
    s = int(n_layers)
    return s * (s - 1) * (s - 2) // 6


def theorem_2_1_violations(cos: Tensor | np.ndarray, tol: float = THEORY_TOLERANCE,
                           count_evaluated: bool = False) -> np.ndarray:
    """Number of violated triples of Theorem 2.1 per sample.

    Args:
        cos: (n, S, S) per-sample cosine between traced layers (symmetric in the last two axes), or
            (S, S) for a single matrix (e.g. the dataset COS matrix). NaN entries (a zero-norm vector
            at that layer) make every triple that uses them unevaluated.
        tol: a triple violates when ``cos[l1, l3] > cos[l2, l3] + tol``.
        count_evaluated: return the number of *evaluated* triples (no NaN involved) instead.

    Returns:
        (n,) int64 counts in ``0..n_layer_triples(S)`` (a 0-d array for a single matrix).
    """
    c = torch.as_tensor(np.asarray(cos) if not isinstance(cos, Tensor) else cos).to(torch.float64)
    single = c.dim() == 2
    if single:
        c = c[None]
    n, s, _ = c.shape
    counts = torch.zeros(n, dtype=torch.int64, device=c.device)
    upper_all = torch.triu(torch.ones(s, s, dtype=torch.bool, device=c.device), diagonal=1)
    for l3 in range(2, s):
        to_l3 = c[:, :l3, l3]  # (n, l3): cos(h_l, h_l3) for l < l3
        upper = upper_all[:l3, :l3]
        if count_evaluated:
            ok = torch.isfinite(to_l3)
            hit = ok[:, :, None] & ok[:, None, :]
        else:
            # diff[n, a, b] = cos[a, l3] - cos[b, l3]; for a < b the theorem wants it < 0 (NaN: no hit)
            hit = (to_l3[:, :, None] - to_l3[:, None, :]) > tol
        counts += (hit & upper).sum(dim=(1, 2))
    out = counts.cpu().numpy()
    return out[0] if single else out


def _as_float64(traj) -> np.ndarray:
    """(S, n, d) torch tensor or numpy array -> float64 numpy (these small per-batch statistics run in
    numpy: no thread-pool round trips for tensors of a few thousand numbers)."""
    if isinstance(traj, Tensor):
        traj = traj.detach().to("cpu", torch.float64).numpy()
    return np.asarray(traj, dtype=np.float64)


def trajectory_straightness(traj: Tensor | np.ndarray) -> np.ndarray:
    """End-to-end distance over path length for each sample's trajectory.

    Args:
        traj: (S, n, d) features of n samples at the S traced layers (in layer order).

    Returns:
        (n,) float64 numpy in [0, 1]; NaN where the path has zero length (the feature never moves).
    """
    x = _as_float64(traj)
    steps = np.linalg.norm(np.diff(x, axis=0), axis=-1).sum(axis=0)  # (n,)
    chord = np.linalg.norm(x[-1] - x[0], axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(steps > 0, chord / np.where(steps > 0, steps, 1.0), np.nan)


def geodesic_residual(traj: Tensor | np.ndarray, layers: list[int]) -> np.ndarray:
    """Mean relative distance of each h_l from the geodesic-assumption point on the chord.

    Args:
        traj: (S, n, d) features at the traced layers ``layers`` (sorted, S >= 2).
        layers: the traced layer indices; t_l = (l - layers[0]) / (layers[-1] - layers[0]).

    Returns:
        (n,) float64 numpy: mean over the inner traced layers of
        ||h_l - ((1-t_l) h_first + t_l h_last)|| divided by ||h_last - h_first||; 0 for a uniformly
        traversed straight line; NaN where the chord has zero length or there is no inner layer.
    """
    x = _as_float64(traj)
    if x.shape[0] < 3:
        return np.full(x.shape[1], np.nan)
    lay = np.asarray(layers, dtype=np.float64)
    t = (lay - lay[0]) / (lay[-1] - lay[0])
    first, last = x[0], x[-1]
    expected = (1 - t)[1:-1, None, None] * first[None] + t[1:-1, None, None] * last[None]
    dist = np.linalg.norm(x[1:-1] - expected, axis=-1).mean(axis=0)  # (n,)
    chord = np.linalg.norm(last - first, axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(chord > 0, dist / np.where(chord > 0, chord, 1.0), np.nan)


def norm_ratios(traj: Tensor | np.ndarray) -> np.ndarray:
    """||h_i|| / ||h_{i+1} - h_i|| between consecutive traced layers.

    Args:
        traj: (S, n, d) raw (uncentred) features at the traced layers.

    Returns:
        (n, S-1) float64 numpy; ``inf`` where the update is exactly zero (counted separately by
        callers), NaN for 0 / 0.
    """
    x = _as_float64(traj)
    norm = np.linalg.norm(x[:-1], axis=-1)
    update = np.linalg.norm(np.diff(x, axis=0), axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return (norm / update).T


def theorem_2_2_cooccurrence(cos_to_last: np.ndarray, true_class_prob: np.ndarray,
                             tol: float = THEORY_TOLERANCE) -> dict:
    """How often a COS-to-last increase between consecutive traced layers comes with a
    true-class probability increase (Theorem 2.2's conclusion).

    Args:
        cos_to_last: (n, S) per-sample COS of each traced layer to the last one.
        true_class_prob: (n, S) per-sample true-class probability of R(h_l).
        tol: an increase is a change larger than ``tol``.

    Returns:
        dict with ``n_transitions`` (pairs of consecutive layers where both values are defined, at
        most n * (S-1)), ``cos_increase_rate`` (fraction of transitions whose
        COS increases), ``prob_increase_given_cos_increase``, ``prob_increase_given_no_cos_increase``
        (the contrast), ``sign_agreement_rate`` (both increase or neither does), and
        ``prob_increase_given_cos_increase_by_layer`` ((S,) list over the *destination* layer of the
        transition; NaN at position 0 and where no COS increase happened). NaN where undefined.
    """
    c = np.asarray(cos_to_last, dtype=np.float64)
    p = np.asarray(true_class_prob, dtype=np.float64)
    if c.shape != p.shape or c.ndim != 2:
        raise ValueError(f"cos_to_last {c.shape} and true_class_prob {p.shape} must both be (n, S)")
    n, s = c.shape
    dc, dp = np.diff(c, axis=1), np.diff(p, axis=1)
    valid = np.isfinite(dc) & np.isfinite(dp)  # a zero-norm vector leaves its COS undefined
    cos_up = (dc > tol) & valid
    cos_not_up = ~(dc > tol) & valid
    prob_up = (dp > tol) & valid
    both = cos_up & prob_up

    def ratio(num: float, den: float) -> float:
        return float(num / den) if den > 0 else float("nan")

    by_layer = [float("nan")] + [ratio(both[:, i].sum(), cos_up[:, i].sum()) for i in range(s - 1)]
    return {
        "n_transitions": int(valid.sum()),
        "cos_increase_rate": ratio(cos_up.sum(), valid.sum()),
        "prob_increase_given_cos_increase": ratio(both.sum(), cos_up.sum()),
        "prob_increase_given_no_cos_increase": ratio((prob_up & cos_not_up).sum(), cos_not_up.sum()),
        "sign_agreement_rate": ratio(((cos_up == prob_up) & valid).sum(), valid.sum()),
        "prob_increase_given_cos_increase_by_layer": by_layer,
    }
