"""Registry of all-pairs similarity metrics by name (drives the CLI and one common test suite).

Every registered metric is a function ``features (L, n, d) -> (L, L) float64 numpy`` with default
options. :data:`METRIC_INFO` records what each one promises (bounds and invariances); the common
property suite in ``tests/metrics`` checks every promise of every registered metric.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..errors import LayertraceError, did_you_mean
from .calibration import calibrated_cka_matrix, calibrated_cos_matrix
from .cka import linear_cka_matrix
from .cka_minibatch import minibatch_cka_matrix
from .rbf_cka import rbf_cka_matrix
from .cos import cos_matrix
from .knn import mutual_knn_matrix
from .procrustes import procrustes_similarity_matrix

MetricFn = Callable[..., np.ndarray]


@dataclass(frozen=True)
class MetricInfo:
    """What a registered metric is and which properties it guarantees.

    ``layer_orthogonal``: invariant to an orthogonal transform of one layer only.
    ``shared_orthogonal``: invariant to the same orthogonal transform of every layer.
    ``layer_scaling``: invariant to scaling one layer by a positive constant.
    ``sample_scaling``: invariant to scaling one sample's vector (at one layer) by a positive factor.
    ``translation``: invariant to adding a constant vector to every sample of one layer.
    """

    name: str
    fn: MetricFn
    description: str
    bounds: tuple[float, float]
    layer_orthogonal: bool
    shared_orthogonal: bool
    layer_scaling: bool
    sample_scaling: bool
    translation: bool


def _cos_none(features) -> np.ndarray:
    return cos_matrix(features, center="none")


def _cos_feature(features) -> np.ndarray:
    return cos_matrix(features, center="feature")


_INFOS = [
    MetricInfo("cos", cos_matrix, "mean per-sample cosine, per-layer mean-centred (the paper's COS)",
               (-1.0, 1.0), layer_orthogonal=False, shared_orthogonal=True, layer_scaling=True,
               sample_scaling=False, translation=True),
    MetricInfo("cos_none", _cos_none, "mean per-sample cosine, uncentred",
               (-1.0, 1.0), layer_orthogonal=False, shared_orthogonal=True, layer_scaling=True,
               sample_scaling=True, translation=False),
    MetricInfo("cos_feature", _cos_feature, "mean per-sample cosine, each vector centred on its own mean",
               (-1.0, 1.0), layer_orthogonal=False, shared_orthogonal=False, layer_scaling=True,
               sample_scaling=True, translation=False),
    MetricInfo("linear_cka", linear_cka_matrix, "exact column-centred linear CKA",
               (0.0, 1.0), layer_orthogonal=True, shared_orthogonal=True, layer_scaling=True,
               sample_scaling=False, translation=True),
    MetricInfo("minibatch_cka", minibatch_cka_matrix, "minibatch linear CKA, unbiased HSIC over batches of 256",
               (-1.0, 1.0), layer_orthogonal=True, shared_orthogonal=True, layer_scaling=True,
               sample_scaling=False, translation=True),
    MetricInfo("rbf_cka", rbf_cka_matrix, "Gaussian-kernel CKA, bandwidth 0.8 x median distance",
               (0.0, 1.0), layer_orthogonal=True, shared_orthogonal=True, layer_scaling=True,
               sample_scaling=False, translation=True),
    MetricInfo("procrustes", procrustes_similarity_matrix, "orthogonal Procrustes similarity (nuclear norm)",
               (0.0, 1.0), layer_orthogonal=True, shared_orthogonal=True, layer_scaling=True,
               sample_scaling=False, translation=True),
    MetricInfo("mutual_knn", mutual_knn_matrix, "mutual k-NN alignment (k = 10, cosine neighbours)",
               (0.0, 1.0), layer_orthogonal=True, shared_orthogonal=True, layer_scaling=True,
               sample_scaling=True, translation=False),
    MetricInfo("calibrated_cos", calibrated_cos_matrix,
               "COS calibrated against 200 seeded row permutations (95 % quantile)",
               (0.0, 1.0), layer_orthogonal=False, shared_orthogonal=True, layer_scaling=True,
               sample_scaling=False, translation=True),
    MetricInfo("calibrated_cka", calibrated_cka_matrix,
               "exact linear CKA calibrated against 200 seeded row permutations (95 % quantile)",
               (0.0, 1.0), layer_orthogonal=True, shared_orthogonal=True, layer_scaling=True,
               sample_scaling=False, translation=True),
]

#: name -> metric info (bounds, invariances, function).
METRIC_INFO: dict[str, MetricInfo] = {info.name: info for info in _INFOS}

#: name -> function ``features (L, n, d) -> (L, L)``.
METRICS: dict[str, MetricFn] = {info.name: info.fn for info in _INFOS}


def metric_names() -> list[str]:
    """Names of the registered metrics, in registration order."""
    return list(METRICS)


def get_metric(name: str) -> MetricFn:
    """The metric function registered under ``name``; a one-line error with a suggestion otherwise."""
    try:
        return METRICS[name]
    except KeyError:
        raise LayertraceError(
            f"unknown metric {name!r}{did_you_mean(name, METRICS)}; choose from {', '.join(METRICS)}"
        ) from None
