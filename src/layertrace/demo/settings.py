"""The ``layertrace demo`` config: its sections (:class:`TrackSection` per comparison, analysis, exits),
:class:`DemoConfig`, the presets and :func:`resolve_config`; and :func:`find_file` (a recipe or data file
given relative to the checkout)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from ..config import flatten_keys, load_config, read_yaml
from ..errors import LayertraceError, did_you_mean
from ..experiments.mlp_residual import MLPExperimentConfig


def _h(text: str, **extra: Any) -> dict:
    return {"help": text, **extra}


@dataclass
class TrackSection:
    """One model / dataset comparison (the demo's ``vision`` and ``text`` sections)."""

    enabled: bool = field(default=True, metadata=_h("run this comparison"))
    name: str = field(default="", metadata=_h("run folder prefix <data>-<model> (folders: <name>-<mode>)"))
    recipe: str = field(default="", metadata=_h(
        "training config (YAML of `layertrace train`) every mode starts from; relative paths are looked up "
        "in the current folder, then in the layertrace checkout"))
    modes: list = field(default_factory=list, metadata=_h(
        "training modes to compare: standard, aligned, aligned-alternating, multi-head, cos-reg"))
    overrides: dict = field(default_factory=dict, metadata=_h(
        "dotted `layertrace train` keys applied on top of the recipe for every mode, e.g. {train.steps: 300}"))
    analyze_limit: Optional[int] = field(default=None, metadata=_h(
        "analyze at most N test samples (none = the whole test split)", check=">= 1"))
    exit_limit: Optional[int] = field(default=None, metadata=_h(
        "early-exit sweep on at most N test samples (none = the whole test split)", check=">= 1"))
    layer_removal_samples: Optional[int] = field(default=None, metadata=_h(
        "layer-removal effect on about N analysed samples (every k-th batch; none = all)", check=">= 1"))
    exit_measure_samples: Optional[int] = field(default=None, metadata=_h(
        "samples timed at batch 64 per threshold in this track's sweeps (none = exits.measure_samples)", check=">= 1"))
    layer_weights: list = field(default_factory=list, metadata=_h(
        "layer-weight ablation (the paper's Fig. 15): one more aligned run per weighting listed (uniform, last), "
        "same recipe, seed and steps, in <name>-<weights>-aligned; analysed beside the linear-lambda run"))
    shift: Optional[str] = field(default=None, metadata=_h(
        "image tracks: re-analyse every trained mode on the test split under this seeded shift "
        "(KIND:VALUE joined by '+': rotate:DEG, noise:SIGMA, contrast:C), into <run>/variants/shift/"))
    counter_pooling: Optional[str] = field(default=None, metadata=_h(
        "text tracks: re-analyse every trained mode reading this token instead of the trained pooling "
        "(cls | mean | last; the same trained runs, no extra training), into <run>/variants/pooling-<p>/"))
    variant_limit: Optional[int] = field(default=None, metadata=_h(
        "the shift / pooling re-analyses on at most N test samples (none = the whole test split)", check=">= 1"))
    probe_data: Optional[str] = field(default=None, metadata=_h(
        "task transfer: fit a linear probe per layer of every trained mode on this second data set's frozen "
        "features (layertrace probe; none = off), writing <run>/probe.json"))
    probe_limit_train: Optional[int] = field(default=None, metadata=_h(
        "probe fitted on at most N train examples of probe_data (none = all)", check=">= 2"))
    probe_limit_test: Optional[int] = field(default=None, metadata=_h(
        "probe scored on at most N test examples of probe_data (none = all)", check=">= 2"))


def _vision() -> TrackSection:
    return TrackSection(name="fmnist-vit", recipe="configs/demo/vit-fmnist.yaml",
                        modes=["standard", "aligned", "multi-head"], layer_removal_samples=512,
                        layer_weights=["uniform"], shift="rotate:15+noise:0.2", variant_limit=2000,
                        probe_data="mnist-5k")


def _text() -> TrackSection:
    return TrackSection(name="rt-minilm", recipe="configs/demo/minilm-rt.yaml", modes=["standard", "aligned", "multi-head"],
                        layer_removal_samples=128, exit_measure_samples=32, counter_pooling="cls",
                        probe_data="bbc-news", probe_limit_train=500, probe_limit_test=300)


@dataclass
class AnalysisSection:
    """Settings of the analysis pass shared by every model."""

    split: str = field(default="test", metadata=_h("split the analysis and early exit run on"))
    batch_size: int = field(default=128, metadata=_h("samples per forward pass", check=">= 1"))
    cka: str = field(default="auto", metadata=_h("CKA estimator: auto | exact | minibatch", choices=("auto", "exact", "minibatch")))
    null_permutations: int = field(default=49, metadata=_h(
        "permutations of the calibrated COS / CKA (0: off; >= 19)", check=">= 0"))
    null_max_samples: int = field(default=300, metadata=_h("samples of the COS / exact-CKA permutation null",
                                                           check=">= 4"))
    layer_removal: bool = field(default=True, metadata=_h(
        "skip each block in turn: final accuracy / CE change beside block influence and adjacent COS"))
    collapse: bool = field(default=True, metadata=_h(
        "neural collapse NC1-NC3 per layer through the shared head (the paper's Fig. 16)"))


@dataclass
class ExitSection:
    """Settings of the early-exit sweep shared by every model."""

    policy: str = field(default="confidence", metadata=_h(
        "exit policy: confidence (the paper's max-probability rule), entropy, patience"))
    measure: bool = field(default=True, metadata=_h("also measure wall-clock speed-ups (batched executor)"))
    measure_samples: int = field(default=512, metadata=_h(
        "samples timed at batch size 64 per threshold (every sweep point is timed; 8 batches, whose running samples "
        "the stream executor pools between layers)", check=">= 1"))
    measure_samples_batch1: int = field(default=8, metadata=_h("samples timed at batch size 1 per threshold", check=">= 0"))
    repeats: int = field(default=5, metadata=_h("interleaved timing repeats (medians are reported)", check=">= 1"))
    threads: Optional[int] = field(default=1, metadata=_h(
        "torch CPU threads while timing (1: the benchmark protocol, steadier on a shared CPU; none = unchanged)"))
    tolerance: float = field(default=0.01, metadata=_h(
        "accuracy loss (fraction) allowed at the report's operating point (0.01 = one point)", check="[0, 1)"))


@dataclass
class DemoConfig:
    """``layertrace demo`` config; ``configs/demo-quick.yaml`` and ``configs/demo-paper.yaml`` are the presets."""

    preset: str = field(default="quick", metadata=_h(
        "quick (2-core CPU, sized for 15 min) | paper (GPU: 12-layer DeiT-S-sized ViT, longer schedules)"))
    out: str = field(default="demo-out", metadata=_h("output folder (reused: finished stages are skipped)"))
    with_lm: bool = field(default=False, metadata=_h("also run the causal-LM track (per-layer generation)"))
    lm_preset: str = field(default="quick", metadata=_h(
        "preset of the LM track (quick | quick-draft: the quick LM trained for self-speculative drafts | "
        "draft: a 12-layer LM trained for them, docs/lm.md | paper)",
        choices=("quick", "quick-draft", "draft", "paper")))
    device: str = field(default="auto", metadata=_h("auto | cpu | cuda", choices=("auto", "cpu", "cuda")))
    threads: Optional[int] = field(default=None, metadata=_h("torch CPU threads (default: all cores)", check=">= 1"))
    vision: TrackSection = field(default_factory=_vision)
    text: TrackSection = field(default_factory=_text)
    mlp: MLPExperimentConfig = field(default_factory=MLPExperimentConfig)
    analysis: AnalysisSection = field(default_factory=AnalysisSection)
    exits: ExitSection = field(default_factory=ExitSection)


# Presets as dotted overrides of the DemoConfig defaults (which are the quick preset). The YAML files
# configs/demo-<preset>.yaml spell the same settings out in full (a test keeps them equal).
PRESETS: dict[str, dict[str, Any]] = {
    "quick": {},
    "paper": {
        "preset": "paper",
        "device": "auto",
        "lm_preset": "paper",
        "vision.overrides": {"model.spec": "deit-s-fmnist", "train.epochs": 100, "train.batch_size": 256,
                             "train.lr": 5e-4, "train.weight_decay": 0.05, "train.schedule": "cosine",
                             "train.precision": "auto", "data.augment": True, "data.train_limit": None,
                             "data.eval_limit": None},
        "vision.modes": ["standard", "aligned", "aligned-alternating", "multi-head"],
        "text.overrides": {"train.epochs": 3, "data.train_limit": None, "data.eval_limit": None,
                           "train.precision": "auto"},
        "text.modes": ["standard", "aligned", "multi-head"],
        "text.exit_measure_samples": None,
        "text.probe_limit_train": None,
        "text.probe_limit_test": None,
        "vision.variant_limit": None,
        "mlp.epochs": 30.0,
        "mlp.width": 256,
    },
}


# ---------------------------------------------------------------------------------------- config
def resolve_config(config_path: str | None, overrides: dict[str, Any]) -> DemoConfig:
    """defaults < preset < ``--config`` YAML < command-line overrides."""
    # Validate the user's file and options first: unknown keys and bad values fail with their origin.
    load_config(DemoConfig, config_path, overrides)
    user_file = flatten_keys(read_yaml(config_path)) if config_path else {}
    preset = str(overrides.get("preset", user_file.get("preset", "quick")))
    if preset not in PRESETS:
        raise LayertraceError(f"unknown demo preset {preset!r}{did_you_mean(preset, PRESETS)}; "
                              f"choose one of {', '.join(PRESETS)}")
    return load_config(DemoConfig, None, {**PRESETS[preset], **user_file, **overrides})


def _repo_root() -> Path:
    return Path(__file__).resolve().parents[3]


def find_file(path: str, what: str) -> Path:
    """``path`` as given (absolute or relative to the current folder), else inside the checkout."""
    p = Path(path).expanduser()
    if p.is_file():
        return p
    if not p.is_absolute() and (_repo_root() / p).is_file():
        return _repo_root() / p
    raise LayertraceError(f"{what} {path} not found (looked in {Path.cwd()} and {_repo_root()}); "
                          f"run from the layertrace checkout or pass an existing file")
