"""Neural collapse per layer (Papyan, Han & Donoho 2020; the paper's Fig. 16), in streaming form.

For features ``z`` (N samples, d) with labels in 0..K-1 and a linear classifier ``W`` (K, d):

* class means ``mu_k``, global mean ``mu_G`` (the mean of all samples), centred means
  ``M_k = mu_k - mu_G``;
* within-class covariance ``S_W = 1/N sum_k sum_{i in k} (z_i - mu_k)(z_i - mu_k)^T``;
* between-class covariance ``S_B = 1/K sum_k M_k M_k^T``.

The measures (each a per-layer value; 0 is perfect collapse for all of them):

* ``nc1 = tr(S_W S_B^+) / K`` - within-class variability relative to between-class;
* ``nc2_equinorm = std_k ||M_k|| / mean_k ||M_k||`` - coefficient of variation of the norms;
* ``nc2_equiangular = std_{k != k'} cos(M_k, M_k')`` - spread of the pairwise cosines (Papyan Fig. 5);
* ``nc2_maxangle = mean_{k != k'} |cos(M_k, M_k') + 1/(K-1)|`` - distance of the pairwise cosines
  from the simplex value -1/(K-1) (Papyan Fig. 6);
* ``nc3 = || W / ||W||_F - M / ||M||_F ||_F^2`` with ``M`` the (K, d) matrix of centred means:
  alignment of the classifier rows with the class means (self-duality, Papyan Fig. 7); in [0, 4].

Standard deviations are population ones (ddof 0). Classes without a sample are left out (K counts
the classes present, and NC3 uses their rows of W only). ``S_B^+`` is the pseudo-inverse that
treats eigen-directions of ``S_B`` with eigenvalue below ``PINV_RTOL`` times the largest as null
(S_B has rank at most K-1: the centred means sum to zero with weights n_k).

The accumulator keeps, per layer, the class sums (K, d), the class counts and the second moment
``sum z z^T`` (d, d), all float64 and additive, so batches and processes merge by summing
(memory 8 * S * (K + d) * d bytes); ``S_W = (sum z z^T - sum_k n_k mu_k mu_k^T) / N``. Nothing
per sample is stored.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

PINV_RTOL = 1e-12
COLLAPSE_FIELDS = ("nc1", "nc2_equinorm", "nc2_equiangular", "nc2_maxangle", "nc3")


class CollapseAccumulator:
    """Streaming neural-collapse statistics of S layers' features.

    Args:
        n_layers: S, the number of layers (positions) whose features are given together.
        num_classes: K, labels lie in 0..K-1.
        dim: d, the feature width.

    ``update(z, labels)`` with z (S, B, d) and labels (B,); ``state()`` / ``load_state()`` expose one
    float64 vector (sum it across processes); ``merge(other)`` adds another accumulator;
    ``compute(weight)`` returns the measures.
    """

    def __init__(self, n_layers: int, num_classes: int, dim: int):
        self.n_layers, self.num_classes, self.dim = int(n_layers), int(num_classes), int(dim)
        self.counts = np.zeros(self.num_classes, dtype=np.float64)
        self.sums = np.zeros((self.n_layers, self.num_classes, self.dim), dtype=np.float64)
        self.second = np.zeros((self.n_layers, self.dim, self.dim), dtype=np.float64)

    def update(self, z: torch.Tensor | np.ndarray, labels: torch.Tensor | np.ndarray) -> None:
        """Add a batch: ``z`` (S, B, d) features (any float dtype), ``labels`` (B,) ints in 0..K-1."""
        z = torch.as_tensor(z).detach().to("cpu", torch.float64)
        y = torch.as_tensor(labels).detach().reshape(-1).to("cpu", torch.long)
        if z.shape != (self.n_layers, y.shape[0], self.dim):
            raise ValueError(f"features {tuple(z.shape)} do not match (S={self.n_layers}, B={y.shape[0]}, "
                             f"d={self.dim})")
        onehot = torch.nn.functional.one_hot(y, self.num_classes).to(torch.float64)  # (B, K)
        self.counts += onehot.sum(0).numpy()
        self.sums += torch.einsum("bk,sbd->skd", onehot, z).numpy()
        self.second += torch.einsum("sbd,sbe->sde", z, z).numpy()

    def merge(self, other: "CollapseAccumulator") -> "CollapseAccumulator":
        self.counts += other.counts
        self.sums += other.sums
        self.second += other.second
        return self

    def state(self) -> np.ndarray:
        """One float64 vector ``[counts, sums, second]`` (sum across processes, then ``load_state``)."""
        return np.concatenate([self.counts, self.sums.ravel(), self.second.ravel()])

    def load_state(self, state: np.ndarray) -> None:
        state = np.asarray(state, dtype=np.float64)
        k, n_sums = self.num_classes, self.sums.size
        self.counts = state[:k].copy()
        self.sums = state[k:k + n_sums].reshape(self.sums.shape).copy()
        self.second = state[k + n_sums:].reshape(self.second.shape).copy()

    def compute(self, weight: np.ndarray | None = None) -> dict[str, Any]:
        """The measures of every layer.

        Args:
            weight: (K, d) classifier rows for NC3 (``None``: NC3 is NaN).

        Returns:
            ``{"nc1", "nc2_equinorm", "nc2_equiangular", "nc2_maxangle", "nc3": (S,) float64,
            "within_trace", "between_trace": (S,) tr(S_W), tr(S_B), "n_classes": K present,
            "n_samples": N}``. NaN where undefined (fewer than 2 classes present).
        """
        present = self.counts > 0
        k = int(present.sum())
        n = float(self.counts.sum())
        out: dict[str, Any] = {f: np.full(self.n_layers, np.nan) for f in
                               (*COLLAPSE_FIELDS, "within_trace", "between_trace")}
        out.update(n_classes=k, n_samples=int(n))
        if k < 2:
            return out
        counts = self.counts[present]
        w = None if weight is None else np.asarray(weight, dtype=np.float64)[present]
        for s in range(self.n_layers):
            means = self.sums[s, present] / counts[:, None]  # (K, d)
            global_mean = self.sums[s, present].sum(0) / n
            centred = means - global_mean
            within = (self.second[s] - (counts[:, None] * means).T @ means) / n
            between = centred.T @ centred / k
            values = collapse_measures(within, between, centred, w)
            for key, value in values.items():
                out[key][s] = value
        return out


def collapse_measures(within: np.ndarray, between: np.ndarray, centred_means: np.ndarray,
                      weight: np.ndarray | None) -> dict[str, float]:
    """NC1-NC3 of one layer from its covariances.

    Args:
        within: (d, d) S_W.
        between: (d, d) S_B.
        centred_means: (K, d) class means minus the global mean.
        weight: (K, d) classifier rows (same class order), or ``None``.
    """
    k = centred_means.shape[0]
    eigval, eigvec = np.linalg.eigh(between)
    keep = eigval > PINV_RTOL * max(float(eigval.max()), 0.0)
    if keep.any():
        proj = eigvec[:, keep]
        nc1 = float(np.einsum("di,de,ei->i", proj, within, proj) @ (1.0 / eigval[keep])) / k
    else:
        nc1 = float("nan")
    norms = np.linalg.norm(centred_means, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        unit = centred_means / norms[:, None]
        cos = unit @ unit.T
    off = cos[~np.eye(k, dtype=bool)]
    out = {
        "nc1": nc1,
        "nc2_equinorm": float(norms.std() / norms.mean()) if norms.mean() > 0 else float("nan"),
        "nc2_equiangular": float(off.std()),
        "nc2_maxangle": float(np.abs(off + 1.0 / (k - 1)).mean()),
        "within_trace": float(np.trace(within)),
        "between_trace": float(np.trace(between)),
        "nc3": float("nan"),
    }
    if weight is not None:
        m_norm, w_norm = np.linalg.norm(centred_means), np.linalg.norm(weight)
        if m_norm > 0 and w_norm > 0:
            out["nc3"] = float(((weight / w_norm - centred_means / m_norm) ** 2).sum())
    return out
