"""Options of the analysis pass (:class:`AnalysisOptions`, also the CLI's ``AnalyzeConfig`` fields)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from ..errors import LayertraceError, did_you_mean
from ..layers import LayerSpec
from ..readout import THEORY_TOLERANCE

DEFAULT_EPSILONS = (0.01, 0.025, 0.05, 0.1)
_CENTERS = ("mean", "none", "feature")
_CKA = ("auto", "exact", "minibatch", "none")
_CACHE = ("auto", "ram", "disk", "none")
# Classifier logits (n, S, K) are saved in the .npz up to this size with save_logits="auto".
AUTO_LOGITS_BYTES = 64 << 20
SUMMARY_QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)
# Cached features are read back in chunks of about this many float32 bytes (chunk_rows="auto"),
# between these row counts: the working memory after the pass is a few times one chunk.
CHUNK_BYTES = 4 << 20
CHUNK_ROWS_RANGE = (256, 4096)


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

    layers: LayerSpec = field(default=None, metadata={
        "help": "layer selector: all, an int, '1,4,-1' or a slice '0::2' (layer L is always added)"})
    similarity: bool = field(default=True, metadata={"help": "compute COS / CKA (false: readout-only, cheapest)"})
    center: str = field(default="mean", metadata={"help": "COS centring: mean | none | feature", "choices": ("mean", "none", "feature")})
    cka: str = field(default="auto", metadata={"help": "auto | exact | minibatch | none", "choices": ("auto", "exact", "minibatch", "none")})
    cache: str = field(default="auto", metadata={
        "help": "feature cache for exact mean-centred statistics: auto | ram | disk | none (none = second pass)", "choices": ("auto", "ram", "disk", "none")})
    cache_ram_gb: float = field(default=2.0, metadata={"help": "RAM budget of cache=auto before it spills to disk", "check": ">= 0"})
    cache_dir: str | None = field(default=None, metadata={"help": "folder of the disk cache (default: system temp)"})
    cka_exact_max_gb: float = 1.0
    rbf_cka: bool = field(default=False, metadata={"help": "also compute RBF CKA (on <= extra_max_samples samples)"})
    procrustes: bool = field(default=False, metadata={"help": "also compute Procrustes similarity"})
    extra_max_samples: int = field(default=2000, metadata={"help": "sample cap of RBF CKA / Procrustes", "check": ">= 2"})
    theory: bool = field(default=True, metadata={"help": "run the theory checks (Theorems 2.1 / 2.2, straightness)"})
    epsilons: tuple = field(default=DEFAULT_EPSILONS, metadata={
        "help": "effective-depth tolerances", "check": "[0, 1]", "each": True})
    tokens_per_sample: int = field(default=8, metadata={
        "help": "causal LMs: similarity tokens drawn per sequence (<= 0: all scored tokens)"})
    token_chunk: int = 1024
    seed: int = 0
    per_sample: bool = field(default=True, metadata={"help": "write analysis_samples.npz (per-sample arrays)"})
    save_logits: Any = field(default="auto", metadata={
        "help": "classifiers: per-sample per-layer logits in the npz: auto (<= 64 MiB) | true | false", "choices": ("auto", "true", "false")})
    precision: str | None = field(default=None, metadata={"help": "auto (bf16 on GPU, fp32 on CPU) | fp32 | bf16 | fp16", "choices": ("auto", "fp32", "bf16", "fp16")})
    progress: bool = field(default=False, metadata={"help": "show a progress bar"})
    shard: Any = "auto"
    tolerance: float = THEORY_TOLERANCE
    max_batches: int | None = None
    chunk_rows: Any = "auto"
    collapse: bool = field(default=False, metadata={
        "help": "classifiers: also measure neural collapse NC1-NC3 per layer through the shared head (docs/analysis.md)"})
    null_permutations: int = field(default=0, metadata={
        "help": "K >= 19: calibrate COS / CKA against K seeded row permutations (score, tau, p-value per pair); 0: off"})
    null_max_samples: int = field(default=1000, metadata={
        "help": "samples (seeded subsample) of the exact-CKA / COS permutation null"})
    layer_removal: bool = field(default=False, metadata={
        "help": "skip each block in turn: change in final accuracy / cross-entropy beside block influence and "
                "adjacent COS (~L/2 extra forwards)"})
    layer_removal_samples: int | None = field(default=None, metadata={
        "help": "layer removal on about N samples (every k-th batch; none = all)"})

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


def make_options(options: Mapping[str, Any]) -> AnalysisOptions:
    known = AnalysisOptions.__dataclass_fields__
    unknown = [k for k in options if k not in known]
    if unknown:
        raise LayertraceError(f"unknown analysis option {unknown[0]!r}{did_you_mean(unknown[0], known)}; "
                              f"options: {', '.join(known)}")
    opts = AnalysisOptions(**options)
    opts.epsilons = tuple(float(e) for e in opts.epsilons)
    opts.validate()
    return opts

