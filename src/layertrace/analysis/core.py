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
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Iterator, Mapping

import numpy as np
import torch
from torch import Tensor

from ..errors import LayertraceError, did_you_mean
from ..layers import LayerSpec, resolve_layers
from ..readout import (
    THEORY_TOLERANCE,
    ReadoutAccumulator,
    effective_depths,
    geodesic_residual,
    layer_readout,
    n_layer_triples,
    norm_ratios,
    saturation_cumulative,
    saturation_histogram,
    saturation_positions,
    stacked_layer_readout,
    theorem_2_1_violations,
    theorem_2_2_cooccurrence,
    trajectory_straightness,
)
from ..trace import FeatureCache, autocast, check_finite, next_token_targets, subsample_tokens, trace_batch
from .collapse import CollapseStage
from .removal import LayerRemovalStage
from .dist import DistContext
from .result import AnalysisResult
from .similarity import SimilarityStage

DEFAULT_EPSILONS = (0.01, 0.025, 0.05, 0.1)
_CENTERS = ("mean", "none", "feature")
_CKA = ("auto", "exact", "minibatch", "none")
_CACHE = ("auto", "ram", "disk", "none")
# Classifier logits (n, S, K) are saved in the .npz up to this size with save_logits="auto".
_AUTO_LOGITS_BYTES = 64 << 20
_QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)
# Cached features are read back in chunks of about this many float32 bytes (chunk_rows="auto"),
# between these row counts: the working memory after the pass is a few times one chunk.
_CHUNK_BYTES = 4 << 20
_CHUNK_ROWS_RANGE = (256, 4096)


@dataclass
class AnalysisOptions:
    """Options of :func:`analyze` (every one is also a key of the CLI's ``AnalyzeConfig``).

    Attributes:
        layers: :func:`~layertrace.layers.resolve_layers` spec; layer L is always added (the final
            prediction, the COS reference and the saturation reference live there).
        similarity: compute COS / CKA and the centred per-sample quantities. ``False`` gives the cheap
            readout-only pass (training-time evaluation): no feature cache, no second pass.
        center: COS centring: ``"mean"`` (per-layer mean over all samples, the paper's), ``"none"``,
            ``"feature"`` (each vector's own mean over its d coordinates).
        cka: ``"auto"`` (exact when possible: the feature cache in RAM, or the streaming feature-space
            accumulator whose (S*d)^2 float64 state fits ``cka_exact_max_gb``; else minibatch),
            ``"exact"``, ``"minibatch"`` (unbiased HSIC per batch, needs batches of >= 4), ``"none"``.
        cache: feature cache for mean centring / RBF CKA / Procrustes: ``"auto"`` (RAM up to
            ``cache_ram_gb`` then disk), ``"ram"``, ``"disk"`` (constant memory), ``"none"`` (no
            cache: a second forward pass supplies the centred statistics).
        cache_ram_gb: RAM budget of ``cache="auto"``.
        cache_dir: folder of the disk cache's temporary file (default: the system temp folder).
        cka_exact_max_gb: memory limit of the streaming exact linear-CKA state.
        rbf_cka / procrustes: also compute these matrices on at most ``extra_max_samples`` cached
            similarity samples (seeded subsample when more).
        theory: run the theory checks.
        epsilons: tolerances of the effective depth.
        tokens_per_sample: causal LMs: similarity tokens drawn per sequence (<= 0: all).
        token_chunk: causal LMs: scored tokens per readout call (memory: token_chunk * V floats).
        seed: seeds the token subsample and the extra-metric subsample.
        per_sample: keep the per-prediction arrays (``result.samples``, written to the .npz).
        save_logits: classifiers: keep per-sample per-layer logits in ``samples``: True / False /
            ``"auto"`` (when n * S * K * 4 bytes <= 64 MiB).
        precision: autocast on the model's device: None / ``"fp32"``, ``"bf16"``, ``"fp16"``
            (resolve ``"auto"`` at the CLI edge with :func:`layertrace.trace.resolve_precision`).
        progress: show a tqdm bar (rank 0 only).
        shard: ``"auto"``: when ``torch.distributed`` is initialised, every process iterates the
            same ``batches``, keeps batch b when ``b % world_size == rank``, and the results are
            merged; ``"presharded"``: each process passes its own share (e.g. a training loop's
            evaluation shard), analyses all of it, and the results are merged (its batch b counts as
            global batch ``b * world_size + rank``); ``False``: no merging, analyse every batch here.
        tolerance: slack of the strict comparisons of the theory checks.
        max_batches: stop after this many batches (counted per process with ``shard="presharded"``).
        chunk_rows: rows per chunk when cached features are read back (``"auto"``: about 4 MB of
            float32, 256..4096 rows); original batches are never split.
        null_permutations: K > 0 calibrates COS and CKA against a permutation null of K seeded
            row permutations (:mod:`layertrace.metrics.calibration`; adds ``result.calibration``):
            exact CKA and COS on a seeded subsample of at most ``null_max_samples`` similarity
            samples (bulk nulls, one product per permutation for all pairs); minibatch CKA streams
            its null over all batches. Needs the feature cache.
        null_max_samples: sample cap of the exact-CKA / COS null (memory 2 S n^2 floats).
        layer_removal: for every block, the final-layer accuracy / cross-entropy (perplexity) with
            that block skipped, beside block influence 1 - cos(h_{l-1}, h_l) and adjacent COS
            (:mod:`layertrace.analysis.removal`; adds ``result.layer_removal``). Costs about
            (L - 1) / 2 + 1 extra forwards per batch.
        layer_removal_samples: run the removal on about this many samples only (``None``: all):
            every k-th batch, k = ceil(batches x first batch size / this), so it spreads over the data.
        collapse: classifiers: also measure neural collapse (NC1-NC3) at every layer, on the input
            of the shared head's final linear layer (:mod:`layertrace.analysis.collapse`); adds
            ``result.collapse``. Memory 8 * S * (K + d) * d bytes, no per-sample storage.
    """

    layers: LayerSpec = None
    similarity: bool = True
    center: str = "mean"
    cka: str = "auto"
    cache: str = "auto"
    cache_ram_gb: float = 2.0
    cache_dir: str | None = None
    cka_exact_max_gb: float = 1.0
    rbf_cka: bool = False
    procrustes: bool = False
    extra_max_samples: int = 2000
    theory: bool = True
    epsilons: tuple = DEFAULT_EPSILONS
    tokens_per_sample: int = 8
    token_chunk: int = 1024
    seed: int = 0
    per_sample: bool = True
    save_logits: Any = "auto"
    precision: str | None = None
    progress: bool = False
    shard: Any = "auto"
    tolerance: float = THEORY_TOLERANCE
    max_batches: int | None = None
    chunk_rows: Any = "auto"
    collapse: bool = False
    null_permutations: int = 0
    null_max_samples: int = 1000
    layer_removal: bool = False
    layer_removal_samples: int | None = None

    def validate(self) -> None:
        for name, value, choices in (("center", self.center, _CENTERS), ("cka", self.cka, _CKA),
                                     ("cache", self.cache, _CACHE)):
            if value not in choices:
                raise LayertraceError(f"analysis option {name}={value!r} is not one of {list(choices)}"
                                      f"{did_you_mean(str(value), choices)}")
        for e in self.epsilons:
            if not 0.0 <= float(e) <= 1.0:
                raise LayertraceError(f"effective-depth epsilon {e} must lie in [0, 1]")
        if (self.rbf_cka or self.procrustes) and self.cache == "none" and self.similarity:
            raise LayertraceError("rbf_cka / procrustes need the feature cache: use cache='auto', 'ram' or 'disk'")
        if int(self.null_permutations) < 0 or (0 < int(self.null_permutations) < 19):
            raise LayertraceError(f"null_permutations={self.null_permutations}: use 0 (off) or at least 19 (with "
                                  f"fewer, the 95 % threshold can never lie below the observed score)")
        if self.null_permutations and self.cache == "none" and self.similarity:
            raise LayertraceError("null_permutations needs the feature cache: use cache='auto', 'ram' or 'disk'")
        if int(self.null_max_samples) < 4:
            raise LayertraceError(f"null_max_samples={self.null_max_samples} must be at least 4")


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
    opts = _make_options(options)
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
    """The cheap mode for evaluation during training: readout statistics only, no similarity.

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


def _make_options(options: Mapping[str, Any]) -> AnalysisOptions:
    known = AnalysisOptions.__dataclass_fields__
    unknown = [k for k in options if k not in known]
    if unknown:
        raise LayertraceError(f"unknown analysis option {unknown[0]!r}{did_you_mean(unknown[0], known)}; "
                              f"options: {', '.join(known)}")
    opts = AnalysisOptions(**options)
    opts.epsilons = tuple(float(e) for e in opts.epsilons)
    opts.validate()
    return opts


# ============================================================================ the pass


@dataclass
class _BatchRecord:
    """What one batch leaves behind (small, per-sample arrays); keyed by the global batch index."""

    n_samples: int
    arrays: dict[str, np.ndarray] = field(default_factory=dict)


class _Pass:
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
        self.records: dict[int, _BatchRecord] = {}
        self.sat_hist = np.zeros(self.S, dtype=np.int64)
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

    # ------------------------------------------------------------------ plan
    def _plan(self, dim: int) -> None:
        """Decide, once d is known, how similarity will be computed (cache / inline / second pass)."""
        o = self.opts
        self.dim = dim
        self.feature_sum = np.zeros((self.S, dim))
        if not o.similarity:
            self.cka_mode = "none"
            return
        cka_state_bytes = 8 * (self.S * dim) ** 2  # the streaming accumulator's cross-moment matrix
        needs_cache = o.center == "mean" or o.rbf_cka or o.procrustes or o.null_permutations > 0
        self.cache_mode = o.cache if needs_cache else "none"
        if self.cache_mode != "none":
            self.cache = FeatureCache(self.S, dim, mode=self.cache_mode,
                                      ram_limit_bytes=int(o.cache_ram_gb * (1 << 30)), directory=o.cache_dir)
        if o.cka == "none":
            self.cka_mode = "none"
        elif o.cka == "minibatch":
            self.cka_mode = "minibatch"
        elif o.cka == "exact" or cka_state_bytes <= o.cka_exact_max_gb * (1 << 30):
            self.cka_mode = "exact"
        else:
            self.cka_mode = "minibatch"
        if not needs_cache:  # centres known now: everything inline, one pass, no cache
            self.stage = SimilarityStage(self.S, dim, o.center, None, self.cka_mode, o.theory, o.tolerance,
                                         **self._null_args())

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
    def _check_labels(self, batch: Mapping[str, Any], b: int) -> Tensor:
        if "labels" not in batch:
            raise LayertraceError(f"batch {b} has no 'labels' entry (keys {sorted(batch)}); "
                                  f"classifier analysis needs the true class of every sample")
        labels = torch.as_tensor(batch["labels"]).reshape(-1).long()
        if labels.numel() == 0:
            raise LayertraceError(f"batch {b} is empty; drop empty batches")
        k = self.adapter.num_outputs
        lo, hi = int(labels.min()), int(labels.max())
        if lo < 0 or hi >= k:
            raise LayertraceError(
                f"label {hi if hi >= k else lo} in batch {b} is out of range for a model with {k} classes "
                f"(labels must be 0..{k - 1}): the model's head and the dataset do not match")
        return labels

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

    def _headless_batch(self, b: int, batch: Mapping[str, Any]) -> tuple[Tensor, _BatchRecord]:
        """A headless encoder (``kind="encoder"``: BertModel, CLIP towers): similarity only, no readout."""
        t0 = time.perf_counter()
        trace = trace_batch(self.adapter, batch, self.layers, with_logits=False,
                            precision=self.opts.precision, batch_index=b)
        self.forward_s += time.perf_counter() - t0
        n = int(trace.features.shape[1])
        self.readout.add_count(n)
        rec = _BatchRecord(n_samples=n)
        if self.opts.per_sample:
            rec.arrays["sim_index"] = np.arange(n)
        return trace.features, rec

    def _classifier_batch(self, b: int, batch: Mapping[str, Any]) -> tuple[Tensor, _BatchRecord]:
        labels = self._check_labels(batch, b)
        t0 = time.perf_counter()
        if self.collapse is not None:  # record what the head's final linear layer reads in this batch
            self.collapse.arm()
        # the adapter's trace reads every layer through the shared LayerReadout (one stacked head call)
        trace = trace_batch(self.adapter, batch, self.layers, with_logits=True,
                            precision=self.opts.precision, batch_index=b)
        logits = trace.logits.float()
        self.forward_s += time.perf_counter() - t0
        if self.collapse is not None:
            self.collapse.update(logits, labels)
        labels = labels.to(logits.device)
        n = labels.shape[0]
        r = stacked_layer_readout(logits, labels)
        self.readout.update_layers(r)
        self.readout.add_count(n)
        pred = r.pred.T.cpu().numpy()
        per = {k: getattr(r, k).T.to(torch.float32).cpu().numpy() for k in ("max_prob", "true_class_prob", "entropy")}
        positions = saturation_positions(pred)
        self.sat_hist += saturation_histogram(positions, self.S)
        rec = _BatchRecord(n_samples=n)
        # similarity samples of a classifier = every sample; T2.2 reads their true-class probability
        rec.arrays["sim_true_class_prob"] = per["true_class_prob"]
        if self.opts.per_sample:
            rec.arrays.update(labels=labels.cpu().numpy(), pred=pred, saturation_position=positions,
                              sim_index=np.arange(n), **per)
            if self._keep_logits(n):
                rec.arrays["logits"] = logits.float().permute(1, 0, 2).cpu().numpy()
        return trace.features, rec

    def _keep_logits(self, n: int) -> bool:
        """Whether to keep this batch's (n, S, K) logits for the .npz (see ``save_logits``)."""
        want = self.opts.save_logits
        if not self.opts.per_sample or want is False or str(want).lower() in ("false", "no", "off"):
            return False
        if want is True or str(want).lower() in ("true", "yes", "on"):
            return True
        # "auto": keep while this process's total stays under the limit; past it, drop them all
        if not self._logits_ok:
            return False
        self._logit_bytes += n * self.S * self.adapter.num_outputs * 4
        if self._logit_bytes > _AUTO_LOGITS_BYTES:
            self._logits_ok = False
            for rec in self.records.values():
                rec.arrays.pop("logits", None)
            return False
        return True

    def _lm_batch(self, b: int, batch: Mapping[str, Any]) -> tuple[Tensor, _BatchRecord]:
        if "input_ids" not in batch:
            raise LayertraceError(f"causal-LM batch {b} needs 'input_ids' (keys {sorted(batch)})")
        t0 = time.perf_counter()
        trace = trace_batch(self.adapter, batch, self.layers, with_logits=False,
                            precision=self.opts.precision, batch_index=b, check=False)
        self.forward_s += time.perf_counter() - t0
        feats = trace.features  # (S, B, T, d)
        ids = batch["input_ids"]
        mask = trace.mask if trace.mask is not None else batch.get("attention_mask")
        targets, scored = next_token_targets(batch, mask)
        real = torch.ones(ids.shape, dtype=torch.bool) if mask is None else torch.as_tensor(mask).bool()
        check_finite(feats[:, real.to(feats.device)], "activations", self.layers, b)  # pads may hold anything
        scored = scored.to(feats.device)
        targets = targets.to(feats.device)
        v = self.adapter.num_outputs
        bad = targets[scored]
        if bad.numel() and (int(bad.min()) < 0 or int(bad.max()) >= v):
            raise LayertraceError(f"token id {int(bad.max())} in batch {b} is out of range for a vocabulary of {v}: "
                                  f"the tokenizer does not match the model")
        rows, cols = scored.nonzero(as_tuple=True)  # scored tokens, row-major
        n_tok = rows.shape[0]
        if n_tok == 0:
            raise LayertraceError(f"batch {b} has no scored token (every sequence is shorter than 2 real tokens)")
        flat_targets = targets[rows, cols]
        keep_all = self.opts.per_sample
        pred = np.empty((n_tok, self.S), dtype=np.int64)
        per = {k: np.empty((n_tok, self.S), dtype=np.float32) for k in ("max_prob", "true_class_prob", "entropy")}
        chunk = max(1, int(self.opts.token_chunk))
        read = self.adapter.layer_readout  # the shared head, one layer and one token chunk at a time
        for i in range(self.S):
            h = feats[i, rows, cols]  # (n_tok, d)
            for s in range(0, n_tok, chunk):
                sl = slice(s, min(n_tok, s + chunk))
                with autocast(self.opts.precision, h.device):
                    logits = read(self.layers[i], h[sl])
                check_finite(logits[None], "logits", [self.layers[i]], b)
                r = layer_readout(logits, flat_targets[sl], compute_dtype=torch.float32)
                self.readout.update(i, r)
                pred[sl, i] = r.pred.cpu().numpy()
                for k in per:
                    per[k][sl, i] = getattr(r, k).cpu().numpy()
                del logits, r
        self.readout.add_count(n_tok)
        positions = saturation_positions(pred)
        self.sat_hist += saturation_histogram(positions, self.S)
        # similarity tokens: seeded subsample of the scored positions (same on every process)
        srow, scol = subsample_tokens(scored, self.opts.tokens_per_sample, self.opts.seed, b)
        flat_index = torch.full(scored.shape, -1, dtype=torch.long)
        flat_index[rows.cpu(), cols.cpu()] = torch.arange(n_tok)
        sim_index = flat_index[srow, scol].numpy()
        rec = _BatchRecord(n_samples=int(ids.shape[0]))
        rec.arrays["sim_index"] = sim_index
        rec.arrays["sim_true_class_prob"] = per["true_class_prob"][sim_index]
        rec.arrays["n_predictions"] = np.asarray([n_tok])
        if keep_all:
            rec.arrays.update(labels=flat_targets.cpu().numpy(), pred=pred, saturation_position=positions,
                              token_row=rows.cpu().numpy(), token_position=cols.cpu().numpy(), **per)
        else:
            rec.arrays["saturation_position"] = positions[sim_index]
        sim_feats = feats[:, srow.to(feats.device), scol.to(feats.device)]  # (S, k, d)
        return sim_feats, rec

    def _similarity_samples(self, b: int, feats: Tensor, rec: _BatchRecord) -> None:
        """Raw-trajectory statistics of the similarity samples, then cache / inline similarity."""
        x = feats.detach().to("cpu", torch.float64).numpy()  # small: numpy, no thread-pool round trips
        if self.dim is None:
            self._plan(int(x.shape[-1]))
        k = x.shape[1]
        self.n_sim += k
        self.feature_sum += x.sum(axis=1)
        if self.S > 1:
            ratios = norm_ratios(x)
            finite = np.isfinite(ratios)
            self.ratio_sum += np.where(finite, ratios, 0.0).sum(axis=0)
            self.ratio_count += finite.sum(axis=0)
            self.n_infinite_ratio += int((~finite).any(axis=1).sum())
            rec.arrays["norm_ratio"] = ratios.astype(np.float32)
        if self.opts.theory and self.S > 1:
            rec.arrays["straightness"] = trajectory_straightness(x)
            rec.arrays["geodesic_residual"] = geodesic_residual(x, self.layers)
        if not self.opts.similarity:
            return
        if self.cache is not None:
            self.cache.append(x)
            rec.arrays["_cached_rows"] = np.asarray([k])
        elif self.stage is not None:
            rec.arrays.update(self.stage.update(torch.from_numpy(x)))

    # ------------------------------------------------------------------ after the pass
    def _finish(self, batches: Iterable, n_batches: int | None) -> AnalysisResult:
        o = self.opts
        d = self.dist
        # ---- merge the streaming sums of all processes
        self.readout.load_state(d.sum(self.readout.state()))
        sat_hist = d.sum(self.sat_hist).round().astype(np.int64)
        dim_known = d.gather(self.dim)
        dims = {x for x in dim_known if x is not None}
        if not dims:
            raise LayertraceError("the data gave no batch to analyse (empty dataset, or limit / max_batches 0); "
                                  "check --data, --split and --limit")
        if len(dims) > 1:
            raise LayertraceError(f"processes saw different feature widths {sorted(dims)}")
        if self.dim is None:  # this rank got no batch: join with empty state
            self._plan(dims.pop())
        n_sim = int(d.sum(np.asarray([self.n_sim]))[0])
        feature_sum = d.sum(self.feature_sum)
        ratio_sum = d.sum(self.ratio_sum)
        ratio_count = d.sum(self.ratio_count)
        n_inf_ratio = int(d.sum(np.asarray([self.n_infinite_ratio]))[0])
        centers = feature_sum / max(n_sim, 1)

        # ---- similarity needing the centres: read the cache back (or a second pass)
        cos_matrix = cka_matrix = None
        extra: dict[str, np.ndarray] = {}
        if o.similarity and n_sim < 2:
            raise LayertraceError(f"similarity statistics need at least 2 samples, got {n_sim}: analyse more data "
                                  f"or pass similarity=False")
        if o.similarity:
            # one process with the whole cache in RAM: exact CKA straight from it (the metrics pick
            # sample or feature space); otherwise the streaming accumulator sees every chunk
            cka_from_cache = (self.cache is not None and not self.cache.on_disk and not d.active
                              and o.cka in ("auto", "exact"))
            if cka_from_cache:
                self.cka_mode = "exact"
            if self.stage is None:
                self.stage = SimilarityStage(self.S, self.dim, o.center, centers if o.center == "mean" else None,
                                             "none" if cka_from_cache else self.cka_mode, o.theory, o.tolerance,
                                             **self._null_args())
                for group, sizes, chunk in self._centred_chunks(batches, n_batches):
                    per_sample = self.stage.update(chunk)
                    starts = np.cumsum([0, *sizes])
                    for b, lo, hi in zip(group, starts[:-1], starts[1:]):
                        self.records[b].arrays.update({k: v[lo:hi] for k, v in per_sample.items()})
            stages = d.gather(self.stage)
            merged = stages[0]
            for other in stages[1:]:
                merged.merge(other)
            cos_matrix, cka_matrix = merged.compute()
            if cka_from_cache:
                from .. import metrics

                cka_matrix = np.asarray(metrics.linear_cka_matrix(self.cache.array()), dtype=np.float64)
            extra = self._extra_matrices()
            t0 = time.perf_counter()
            calibration = self._calibration(merged) if o.null_permutations else None
            self.calibration_s = time.perf_counter() - t0

        # ---- per-sample arrays of every process, in global batch order
        samples = self._gather_samples()
        counts = self.readout.compute()
        if self.headless:  # no readout: NaN, not the zeros of an empty accumulator
            counts = {k: np.full(self.S, np.nan) for k in counts}
        n_samples = int(samples.pop("_n_samples"))
        n_pred = int(self.readout.count)
        if n_pred == 0:
            raise LayertraceError("no sample was analysed; check the data (empty dataset or split)")
        result = AnalysisResult(
            n_layers=self.L, layers=list(self.layers), n_samples=n_samples, kind=self.adapter.kind,
            model=self.model_name, data=self.data_name, num_classes=int(self.adapter.num_outputs),
            n_predictions=n_pred, n_similarity_samples=n_sim,
            accuracy=counts["accuracy"], true_class_prob=counts["true_class_prob"], max_prob=counts["max_prob"],
            entropy=counts["entropy"], cross_entropy=counts["cross_entropy"],
            perplexity=np.exp(counts["cross_entropy"]) if self.is_lm else None,
            saturation_hist=sat_hist, saturation_cumulative=saturation_cumulative(sat_hist),
            effective_depth={} if self.headless else effective_depths(counts["accuracy"], self.layers, o.epsilons),
        )
        if self.S > 1:
            result.norm_ratio = np.append(ratio_sum / np.maximum(ratio_count, 1), np.nan)
            result.norm_ratio[:-1][ratio_count == 0] = np.nan
        else:
            result.norm_ratio = np.full(1, np.nan)
        if o.similarity:
            result.center = o.center
            result.cos_matrix = cos_matrix
            result.cka_matrix = cka_matrix
            result.cka_estimator = self.cka_mode if self.cka_mode != "none" else None
            result.cos_to_last = cos_matrix[:, -1].copy()
            result.adjacent_cos = np.concatenate([[np.nan], np.diagonal(cos_matrix, offset=1)])
            if cka_matrix is not None and self.S > 1:
                from .. import metrics

                result.cos_cka_agreement = {k: float(v) for k, v in metrics.agreement(cos_matrix, cka_matrix).items()}
            zero = merged.zero_counts
            result.zero_norm_count = int(zero.sum())
            result.zero_norm_per_layer = zero
            if "cos_to_last" in samples:
                result.cos_box = _box(samples["cos_to_last"])
            result.rbf_cka_matrix = extra.get("rbf_cka")
            result.procrustes_matrix = extra.get("procrustes")
        result.theory = self._theory(samples, cos_matrix, n_inf_ratio) if o.theory else {}
        if self.collapse is not None:
            result.collapse = self.collapse.finish(d)
        if o.similarity and o.null_permutations:
            result.calibration = calibration
        if self.removal is not None:
            self.removal.load_state(d.sum(self.removal.state()))
            result.layer_removal = self.removal.finish(list(self.layers), cos_matrix)
        result.config = self._config_record()
        result.samples = self._public_samples(samples, result) if o.per_sample else None
        return result

    def _centred_chunks(self, batches: Iterable, n_batches: int | None
                        ) -> Iterator[tuple[list[int], list[int], np.ndarray | Tensor]]:
        """``(batch indices, their row counts, features (S, rows, d))`` for the centred statistics,
        from the cache or from a second pass. Cached rows come in groups of consecutive batches of
        at most ``chunk_rows`` rows (fewer, larger products), except for minibatch CKA, whose estimate
        depends on the batches and so reads them one by one."""
        own = sorted(self.records)
        if self.cache is not None:
            if str(self.opts.chunk_rows) == "auto":
                lo, hi = _CHUNK_ROWS_RANGE
                chunk_rows = min(hi, max(lo, _CHUNK_BYTES // self.cache.row_bytes))
            else:
                chunk_rows = max(1, int(self.opts.chunk_rows))
            groups: list[list[int]] = []
            filled = 0
            for b in own:
                rows = int(self.records[b].arrays["_cached_rows"][0])
                if not groups or self.cka_mode == "minibatch" or filled + rows > chunk_rows:
                    groups.append([])
                    filled = 0
                groups[-1].append(b)
                filled += rows
            group_sizes = [[int(self.records[b].arrays["_cached_rows"][0]) for b in g] for g in groups]
            chunks = self.cache.chunks(boundaries=[sum(g) for g in group_sizes])
            yield from zip(groups, group_sizes, chunks)
            return
        # cache="none": run the model again (features only); same batches, same token subsample
        for b, batch in self._own_batches(batches, n_batches, "analyze (pass 2)"):
            t0 = time.perf_counter()
            trace = trace_batch(self.adapter, batch, self.layers, with_logits=False,
                                precision=self.opts.precision, batch_index=b)
            self.forward_s += time.perf_counter() - t0
            feats = trace.features
            if self.is_lm:
                _, scored = next_token_targets(batch, trace.mask if trace.mask is not None else batch.get("attention_mask"))
                srow, scol = subsample_tokens(scored, self.opts.tokens_per_sample, self.opts.seed, b)
                feats = feats[:, srow.to(feats.device), scol.to(feats.device)]
            yield [b], [int(feats.shape[1])], feats

    def _removal_stride(self, batch_rows: int) -> int:
        """Every k-th (global) batch goes through the layer-removal stage (layer_removal_samples)."""
        if self._stride is None:
            cap, total = self.opts.layer_removal_samples, self._n_batches
            self._stride = 1 if cap is None or total is None else max(1, math.ceil(total * batch_rows / max(int(cap), 1)))
        return self._stride

    def _null_args(self) -> dict[str, int]:
        """SimilarityStage keywords of the streamed minibatch-CKA null (K = null_permutations)."""
        return {"null_permutations": int(self.opts.null_permutations), "seed": int(self.opts.seed)}

    def _cached_subsample(self, max_samples: int) -> np.ndarray:
        """A seeded subsample (S, m, d) of at most ``max_samples`` cached similarity samples (all processes)."""
        d = self.dist
        n_total = int(d.sum(np.asarray([self.cache.n_rows]))[0])
        counts = d.gather(self.cache.n_rows)
        offset = int(sum(counts[: d.rank]))
        rng = np.random.default_rng(self.opts.seed)
        chosen = np.sort(rng.choice(n_total, size=min(n_total, max_samples), replace=False))
        mine = chosen[(chosen >= offset) & (chosen < offset + self.cache.n_rows)] - offset
        parts = d.gather(self.cache.rows(mine))
        return np.concatenate(parts, axis=1)

    def _calibration(self, stage: SimilarityStage) -> dict[str, Any]:
        """Permutation-calibrated COS and CKA (see AnalysisOptions.null_permutations)."""
        from .. import metrics

        o = self.opts
        k = int(o.null_permutations)
        feats = self._cached_subsample(o.null_max_samples)
        keys = ("score", "calibrated", "tau", "p_value")
        out: dict[str, Any] = {"n_permutations": k, "alpha": metrics.calibration.ALPHA, "seed": int(o.seed)}
        cos = metrics.calibrated_similarity(feats, "cos", n_permutations=k, seed=o.seed, center=o.center)
        out["cos"] = {"n_samples": int(feats.shape[1]), **{key: cos[key] for key in keys}}
        if self.cka_mode == "minibatch":
            cka = stage.cka_acc.calibrated()
            out["cka"] = {"estimator": "minibatch", "n_samples": int(stage.cka_acc.n_samples),
                          "null": "within-batch row permutations", **{key: cka[key] for key in keys}}
        elif self.cka_mode == "exact":
            cka = metrics.calibrated_similarity(feats, "linear_cka", n_permutations=k, seed=o.seed)
            out["cka"] = {"estimator": "exact", "n_samples": int(feats.shape[1]), **{key: cka[key] for key in keys}}
        return out

    def _extra_matrices(self) -> dict[str, np.ndarray]:
        """RBF CKA / Procrustes on a seeded subsample of the cached similarity samples (all processes)."""
        o = self.opts
        if not (o.rbf_cka or o.procrustes):
            return {}
        from .. import metrics

        feats = self._cached_subsample(o.extra_max_samples)
        out = {}
        if o.rbf_cka:
            out["rbf_cka"] = np.asarray(metrics.rbf_cka_matrix(feats), dtype=np.float64)
        if o.procrustes:
            out["procrustes"] = np.asarray(metrics.procrustes_similarity_matrix(feats), dtype=np.float64)
        return out

    def _gather_samples(self) -> dict[str, np.ndarray]:
        """Concatenate every process's batch records in global batch order."""
        records: dict[int, _BatchRecord] = {}
        for part in self.dist.gather(self.records):
            records.update(part)
        order = sorted(records)
        out: dict[str, Any] = {"_n_samples": sum(records[b].n_samples for b in order)}
        if not order:
            return out
        # a key missing from some batch (logits dropped past the size limit on one process) is dropped
        keys = [k for k in records[order[0]].arrays
                if not k.startswith("_cached") and all(k in records[b].arrays for b in order)]
        pred_offset = 0
        row_offset = 0
        lists: dict[str, list] = {k: [] for k in keys}
        for b in order:
            arrays = records[b].arrays
            n_pred = int(arrays["n_predictions"][0]) if "n_predictions" in arrays else records[b].n_samples
            for k in keys:
                value = arrays[k]
                if k == "sim_index":
                    value = value + pred_offset
                elif k == "token_row":
                    value = value + row_offset
                lists[k].append(value)
            pred_offset += n_pred
            row_offset += records[b].n_samples
        for k, parts in lists.items():
            if k == "n_predictions":
                continue
            out[k] = np.concatenate(parts)
        return out

    def _theory(self, samples: dict[str, np.ndarray], cos_matrix: np.ndarray | None, n_inf_ratio: int) -> dict:
        o = self.opts
        theory: dict[str, Any] = {"tolerance": o.tolerance}
        n_triples = n_layer_triples(self.S)
        if "theorem_2_1_violations" in samples:
            v = samples["theorem_2_1_violations"]
            evaluated = samples["theorem_2_1_triples"]
            has = evaluated > 0
            theory["theorem_2_1"] = {
                "n_triples_per_sample": n_triples,
                "n_evaluated_triples": int(evaluated.sum()),
                "sample_violation_rate": float((v[has] > 0).mean()) if has.any() else float("nan"),
                "triple_violation_rate": float(v.sum() / evaluated.sum()) if has.any() else float("nan"),
                "cos_matrix_violation_rate": (float(theorem_2_1_violations(cos_matrix, o.tolerance)) / n_triples
                                              if cos_matrix is not None and n_triples else float("nan")),
                "center": o.center,
            }
        for key in ("straightness", "geodesic_residual"):
            if key in samples:
                theory[key] = _summary(samples[key])
        if "cos_to_last" in samples:
            theory["theorem_2_2"] = theorem_2_2_cooccurrence(samples["cos_to_last"], samples["sim_true_class_prob"],
                                                             o.tolerance)
        if "norm_ratio" in samples and samples["norm_ratio"].size:
            r = samples["norm_ratio"].astype(np.float64)
            r = np.where(np.isfinite(r), r, np.nan)
            with np.errstate(all="ignore"):
                med = np.nanmedian(r, axis=0) if r.shape[0] else np.full(r.shape[1], np.nan)
            theory["norm_ratio_median"] = [*map(float, med), float("nan")]
            theory["norm_ratio_infinite_count"] = n_inf_ratio
        return theory

    def _config_record(self) -> dict[str, Any]:
        o = asdict(self.opts)
        o["layers"] = list(self.layers)
        o["epsilons"] = list(self.opts.epsilons)
        o.update(
            cache_used=getattr(self, "cache_mode", "none") if self.opts.similarity else "none",
            cache_spilled_to_disk=bool(self.cache is not None and self.cache.on_disk),
            cka_estimator=getattr(self, "cka_mode", "none"),
            final_norm=bool(getattr(self.adapter, "final_norm", True)),
            adapter_family=getattr(self.adapter, "family", "custom"),
            pooling=getattr(self.adapter, "pooling", "auto"),
            world_size=self.dist.world_size,
            similarity_samples_rule=("every sample's prediction-token feature" if not self.is_lm else
                                     f"up to {self.opts.tokens_per_sample} scored positions per sequence, uniform "
                                     f"without replacement, generator seeded by (seed={self.opts.seed}, batch index)"),
        )
        return o

    def _public_samples(self, samples: dict[str, np.ndarray], result: AnalysisResult) -> dict[str, np.ndarray]:
        """The arrays written to analysis_samples.npz (docs/analysis.md lists them)."""
        out: dict[str, np.ndarray] = {"layers": np.asarray(self.layers, dtype=np.int64)}
        layers = np.asarray(self.layers, dtype=np.int64)
        if "saturation_position" in samples:
            out["saturation_layer"] = layers[samples.pop("saturation_position")]
        rename = {"theorem_2_1_violations": "theorem_2_1_violations"}
        for k, v in samples.items():
            if k.startswith("_") or k == "sim_true_class_prob":
                continue
            out[rename.get(k, k)] = v
        if "logits" in out and str(self.opts.save_logits).lower() == "auto" and out["logits"].nbytes > _AUTO_LOGITS_BYTES:
            del out["logits"]
        for k, v in list(out.items()):
            if v.dtype == np.float64:
                out[k] = v.astype(np.float32)
            elif v.dtype == np.int64 and k not in ("layers",):
                out[k] = v.astype(np.int32) if v.size == 0 or (v.max() < 2**31 and v.min() >= -2**31) else v
        return out


def _summary(values: np.ndarray) -> dict[str, Any]:
    """Mean, quantiles, extremes and the undefined count of a per-sample statistic."""
    v = np.asarray(values, dtype=np.float64)
    ok = v[np.isfinite(v)]
    if ok.size == 0:
        return {"mean": float("nan"), "n_undefined": int(v.size)}
    q = np.quantile(ok, _QUANTILES)
    return {"mean": float(ok.mean()), "min": float(ok.min()), "max": float(ok.max()),
            **{f"q{int(round(p * 100)):02d}": float(x) for p, x in zip(_QUANTILES, q)},
            "n_undefined": int(v.size - ok.size)}


def _box(values: np.ndarray) -> dict[str, Any]:
    """Per-layer box-plot statistics of a per-sample (n, S) array, NaN entries excluded
    (``layertrace.metrics.box_stats``: q0 q25 q50 q75 q100 mean count, each (S,))."""
    from .. import metrics

    v = np.asarray(values, dtype=np.float64).T
    return metrics.box_stats(np.nan_to_num(v), valid=np.isfinite(v))
