"""Running an adapter layer by layer, and keeping what the analysis needs from it.

* :mod:`.run` - :func:`trace_batch` (the adapter's trace under autocast, with NaN / inf checks),
  :func:`resolve_precision`, :func:`autocast`.
* :mod:`.cache` - :class:`FeatureCache`: per-sample (S, d) features in RAM or a disk file, for the
  exact statistics that need the whole dataset (mean-centred COS, RBF CKA, Procrustes).
* :mod:`.tokens` - causal LMs: next-token targets / scored positions and the seeded token
  subsample used for similarity.
"""

from .cache import FeatureCache
from .run import autocast, check_finite, resolve_precision, trace_batch
from .tokens import IGNORE_INDEX, next_token_targets, subsample_tokens

__all__ = [
    "FeatureCache", "autocast", "check_finite", "resolve_precision", "trace_batch",
    "IGNORE_INDEX", "next_token_targets", "subsample_tokens",
]
