"""Readout statistics of the shared head and the paper's theory checks (pure functions).

* :mod:`.stats` - per-layer accuracy, true-class / max probability, entropy, cross-entropy
  (:func:`layer_readout`, streaming :class:`ReadoutAccumulator`).
* :mod:`.saturation` - saturation layers relative to the final prediction, their histogram and
  cumulative curve, epsilon-effective depth (absolute and relative).
* :mod:`.collapse` - neural collapse NC1-NC3 per layer (:class:`CollapseAccumulator`, streaming).
* :mod:`.theory` - Theorem 2.1 violations, trajectory straightness and geodesic residual,
  Theorem 2.2 co-occurrence, norm ratio ||h_l|| / ||h_{l+1} - h_l||.
"""

from .collapse import COLLAPSE_FIELDS, CollapseAccumulator, collapse_measures
from .saturation import (
    effective_depth,
    effective_depths,
    final_agreement_counts,
    saturation_cumulative,
    saturation_histogram,
    saturation_layers,
    saturation_positions,
)
from .stats import READOUT_FIELDS, ReadoutValues, ReadoutAccumulator, layer_readout, stacked_layer_readout
from .theory import (
    THEORY_TOLERANCE,
    geodesic_residual,
    n_layer_triples,
    norm_ratios,
    theorem_2_1_violations,
    theorem_2_2_cooccurrence,
    trajectory_straightness,
)

__all__ = [
    "COLLAPSE_FIELDS", "CollapseAccumulator", "collapse_measures",
    "READOUT_FIELDS", "ReadoutValues", "ReadoutAccumulator", "layer_readout", "stacked_layer_readout",
    "effective_depth", "effective_depths", "final_agreement_counts", "saturation_cumulative", "saturation_histogram",
    "saturation_layers", "saturation_positions",
    "THEORY_TOLERANCE", "geodesic_residual", "n_layer_triples", "norm_ratios",
    "theorem_2_1_violations", "theorem_2_2_cooccurrence", "trajectory_straightness",
]
