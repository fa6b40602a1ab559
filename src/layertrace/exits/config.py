"""The options of ``layertrace exit`` (:class:`ExitConfig`): one typed config, read from
``--config FILE.yaml`` plus ``--key value`` overrides; the pipeline that uses it is :mod:`.run`."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class ExitConfig:
    """Everything ``layertrace exit`` needs; ``--config FILE.yaml`` plus ``--key value`` overrides."""

    model: str = field(default="", metadata={
        "help": "training run folder, save_pretrained folder, or preset (vit-demo, minilm-cls, ...)"})
    data: str = field(default="", metadata={"help": "dataset name (fashion-mnist, rotten-tomatoes, ...)",
                                            "aliases": ("data.name",)})
    split: str = field(default="test", metadata={"help": "train | validation | test"})
    limit: int | None = field(default=None, metadata={"help": "evaluate N examples (seeded, class-stratified)", "check": ">= 1"})
    out: str = field(default="", metadata={"help": "output folder: exit.json and exit-config.yaml"})
    policy: str = field(default="confidence", metadata={
        "help": "confidence (max prob >= t) | entropy (<= t nats) | patience (t layers agree) | fixed (layer t)"})
    thresholds: list[float] | None = field(default=None, metadata={
        "help": "comma list of thresholds, e.g. 0.5,0.7,0.9 (default: a sweep suited to the policy)"})
    heads: str = field(default="auto", metadata={
        "help": "auto (per-layer heads when the run folder has heads.safetensors) | shared | per-layer", "choices": ("auto", "shared", "per-layer")})
    oracle: bool = field(default=True, metadata={"help": "also report the oracle (earliest layer staying correct)"})
    num_classes: int | None = field(default=None, metadata={
        "help": "classes of the head (presets: default = the dataset's)", "check": ">= 1"})
    pooling: str | None = field(default=None, metadata={"aliases": ["model.pooling"], "help": (
        "prediction feature: auto | cls | mean | last; default: a run folder's stored pooling (a run trained "
        "with mean pooling exits with it), else auto")})
    final_norm: bool = field(default=True, metadata={"help": "apply the final norm in the shared readout"})
    batch_size: int = field(default=64, metadata={"help": "samples per batch (simulation cache and batch timing)", "check": ">= 1"})
    max_length: int | None = field(default=None, metadata={"help": "token limit per text (default: the model's)", "check": ">= 2",
                                                           "aliases": ("data.max_length",)})
    data_root: str | None = field(default=None, metadata={"help": "folder of the dataset files (default: embedded)",
                                                          "aliases": ("data.root",)})
    loader_kwargs: dict = field(default_factory=dict, metadata={
        "help": "extra options of the dataset loader, as in train: e.g. {validation_size: 500}, {label_column: y}",
        "aliases": ("data.loader_kwargs",)})
    seed: int = field(default=0, metadata={"help": "seeds the limit subsample and preset init"})
    device: str = field(default="auto", metadata={"help": "auto | cpu | cuda | cuda:N"})
    measure: bool = field(default=True, metadata={"help": "measure wall-clock speed-up of the runtime executor"})
    measure_samples: int = field(default=256, metadata={
        "help": "samples timed at --batch_size (the first ones of the split)", "check": ">= 1"})
    measure_samples_batch1: int = field(default=32, metadata={"help": "samples timed at batch size 1 (0: skip)", "check": ">= 0"})
    repeats: int = field(default=3, metadata={"help": "interleaved timing rounds, at most (paired medians are reported)", "check": ">= 1"})
    measure_budget_s: float | None = field(default=20.0, metadata={
        "help": "seconds the timing rounds of one batch size may take (round 1 always runs; none = all --repeats)",
        "check": "> 0"})
    executor: str = field(default="stream", metadata={
        "help": "executor timed at --batch_size: stream (running samples of --stream_window batches pooled between "
                "layers: throughput) | batch (batch by batch) | both (stream in measured_speedup, batch in "
                "measured_speedup_per_batch)", "choices": ("stream", "batch", "both")})
    stream_window: int = field(default=8, metadata={
        "help": "--executor stream: batches whose running samples are pooled", "check": ">= 1"})
    clock: str = field(default="auto", metadata={
        "help": "timing clock: auto (CPU time of the one timing thread on a CPU with --threads 1, else wall) | wall | cpu",
        "choices": ("auto", "wall", "cpu")})
    threads: int | None = field(default=None, metadata={
        "help": "torch CPU threads while timing (default: unchanged); 1 gives steadier numbers on a busy machine", "check": ">= 1"})
    compare: list[str] | None = field(default=None, metadata={
        "help": "comma list of run folders to compare under this protocol (instead of --model): writes "
                "comparison.json + comparison.md"})
    target_accuracy_drop: float | None = field(default=None, metadata={
        "help": "--compare: per run, the fastest threshold within this accuracy drop of its full model", "check": "[0, 1]"})
    target_speedup: float | None = field(default=None, metadata={
        "help": "--compare: per run, the most accurate threshold with at least this layer speed-up", "check": ">= 1"})
