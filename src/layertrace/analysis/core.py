"""One traversal of the data -> :class:`~layertrace.analysis.result.AnalysisResult`.

The pass (``analyze``) runs the adapter batch by batch and, for every batch,

1. traces the selected layers (prediction-token features and shared-readout logits; causal LMs: the
   readout is applied one layer and one token chunk at a time, never (S, B, T, V) at once);
2. updates the streaming readout sums (accuracy, true-class / max probability, entropy,
   cross-entropy) and keeps the small per-sample arrays (prediction, confidences, saturation layer);
3. takes the *similarity samples* (classifiers: every sample; causal LMs: a seeded token subsample,
   see :mod:`layertrace.trace.tokens`), measures their raw trajectories (straightness, geodesic
   residual, norm ratio), sums them for the per-layer means, and either feeds them to the
   similarity accumulators at once (centres known: ``center="none" | "feature"``) or appends them
   to the feature cache (``center="mean"``, whose centre is the mean over all samples).

After the pass, the sums of all processes are merged, the centres computed, and the cached
features are read back once (per original batch) into the COS / CKA accumulators and the per-sample
centred quantities (COS to last, Theorem 2.1). With ``cache="none"`` and mean centring a second
forward pass over ``batches`` replaces the cache (twice the model cost, constant memory).

Layout, one concern per module (the pass object mixes them in): :mod:`.options` (what a pass
may do), :mod:`.plan` (the similarity route: cache / inline / second pass), :mod:`.batch_classifier`
and :mod:`.batch_lm` (one batch), :mod:`.records` (per-sample records, the public .npz arrays),
:mod:`.finish` (merge the processes, the matrices, theory, the result). This module holds the entry
points and the pass's state and batch loop.
"""

from __future__ import annotations

import math
import time
from typing import Any, Iterable, Iterator, Mapping

import numpy as np
import torch

from ..errors import LayertraceError
from ..layers import LayerSpec, resolve_layers
from ..readout import ReadoutAccumulator
from ..trace import FeatureCache
from .batch_classifier import ClassifierBatches
from .batch_lm import LMBatches
from .collapse import CollapseStage
from .dist import DistContext
from .finish import FinishSteps
from .options import DEFAULT_EPSILONS, AnalysisOptions, make_options
from .plan import SimilarityPlan
from .records import BatchRecord, SampleRecords
from .removal import LayerRemovalStage
from .result import AnalysisResult
from .similarity import SimilarityStage

__all__ = ["DEFAULT_EPSILONS", "AnalysisOptions", "analyze", "layerwise_readout"]


# ============================================================================ entry points


def analyze(model_or_adapter: Any, batches: Iterable[Mapping[str, Any]], *, model_name: str | None = None,
            data_name: str | None = None, final_norm: bool = True, num_classes: int | None = None,
            **options: Any) -> AnalysisResult:
    """One pass over ``batches``: layer-wise readout, saturation, effective depth, COS / CKA
    similarity, norm ratio and theory checks. Returns an :class:`AnalysisResult`.

    Args:
        model_or_adapter: an :class:`~layertrace.models.base.Adapter` or a model ``adapt`` knows.
            The model is put in eval mode for the pass (its mode is restored afterwards) and is not
            moved: batches go to the model's device.
        batches: iterable of the dicts the model takes, each with ``labels`` (classifiers: (B,)
            ints in 0..K-1; causal LMs: optional, HF convention, else ``input_ids`` shifted).
            Must be re-iterable (a list, a ``make_batches`` object) only for ``cache="none"`` with
            mean centring.
        model_name / data_name: recorded in the result.
        final_norm: readout option passed to ``adapt`` when a bare model is given.
        num_classes: expected number of classes (raises on a mismatch with the model's head).
        **options: see :class:`AnalysisOptions` (``layers``, ``similarity``, ``center``, ``cka``,
            ``cache``, ``epsilons``, ``precision``, ...).

    Raises:
        LayertraceError: empty data, labels out of range, class-count mismatch, NaN / inf
            activations, unknown options.
    """
    opts = make_options(options)
    from ..models import adapt

    adapter = adapt(model_or_adapter, final_norm=final_norm)
    if num_classes is not None and adapter.kind == "classifier" and int(num_classes) != adapter.num_outputs:
        raise LayertraceError(
            f"the model's head has {adapter.num_outputs} classes but the data has {num_classes}: "
            f"load the model with num_classes={num_classes} or pick the matching dataset")
    # restore every module's own mode afterwards (a fresh adapter object says "training" even when
    # the model it wraps is in eval mode, so the adapter's flag alone is not the truth)
    modes = [(m, m.training) for m in adapter.modules()]
    adapter.eval()
    try:
        with torch.no_grad():
            return _Pass(adapter, opts, model_name, data_name).run(batches)
    finally:
        for module, mode in modes:
            module.training = mode


def layerwise_readout(model_or_adapter: Any, batches: Iterable[Mapping[str, Any]], layers: LayerSpec = None,
                      precision: str | None = None, **options: Any) -> dict[str, Any]:
    """The cheap mode of the pass: readout statistics only, no similarity (for a quick layer-wise
    look at a model; the training loop evaluates with :func:`layertrace.training.evaluate_layerwise`,
    which also reads per-layer heads and agrees with this on the shared head, tests/training/test_loop.py).

    Returns:
        ``{"layers", "accuracy", "cross_entropy", "true_class_prob", "max_prob", "entropy",
        "perplexity" (causal LMs, else None), "n_samples", "n_predictions"}`` with (S,) float64
        numpy arrays over ``layers`` (layer L always included). Costs one forward pass plus one
        readout per layer. In a ``torch.distributed`` job every rank gets the merged values.
    """
    options.setdefault("per_sample", False)
    options.setdefault("theory", False)
    result = analyze(model_or_adapter, batches, layers=layers, precision=precision, similarity=False, **options)
    keys = ("accuracy", "cross_entropy", "true_class_prob", "max_prob", "entropy", "perplexity")
    return {"layers": list(result.layers), **{k: getattr(result, k) for k in keys},
            "n_samples": result.n_samples, "n_predictions": result.n_predictions}


# ============================================================================ the pass


class _Pass(SimilarityPlan, ClassifierBatches, LMBatches, FinishSteps, SampleRecords):
    """State of one analysis pass (one process's share of it)."""

    def __init__(self, adapter, opts: AnalysisOptions, model_name: str | None, data_name: str | None):
        self.adapter = adapter
        self.opts = opts
        self.model_name = model_name
        self.data_name = data_name
        self.L = int(adapter.n_layers)
        layers = resolve_layers(self.L, opts.layers)
        if layers[-1] != self.L:
            layers.append(self.L)
        self.layers = layers
        self.S = len(layers)
        self.is_lm = adapter.kind == "causal_lm"
        # headless encoders have no classifier: every layer's similarity, no readout statistics
        self.headless = adapter.kind == "encoder"
        if self.headless:
            opts.theory = False
        self.dist = DistContext.current(opts.shard)
        self.readout = ReadoutAccumulator(self.S)
        self.records: dict[int, BatchRecord] = {}
        self.sat_hist = np.zeros(self.S, dtype=np.int64)
        self.final_agree = np.zeros(self.S, dtype=np.int64)  # predictions equal to the last layer's, per layer
        # sums over similarity samples: per-layer feature sums (centres), norm-ratio sums / counts
        self.feature_sum: np.ndarray | None = None
        self.n_sim = 0
        self.ratio_sum = np.zeros(max(self.S - 1, 0))
        self.ratio_count = np.zeros(max(self.S - 1, 0))
        self.n_infinite_ratio = 0
        self.dim: int | None = None
        self.cache: FeatureCache | None = None
        self.stage: SimilarityStage | None = None
        self.forward_s = 0.0
        self._logits_ok = True
        self._logit_bytes = 0
        self.collapse = None
        if opts.collapse:
            if self.is_lm:
                raise LayertraceError("collapse=True (neural collapse) applies to classifiers, not causal LMs")
            self.collapse = CollapseStage(adapter, self.S)
        if opts.layer_removal and adapter.kind == "encoder":
            raise LayertraceError("layer_removal needs the model's own head (its readout scores the skipped "
                                  "model); this headless encoder has none: analyse a classifier or causal LM")
        self.removal = (LayerRemovalStage(adapter, opts.precision, opts.token_chunk)
                        if opts.layer_removal else None)
        self.removal_s = 0.0
        self.calibration_s = 0.0
        self._stride: int | None = None
        self._n_batches: int | None = None

    # ------------------------------------------------------------------ run
    def run(self, batches: Iterable[Mapping[str, Any]]) -> AnalysisResult:
        start = time.perf_counter()
        o = self.opts
        if o.similarity and o.cache == "none" and o.center == "mean" and iter(batches) is batches:
            raise LayertraceError(
                "cache='none' with center='mean' reads the data twice, but batches is a one-shot iterator: "
                "pass a list / make_batches object, or use cache='disk' (one pass, constant memory)")
        n_batches = None
        try:
            n_batches = len(batches)  # type: ignore[arg-type]
        except TypeError:
            pass
        if o.max_batches is not None and n_batches is not None:
            n_batches = min(n_batches, o.max_batches)
        self._n_batches = n_batches
        try:
            if self.collapse is not None:
                self.collapse.attach()
            for b, batch in self._own_batches(batches, n_batches, "analyze"):
                self._process_batch(b, batch)
            pass_s = time.perf_counter() - start
            result = self._finish(batches, n_batches)
        finally:
            if self.cache is not None:
                self.cache.close()
            if self.collapse is not None:
                self.collapse.detach()
        result.timing = {
            "total_s": time.perf_counter() - start,
            "pass_s": pass_s,
            "forward_s": self.forward_s,
            "layer_removal_s": self.removal_s,
            "calibration_s": self.calibration_s,
            "world_size": self.dist.world_size,
        }
        return result

    def _own_batches(self, batches: Iterable, total: int | None, desc: str) -> Iterator[tuple[int, Mapping]]:
        """(global index, batch) for the batches this process handles, with a progress bar on rank 0."""
        iterator: Iterable = enumerate(batches)
        bar = None
        if self.opts.progress and self.dist.is_main:
            from tqdm.auto import tqdm

            bar = tqdm(total=total, desc=desc, unit="batch")
        try:
            for b, batch in iterator:
                if self.opts.max_batches is not None and b >= self.opts.max_batches:
                    break
                if self.dist.owns(b):
                    yield self.dist.global_index(b), batch
                if bar is not None:
                    bar.update(1)
        finally:
            if bar is not None:
                bar.close()

    # ------------------------------------------------------------------ one batch
    def _process_batch(self, b: int, batch: Mapping[str, Any]) -> None:
        if self.is_lm:
            feats, rec = self._lm_batch(b, batch)
        elif self.headless:
            feats, rec = self._headless_batch(b, batch)
        else:
            feats, rec = self._classifier_batch(b, batch)
        self._similarity_samples(b, feats, rec)
        self.records[b] = rec
        if self.removal is not None and b % self._removal_stride(rec.n_samples) == 0:
            t0 = time.perf_counter()
            self.removal.update(batch)
            self.removal_s += time.perf_counter() - t0

    def _removal_stride(self, batch_rows: int) -> int:
        """Every k-th (global) batch goes through the layer-removal stage (layer_removal_samples)."""
        if self._stride is None:
            cap, total = self.opts.layer_removal_samples, self._n_batches
            self._stride = 1 if cap is None or total is None else max(1, math.ceil(total * batch_rows / max(int(cap), 1)))
        return self._stride


