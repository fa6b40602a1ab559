"""``AnalyzeConfig``: the typed config of ``layertrace analyze`` (YAML keys = these field names)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .core import DEFAULT_EPSILONS


@dataclass
class AnalyzeConfig:
    """Everything ``layertrace analyze`` needs; ``--config FILE.yaml`` plus ``--key value`` overrides."""

    model: str = field(default="", metadata={
        "help": "preset name (vit-demo, minilm-cls, gpt2-tiny, ...), save_pretrained folder, or training run folder"})
    data: str = field(default="", metadata={
        "help": "dataset name (fashion-mnist, rotten-tomatoes, ...; causal LMs: a text corpus, e.g. embedded)",
        "aliases": ("data.name",)})
    split: str = field(default="test", metadata={"help": "train | validation | test"})
    limit: int | None = field(default=None, metadata={"help": "analyse N examples (seeded, class-stratified subsample)", "check": ">= 1"})
    out: str = field(default="", metadata={"help": "output folder: analysis.json, analysis_samples.npz, analyze-config.yaml"})
    layers: Any = field(default=None, metadata={
        "help": "layer selector: all, an int, '1,4,-1' or a slice '0::2' (layer L is always added)"})
    num_classes: int | None = field(default=None, metadata={
        "help": "classes of the head (presets: default = the dataset's; folders: a different K means a fresh head)", "check": ">= 1"})
    pooling: str | None = field(default=None, metadata={"aliases": ["model.pooling"], "help": (
        "prediction feature: auto (the model's own head's choice) | cls | mean (masked) | last (last non-pad "
        "token); default: a run folder's stored pooling, else auto")})
    final_norm: bool = field(default=True, metadata={"help": "apply the final norm in the shared readout"})
    batch_size: int = field(default=32, metadata={"help": "samples per forward pass", "check": ">= 1"})
    max_length: int | None = field(default=None, metadata={
        "help": "token limit per text / block length for causal LMs (default: the model's preprocessing)", "check": ">= 2",
        "aliases": ("data.max_length",)})
    shift: str | None = field(default=None, metadata={
        "help": "image data: distribution shift of the analysed split, KIND:VALUE joined by '+': rotate:DEG, "
                "noise:SIGMA, contrast:C (e.g. rotate:15+noise:0.1; docs/analysis.md)"})
    shift_seed: int = field(default=0, metadata={"help": "seed of the shift's noise"})
    data_root: str | None = field(default=None, metadata={"help": "folder of the dataset files (default: embedded copy)",
                                                          "aliases": ("data.root",)})
    loader_kwargs: dict = field(default_factory=dict, metadata={
        "help": "extra options of the dataset loader, as in train: e.g. {validation_size: 500}, {label_column: y}",
        "aliases": ("data.loader_kwargs",)})
    seed: int = field(default=0, metadata={"help": "seeds the limit subsample, preset init, token subsample"})
    device: str = field(default="auto", metadata={"help": "auto | cpu | cuda | cuda:N"})
    precision: str = field(default="auto", metadata={"help": "auto (bf16 on GPU, fp32 on CPU) | fp32 | bf16 | fp16", "choices": ("auto", "fp32", "bf16", "fp16")})
    similarity: bool = field(default=True, metadata={"help": "compute COS / CKA (false: readout-only, cheapest)"})
    center: str = field(default="mean", metadata={"help": "COS centring: mean | none | feature", "choices": ("mean", "none", "feature")})
    cka: str = field(default="auto", metadata={"help": "auto | exact | minibatch | none", "choices": ("auto", "exact", "minibatch", "none")})
    cache: str = field(default="auto", metadata={
        "help": "feature cache for exact mean-centred statistics: auto | ram | disk | none (none = second pass)", "choices": ("auto", "ram", "disk", "none")})
    cache_ram_gb: float = field(default=2.0, metadata={"help": "RAM budget of cache=auto before it spills to disk", "check": ">= 0"})
    cache_dir: str | None = field(default=None, metadata={"help": "folder of the disk cache (default: system temp)"})
    rbf_cka: bool = field(default=False, metadata={"help": "also compute RBF CKA (on <= extra_max_samples samples)"})
    procrustes: bool = field(default=False, metadata={"help": "also compute Procrustes similarity"})
    extra_max_samples: int = field(default=2000, metadata={"help": "sample cap of RBF CKA / Procrustes", "check": ">= 2"})
    epsilons: list[float] = field(default_factory=lambda: list(DEFAULT_EPSILONS), metadata={
        "help": "effective-depth tolerances", "check": "[0, 1]", "each": True})
    tokens_per_sample: int = field(default=8, metadata={
        "help": "causal LMs: similarity tokens drawn per sequence (<= 0: all scored tokens)"})
    theory: bool = field(default=True, metadata={"help": "run the theory checks (Theorems 2.1 / 2.2, straightness)"})
    per_sample: bool = field(default=True, metadata={"help": "write analysis_samples.npz (per-sample arrays)"})
    save_logits: str = field(default="auto", metadata={
        "help": "classifiers: per-sample per-layer logits in the npz: auto (<= 64 MiB) | true | false", "choices": ("auto", "true", "false")})
    progress: bool = field(default=True, metadata={"help": "show a progress bar"})
    null_permutations: int = field(default=0, metadata={
        "help": "K >= 19: calibrate COS / CKA against K seeded row permutations (score, tau, p-value per pair); 0: off"})
    null_max_samples: int = field(default=1000, metadata={
        "help": "samples (seeded subsample) of the exact-CKA / COS permutation null"})
    layer_removal: bool = field(default=False, metadata={
        "help": "skip each block in turn: change in final accuracy / cross-entropy beside block influence and "
                "adjacent COS (~L/2 extra forwards)"})
    layer_removal_samples: int | None = field(default=None, metadata={
        "help": "layer removal on about N samples (every k-th batch; none = all)"})
    collapse: bool = field(default=False, metadata={
        "help": "classifiers: also measure neural collapse NC1-NC3 per layer through the shared head (docs/analysis.md)"})
