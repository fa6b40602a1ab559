"""Naive per-pair reference implementations and random feature generators for the metric tests.

Each reference is the textbook formula for ONE pair of layers, written independently of the library
(no U-centering, no stacked products, no shared helpers), looped over all pairs.
"""

from __future__ import annotations

import numpy as np


def make_features(seed: int, n_layers: int, n_samples: int, dim: int, kind: str = "residual",
                  offset: float = 0.0) -> np.ndarray:
    """Random float64 features (L, n, d).

    kind: ``gaussian`` (independent layers), ``residual`` (h_l = h_{l-1} + small update, like a
    transformer's residual stream), ``lowrank`` (each layer a random mix of 2 shared factors + noise).
    ``offset`` adds a per-layer constant vector of that scale (a non-zero mean).
    """
    rng = np.random.default_rng(seed)
    if kind == "gaussian":
        x = rng.normal(size=(n_layers, n_samples, dim))
    elif kind == "residual":
        h = rng.normal(size=(n_samples, dim))
        layers = [h]
        for _ in range(n_layers - 1):
            a = rng.normal(size=(dim, dim)) / np.sqrt(dim)
            h = h + 0.6 * np.tanh(h @ a)
            layers.append(h)
        x = np.stack(layers)
    elif kind == "lowrank":
        factors = rng.normal(size=(n_samples, 2))
        x = np.stack([factors @ rng.normal(size=(2, dim)) + 0.3 * rng.normal(size=(n_samples, dim))
                      for _ in range(n_layers)])
    else:
        raise ValueError(kind)
    if offset:
        x = x + offset * rng.normal(size=(n_layers, 1, dim))
    return x


def random_orthogonal(rng: np.random.Generator, dim: int) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(dim, dim)))
    return q * np.sign(np.diag(r))


# ----------------------------------------------------------------------------- per-pair references


def _centre(x: np.ndarray, center: str) -> np.ndarray:
    if center == "mean":
        return x - x.mean(axis=0)
    if center == "feature":
        return x - x.mean(axis=1, keepdims=True)
    return x


def naive_cos(x: np.ndarray, y: np.ndarray, center: str = "mean") -> float:
    """Mean over samples of cos(x_i - c_x, y_i - c_y), looping over samples; zero vectors skipped
    (a vector counts as zero when it equals its centre up to a relative 1e-10)."""
    xc, yc = _centre(x, center), _centre(y, center)
    values = []
    for i in range(x.shape[0]):
        nx, ny = np.linalg.norm(xc[i]), np.linalg.norm(yc[i])
        if nx > 1e-10 * np.linalg.norm(x[i] - xc[i]) and ny > 1e-10 * np.linalg.norm(y[i] - yc[i]):
            values.append(float(xc[i] @ yc[i]) / (nx * ny))
    return float(np.mean(values)) if values else 0.0


def naive_linear_cka(x: np.ndarray, y: np.ndarray) -> float:
    """||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F) with column-centred X, Y (PAPER.md section 2)."""
    x, y = x - x.mean(axis=0), y - y.mean(axis=0)
    return float(np.linalg.norm(y.T @ x) ** 2 / (np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y)))


def song_unbiased_hsic(k: np.ndarray, l: np.ndarray) -> float:
    """Song et al. (2012) unbiased HSIC, their equation written out (Nguyen et al. 2021, eq. 3)."""
    n = k.shape[0]
    k, l = k.copy(), l.copy()
    np.fill_diagonal(k, 0.0)
    np.fill_diagonal(l, 0.0)
    ones = np.ones(n)
    value = np.trace(k @ l) + (ones @ k @ ones) * (ones @ l @ ones) / ((n - 1) * (n - 2)) \
        - 2.0 / (n - 2) * (ones @ k @ l @ ones)
    return float(value / (n * (n - 3)))


def naive_minibatch_cka(x: np.ndarray, y: np.ndarray, batches: list[slice]) -> float:
    """Sum of per-batch unbiased HSIC of linear kernels (uncentred features), then CKA."""
    kl = kk = ll = 0.0
    for part in batches:
        k, l = x[part] @ x[part].T, y[part] @ y[part].T
        kl += song_unbiased_hsic(k, l)
        kk += song_unbiased_hsic(k, k)
        ll += song_unbiased_hsic(l, l)
    return kl / np.sqrt(kk * ll)


def median_distance(x: np.ndarray) -> float:
    """Median Euclidean distance over sample pairs i < j."""
    n = x.shape[0]
    return float(np.median([np.linalg.norm(x[i] - x[j]) for i in range(n) for j in range(i + 1, n)]))


def naive_rbf_cka(x: np.ndarray, y: np.ndarray, sigma_x: float, sigma_y: float) -> float:
    """Kornblith et al.'s RBF CKA with the centering matrix H: <HKH, HLH> / (|HKH| |HLH|)."""
    n = x.shape[0]
    h = np.eye(n) - np.ones((n, n)) / n

    def kernel(z, sigma):
        d2 = np.array([[np.sum((z[i] - z[j]) ** 2) for j in range(n)] for i in range(n)])
        return np.exp(-d2 / (2 * sigma**2))

    kc, lc = h @ kernel(x, sigma_x) @ h, h @ kernel(y, sigma_y) @ h
    return float(np.sum(kc * lc) / (np.linalg.norm(kc) * np.linalg.norm(lc)))


def naive_procrustes(x: np.ndarray, y: np.ndarray) -> float:
    """1 - d^2 / 2 with d the residual of the optimal rotation Q = U V^T (SVD of X~^T Y~)."""
    x, y = x - x.mean(axis=0), y - y.mean(axis=0)
    x, y = x / np.linalg.norm(x), y / np.linalg.norm(y)
    u, _, vt = np.linalg.svd(x.T @ y)
    residual = np.linalg.norm(x @ (u @ vt) - y) ** 2
    return float(1.0 - residual / 2.0)


def pairwise(features: np.ndarray, pair_fn) -> np.ndarray:
    """Loop ``pair_fn(X_l, X_m)`` over every pair of layers."""
    n_layers = features.shape[0]
    return np.array([[pair_fn(features[l], features[m]) for m in range(n_layers)] for l in range(n_layers)])


def naive_mutual_knn(x: np.ndarray, y: np.ndarray, k: int = 10) -> float:
    """Huh et al. (2024): mean over samples of |kNN_x(i) & kNN_y(i)| / k, cosine neighbours (self excluded)."""
    n = x.shape[0]
    k = min(k, n - 1)

    def neighbours(z, i):
        unit = [v / np.linalg.norm(v) if np.linalg.norm(v) > 0 else v for v in z]
        sims = [(float(unit[i] @ unit[j]), j) for j in range(n) if j != i]
        return {j for _, j in sorted(sims, reverse=True)[:k]}

    return float(np.mean([len(neighbours(x, i) & neighbours(y, i)) / k for i in range(n)]))


def naive_calibrate(x: np.ndarray, y: np.ndarray, sim, n_permutations: int, seed: int, alpha: float = 0.05):
    """calibrated-similarity 0.1.1's ``calibrate`` (Algorithm 1) transcribed for one pair: the rows of y
    permuted by ``torch.randperm(n, generator=torch.Generator().manual_seed(seed))`` K times; returns
    (calibrated score, p-value, tau)."""
    import math

    import torch

    g = torch.Generator().manual_seed(seed)
    observed = sim(x, y)
    null = [sim(x, y[torch.randperm(x.shape[0], generator=g).numpy()]) for _ in range(n_permutations)]
    combined = sorted([observed, *null])
    tau = combined[min(max(math.ceil((1.0 - alpha) * (n_permutations + 1)) - 1, 0), n_permutations)]
    p_value = (1.0 + sum(v >= observed for v in null)) / (n_permutations + 1)
    return min(max((observed - tau) / max(1.0 - tau, 1e-12), 0.0), 1.0), p_value, tau


def naive_calibrated_matrix(features: np.ndarray, sim, n_permutations: int = 200, seed: int = 0) -> np.ndarray:
    """naive_calibrate over every pair l < m (the later layer m permuted), mirrored, diagonal 1."""
    n_layers = features.shape[0]
    out = np.eye(n_layers)
    for l in range(n_layers):
        for m in range(l + 1, n_layers):
            out[l, m] = out[m, l] = naive_calibrate(features[l], features[m], sim, n_permutations, seed)[0]
    return out
