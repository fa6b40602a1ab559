"""layertrace.metrics: similarity between layers, for every pair at once (pure functions + accumulators).

Every function takes features of shape (layers L, samples n, dim d) as a torch tensor or numpy array
in any float dtype on CPU or CUDA, accumulates in float64 and returns float64 numpy arrays. NaN / Inf
input raises a one-line :class:`~layertrace.errors.LayertraceError` naming the layer index.

Exact, in memory:
    cos_matrix, cos_to_layer, adjacent_cos, per_sample_cos, per_sample_adjacent_cos, zero_norm_counts,
    box_stats, linear_cka_matrix, minibatch_cka_matrix, rbf_cka_matrix, procrustes_similarity_matrix,
    unbiased_hsic_matrix, mutual_knn_matrix, agreement
Permutation-null calibration (all pairs, one product per permutation):
    calibrated_similarity, calibrate_scores, cos_null, linear_cka_null, seeded_permutations,
    calibrated_cos_matrix, calibrated_cka_matrix (and MinibatchCKA(null_permutations=K))
Streaming (memory independent of n, mergeable across processes):
    CosAccumulator, MeanAccumulator, MinibatchCKA, StreamingLinearCKA
Registry:
    METRICS, METRIC_INFO, get_metric, metric_names

See docs/metrics.md for formulas, centering, invariances and when to use which.
"""

from ._input import ZERO_NORM_RTOL, DegenerateLayerWarning
from .agreement import agreement, average_ranks
from .calibration import (
    calibrate_scores,
    calibrated_cka_matrix,
    calibrated_cos_matrix,
    calibrated_similarity,
    cos_null,
    linear_cka_null,
    seeded_permutations,
)
from .cka import StreamingLinearCKA, linear_cka_matrix, unbiased_hsic_matrix
from .cka_minibatch import MinibatchCKA, minibatch_cka_matrix
from .cos import (
    CENTERS,
    CosAccumulator,
    MeanAccumulator,
    adjacent_cos,
    box_stats,
    cos_matrix,
    cos_to_layer,
    per_sample_adjacent_cos,
    per_sample_cos,
    zero_norm_counts,
)
from .knn import mutual_knn_matrix
from .procrustes import procrustes_similarity_matrix
from .rbf_cka import rbf_cka_matrix
from .registry import METRIC_INFO, METRICS, MetricInfo, get_metric, metric_names

__all__ = [
    "CENTERS",
    "METRICS",
    "METRIC_INFO",
    "CosAccumulator",
    "DegenerateLayerWarning",
    "ZERO_NORM_RTOL",
    "MeanAccumulator",
    "MetricInfo",
    "MinibatchCKA",
    "StreamingLinearCKA",
    "adjacent_cos",
    "agreement",
    "average_ranks",
    "box_stats",
    "calibrate_scores",
    "calibrated_cka_matrix",
    "calibrated_cos_matrix",
    "calibrated_similarity",
    "cos_null",
    "cos_matrix",
    "cos_to_layer",
    "get_metric",
    "linear_cka_matrix",
    "linear_cka_null",
    "metric_names",
    "minibatch_cka_matrix",
    "mutual_knn_matrix",
    "per_sample_adjacent_cos",
    "per_sample_cos",
    "procrustes_similarity_matrix",
    "rbf_cka_matrix",
    "seeded_permutations",
    "unbiased_hsic_matrix",
    "zero_norm_counts",
]
