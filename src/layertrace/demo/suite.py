"""``layertrace demo``: the paper's comparisons on the embedded data, end to end, then the report.

Stages (each skipped when its output is already there with the same settings, so an interrupted demo
resumes and a finished one is reused):

1. vision: the demo ViT on Fashion-MNIST trained standard / aligned / with per-layer heads;
2. the 9-layer MLP with and without residual connections (where CKA misleads);
3. text: the bundled MiniLM on Rotten Tomatoes, standard / aligned (per-layer heads in ``paper``);
4. the analysis pass on each model's test split and the early-exit sweep of each;
5. optionally (``--with-lm``) the causal-LM track;
6. ``report.html`` + ``summary.md``.

Output layout (DESIGN.md section 3)::

    OUT/config.yaml                 the resolved demo config
    OUT/report.html, OUT/summary.md
    OUT/<data>-<model>-<mode>/      config.yaml, model/, analysis.json, exit.json, metrics.jsonl, ...
    OUT/demo_timings.json           measured seconds per stage and rates (the next run's time estimates)
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from ..config import add_config_args, flatten_keys, load_config, overrides_from_args, read_yaml, save_config
from ..errors import LayertraceError, did_you_mean
from ..experiments.mlp_residual import MLPExperimentConfig
from .. import run_folder
from ..run_folder import MODES

HELP = ("train, analyze and early-exit the paper's comparisons on the embedded data, then write report.html "
        "and summary.md. --preset quick (default) is sized for 15 minutes on an idle 2-core CPU (docs/demo.md); --preset paper "
        "holds paper-scale settings meant for a GPU (12-layer DeiT-S-sized ViT, longer schedules, full test "
        "sets) and takes hours")


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
    measure_samples: int = field(default=64, metadata=_h(
        "samples timed at batch size 64 per threshold (every sweep point is timed)", check=">= 1"))
    measure_samples_batch1: int = field(default=8, metadata=_h("samples timed at batch size 1 per threshold", check=">= 0"))
    repeats: int = field(default=3, metadata=_h("interleaved timing repeats (medians are reported)", check=">= 1"))
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
    lm_preset: str = field(default="quick", metadata=_h("preset of the LM track (quick | paper)", choices=("quick", "paper")))
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


# ---------------------------------------------------------------------------------------- progress
# Initial time estimates, in seconds per unit of work (a training step, 1,000 test samples, ...) on an idle
# 2-core CPU. Stages the previous recipe had: its rates measured end to end on 2026-12-02 (demo_timings.json,
# BENCHMARKS.md), the ViT step scaled by the measured 0.70x step cost of the 12 x 64 ViT against the 6 x 128
# one (interleaved, one thread). New stages (re-readings, probes) and the MiniLM sweep at 32 timed samples:
# the loaded run of 2026-12-02 (docs/results-training.md) divided by 3.3, that run's slowdown on the stages
# both runs share. The display rescales them by how fast the finished stages really ran, and a later run
# in the same folder starts from the rates it measured itself (demo_timings.json).
DEFAULT_RATES = {
    "train:fmnist-vit": 0.086,     # per optimizer step (demo ViT 12 x 64, batch 64), start-up and final eval included
    "train:rt-minilm": 0.72,       # per optimizer step (MiniLM-L6, batch 32, <= 48 tokens, grouped by length)
    "train:mlp": 3.0,              # per 12 epochs over 4,000 images
    "analyze:fmnist-vit": 0.72,    # per 1,000 test samples
    "analyze:rt-minilm": 13.8,
    "exit:fmnist-vit": 0.68,       # per (1 + 1,000 test samples): loading and timing, then the sweep
    "exit:rt-minilm": 8.2,
    "variant:fmnist-vit": 0.55,    # per 1,000 re-analysed samples (no null, no layer removal)
    "variant:rt-minilm": 9.2,
    "probe:fmnist-vit": 2.0,       # per 1,000 probe samples (train + test)
    "probe:rt-minilm": 8.8,
    "lm": 480.0,                   # the LM track's quick preset, whole
    "report": 18.0,
}
DEFAULT_RATE = 30.0


@dataclass
class Stage:
    """One unit of demo work: ``run()`` does it; ``done()`` says it can be skipped."""

    key: str             # rate key, e.g. "train:fmnist-vit"
    label: str           # shown in the progress display
    run: Callable[[], Any]
    done: Callable[[], bool] = lambda: False
    units: float = 1.0   # amount of work in the rate's unit (training steps, thousands of samples, ...)


def _fmt_s(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    m, s = divmod(seconds, 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


class Progress:
    """Stage-by-stage progress with an estimate of the time left.

    Estimates are ``rates[stage.key] * stage.units`` seconds, rescaled by how the finished stages
    compared with their estimates, so the "left" figure tracks this machine's speed.
    """

    def __init__(self, stages: list[Stage], rates: dict[str, float], stream=None):
        self.stages = stages
        self.rates = rates
        self.stream = stream or sys.stderr
        self.measured: dict[str, float] = {}
        self.t0 = time.perf_counter()
        self.spent_est = 0.0
        self.spent_real = 0.0

    def _estimate(self, stage: Stage) -> float:
        """Seconds the stage should take at the reference rates (before rescaling)."""
        rate = self.rates.get(stage.key, self.rates.get(stage.key.split(":")[0], DEFAULT_RATE))
        return float(rate) * stage.units

    def _scale(self) -> float:
        if self.spent_est <= 0:
            return 1.0
        return min(3.0, max(0.33, self.spent_real / self.spent_est))

    def left(self, from_index: int) -> float:
        return self._scale() * sum(self._estimate(s) for s in self.stages[from_index:] if not s.done())

    def say(self, text: str) -> None:
        print(f"[demo {_fmt_s(time.perf_counter() - self.t0)}] {text}", file=self.stream, flush=True)

    def run_all(self) -> dict[str, float]:
        n = len(self.stages)
        self.say(f"{n} stages; estimated total {_fmt_s(self.left(0))} (finished stages are reused)")
        for i, stage in enumerate(self.stages):
            if stage.done():
                self.say(f"stage {i + 1}/{n}: {stage.label}: already done, reused")
                continue
            est = self._scale() * self._estimate(stage)
            self.say(f"stage {i + 1}/{n}: {stage.label} (estimate {_fmt_s(est)}; about {_fmt_s(self.left(i))} left)")
            t = time.perf_counter()
            stage.run()
            took = time.perf_counter() - t
            self.measured[stage.label] = took
            self.spent_est += self._estimate(stage)
            self.spent_real += took
            self.say(f"stage {i + 1}/{n}: {stage.label}: done in {_fmt_s(took)}; about {_fmt_s(self.left(i + 1))} left")
        return self.measured


# ---------------------------------------------------------------------------------------- stages
def _stamp(path: Path, settings: dict) -> None:
    from ..io import write_json

    write_json(path, {"settings_sha1": _sha(settings), "settings": settings})


def _sha(settings: dict) -> str:
    return hashlib.sha1(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _stamped(path: Path, settings: dict, *outputs: Path) -> bool:
    if not path.is_file() or not all(o.is_file() for o in outputs):
        return False
    try:
        return json.loads(path.read_text()).get("settings_sha1") == _sha(settings)
    except (json.JSONDecodeError, OSError):
        return False


class Demo:
    """Plans and runs the demo's stages for one resolved :class:`DemoConfig`."""

    def __init__(self, cfg: DemoConfig, log: Callable[[str], None] | None = None):
        self.cfg = cfg
        self.out = Path(cfg.out)
        self.log = log or (lambda text: print(text, file=sys.stderr, flush=True))

    # -- training ------------------------------------------------------------------------------
    def train_config(self, track: TrackSection, mode: str, layer_weights: str | None = None) -> Any:
        """The `layertrace train` config of one mode (``layer_weights``: an ablation run's weighting)."""
        from ..training.config import TrainConfig

        if mode not in MODES:
            raise LayertraceError(f"unknown training mode {mode!r} in {track.name}.modes{did_you_mean(mode, MODES)}")
        recipe = find_file(track.recipe, f"training recipe of {track.name}")
        overrides = {**track.overrides, "train.mode": mode}
        if layer_weights is not None:
            overrides["train.layer_weights"] = layer_weights
        if self.cfg.device != "auto":
            overrides.setdefault("train.device", self.cfg.device)
        if self.cfg.threads:
            overrides.setdefault("train.threads", self.cfg.threads)
        return load_config(TrainConfig, recipe, overrides)

    def check_models(self) -> None:
        """Fail before any work when a track names a model that is neither a preset nor a folder."""
        from ..models.presets import get_preset

        for track in (self.cfg.vision, self.cfg.text):
            if not track.enabled or not track.modes:
                continue
            spec = str(self.train_config(track, track.modes[0]).model.spec)
            if Path(spec).expanduser().is_dir() or spec.startswith("hf:") or "/" in spec:
                continue
            try:
                get_preset(spec)
            except LayertraceError as exc:
                raise LayertraceError(f"{track.name}: {exc}") from None

    def run_dir(self, track: TrackSection, mode: str) -> Path:
        return self.out / f"{track.name}-{mode}"

    def ablation_dir(self, track: TrackSection, weights: str) -> Path:
        """The layer-weight ablation's aligned run: ``<name>-<weights>-aligned`` (group ``<name>-<weights>``)."""
        return self.out / f"{track.name}-{weights}-aligned"

    def train_config_of(self, track: TrackSection, run_dir: Path) -> Any:
        """The training config of one of the track's run folders (a mode's or an ablation run's)."""
        for w in track.layer_weights:
            if run_dir.name == self.ablation_dir(track, w).name:
                return self.train_config(track, "aligned", layer_weights=w)
        return self.train_config(track, run_dir.name[len(track.name) + 1:])

    def _train_stage(self, track: TrackSection, mode: str, layer_weights: str | None = None) -> Stage:
        from ..training.run import SUMMARY_FILE

        cfg = self.train_config(track, mode, layer_weights)
        run_dir = self.run_dir(track, mode) if layer_weights is None else self.ablation_dir(track, layer_weights)

        def run() -> None:
            from ..training.run import train_from_config

            train_from_config(cfg, run_dir)

        def done() -> bool:
            from ..training.run import config_differences

            if not (run_dir / SUMMARY_FILE).is_file() or not (run_dir / "config.yaml").is_file():
                return False
            from ..training.config import TrainConfig

            try:
                saved = load_config(TrainConfig, run_dir / "config.yaml")
            except LayertraceError:
                return False
            return not config_differences(saved, cfg)

        return Stage(f"train:{track.name}", f"train {run_dir.name} ({_train_steps(cfg)} steps)", run, done,
                     units=_train_steps(cfg))

    # -- analysis --------------------------------------------------------------------------------
    def analyze_settings(self, track: TrackSection, run_dir: Path) -> dict:
        train_cfg = self.train_config_of(track, run_dir)
        a = self.cfg.analysis
        return {"model": str(run_dir), "data": train_cfg.data.name, "data_root": train_cfg.data.root,
                "split": a.split, "limit": track.analyze_limit, "batch_size": a.batch_size, "cka": a.cka,
                "device": self.cfg.device, "max_length": train_cfg.data.max_length,
                "null_permutations": a.null_permutations, "null_max_samples": a.null_max_samples,
                "layer_removal": a.layer_removal, "layer_removal_samples": track.layer_removal_samples,
                "collapse": a.collapse,
                # the recipe's loader options too (only when set: the stamps of earlier demos stay valid)
                **({"loader_kwargs": dict(train_cfg.data.loader_kwargs)} if train_cfg.data.loader_kwargs else {})}

    def _analyze_stage(self, track: TrackSection, run_dir: Path) -> Stage:
        stamp = run_dir / ".demo-analyze.json"

        def run() -> None:
            from ..analysis import analyze_from_config
            from ..analysis.config import AnalyzeConfig

            settings = self.analyze_settings(track, run_dir)
            cfg = AnalyzeConfig(**settings, out=str(run_dir), progress=False)
            # Writes analysis.json, analysis_samples.npz and analyze-config.yaml beside the training config.
            analyze_from_config(cfg)
            _stamp(stamp, settings)

        settings = self.analyze_settings(track, run_dir)
        n = _n_samples(settings["data"], settings["split"], settings["limit"], settings["data_root"])
        return Stage(f"analyze:{track.name}", f"analyze {run_dir.name} ({n} {self.cfg.analysis.split} samples)", run,
                     lambda: _stamped(stamp, self.analyze_settings(track, run_dir), run_dir / run_folder.ANALYSIS),
                     units=n / 1000)

    # -- re-readings of the trained runs: a shifted test set, another pooling ----------------------
    def variant_settings(self, track: TrackSection, run_dir: Path, variant: str) -> dict:
        """Analysis settings of one re-reading: the run's own, on ``variant_limit`` samples, with only
        what the variant table and its findings read (no null, no layer removal, no per-sample file)."""
        s = {**self.analyze_settings(track, run_dir), "limit": track.variant_limit, "null_permutations": 0,
             "layer_removal": False, "layer_removal_samples": None, "collapse": False, "per_sample": False}
        if variant == "shift":
            s["shift"] = track.shift
        else:
            s["pooling"] = track.counter_pooling
        return s

    def variants(self, track: TrackSection) -> list[str]:
        """The track's re-readings, as folder names under ``<run>/variants/``."""
        return (["shift"] if track.shift else []) + ([f"pooling-{track.counter_pooling}"] if track.counter_pooling else [])

    def _variant_stage(self, track: TrackSection, run_dir: Path, variant: str) -> Stage:
        from ..report.runs import VARIANTS_DIR

        out_dir = run_dir / VARIANTS_DIR / variant
        stamp = out_dir / ".demo-analyze.json"

        def run() -> None:
            from ..analysis import analyze_from_config
            from ..analysis.config import AnalyzeConfig

            settings = self.variant_settings(track, run_dir, variant)
            out_dir.mkdir(parents=True, exist_ok=True)
            analyze_from_config(AnalyzeConfig(**settings, out=str(out_dir), progress=False))
            _stamp(stamp, settings)

        settings = self.variant_settings(track, run_dir, variant)
        n = _n_samples(settings["data"], settings["split"], settings["limit"], settings["data_root"])
        what = f"shift {track.shift}" if variant == "shift" else f"pooling={track.counter_pooling}"
        return Stage(f"variant:{track.name}", f"re-analyze {run_dir.name} ({what}, {n} samples)", run,
                     lambda: _stamped(stamp, self.variant_settings(track, run_dir, variant),
                                      out_dir / "analysis.json"),
                     units=n / 1000)

    # -- task transfer: linear probes on a second data set ---------------------------------------
    def probe_settings(self, track: TrackSection, run_dir: Path) -> dict:
        train_cfg = self.train_config_of(track, run_dir)
        return {"model": str(run_dir), "data": track.probe_data, "limit_train": track.probe_limit_train,
                "limit_test": track.probe_limit_test, "max_length": train_cfg.data.max_length,
                "batch_size": self.cfg.analysis.batch_size, "device": self.cfg.device}

    def _probe_stage(self, track: TrackSection, run_dir: Path) -> Stage:
        stamp = run_dir / ".demo-probe.json"

        def run() -> None:
            from ..analysis.probe_run import ProbeConfig, probe_from_config

            settings = self.probe_settings(track, run_dir)
            probe_from_config(ProbeConfig(**settings, out=str(run_dir)))
            _stamp(stamp, settings)

        s = self.probe_settings(track, run_dir)
        n = (_n_samples(s["data"], "train", s["limit_train"], None) + _n_samples(s["data"], "test", s["limit_test"], None))
        return Stage(f"probe:{track.name}", f"probe {run_dir.name} on {track.probe_data} ({n} samples)", run,
                     lambda: _stamped(stamp, self.probe_settings(track, run_dir), run_dir / "probe.json"),
                     units=n / 1000)

    # -- early exit ------------------------------------------------------------------------------
    def exit_settings(self, track: TrackSection, run_dir: Path) -> dict:
        s = self.analyze_settings(track, run_dir)
        return {"model": s["model"], "data": s["data"], "data_root": s["data_root"], "split": s["split"],
                "limit": track.exit_limit, "policy": self.cfg.exits.policy, "measure": self.cfg.exits.measure,
                "device": self.cfg.device, "max_length": s["max_length"], "tolerance": self.cfg.exits.tolerance,
                "measure_samples": track.exit_measure_samples or self.cfg.exits.measure_samples,
                "measure_samples_batch1": self.cfg.exits.measure_samples_batch1, "repeats": self.cfg.exits.repeats,
                "threads": self.cfg.exits.threads,
                **({"loader_kwargs": s["loader_kwargs"]} if "loader_kwargs" in s else {})}

    def _exit_stage(self, track: TrackSection, run_dir: Path) -> Stage:
        stamp = run_dir / ".demo-exit.json"

        def run() -> None:
            from ..exits.run import CONFIG_FILE, EXIT_FILE, ExitConfig, compare_runs, select_point
            from ..io import write_json

            settings = self.exit_settings(track, run_dir)
            cfg = ExitConfig(**_exit_keys(settings), out=str(run_dir))
            # The whole threshold sweep is simulated and every point is timed (the report plots measured
            # against layer speed-up), on fewer samples per point than one point would get, so the
            # stage keeps its budget; the operating point (the fastest threshold within
            # `exits.tolerance` of full accuracy) is one of the rows.
            options = {k: v for k, v in _exit_keys(settings).items()
                       if k not in ("model", "data", "split", "limit", "policy", "measure")}
            table = compare_runs([run_dir], cfg.data, cfg.policy, split=cfg.split, limit=cfg.limit,
                                 measure=cfg.measure, **options)
            body = dict(table["runs"][run_dir.name])
            target = {"max_accuracy_drop": self.cfg.exits.tolerance}
            rows = table["rows"]
            body["operating_point"] = rows[select_point(rows, rows[0]["full_accuracy"], target)] if rows else None
            body["config"] = {**dataclasses.asdict(cfg), "measured_at": "every point", "target": target}
            write_json(run_dir / EXIT_FILE, body)
            save_config(cfg, run_dir, name=CONFIG_FILE)
            _stamp(stamp, settings)

        settings = self.exit_settings(track, run_dir)
        n = _n_samples(settings["data"], settings["split"], settings["limit"], settings["data_root"])
        return Stage(f"exit:{track.name}", f"early-exit sweep {run_dir.name}", run,
                     lambda: _stamped(stamp, self.exit_settings(track, run_dir), run_dir / run_folder.EXIT),
                     units=1 + n / 1000)

    # -- the plan --------------------------------------------------------------------------------
    def stages(self) -> list[Stage]:
        cfg = self.cfg
        out: list[Stage] = []
        tracks = [t for t in (cfg.vision, cfg.text) if t.enabled]
        for track in tracks[:1]:
            out += self._train_stages(track)
        if cfg.mlp.enabled:
            from ..experiments.mlp_residual import run_name, train_mlp

            for residual in (True, False):
                d = self.out / run_name(cfg.mlp, residual)
                out.append(Stage("train:mlp", f"MLP {'with' if residual else 'without'} residuals ({d.name})",
                                 lambda residual=residual, d=d: train_mlp(cfg.mlp, residual, d, log=self.log),
                                 lambda residual=residual, d=d: _mlp_done(cfg.mlp, residual, d),
                                 units=cfg.mlp.epochs / 12 * (cfg.mlp.train_limit or 4000) / 4000
                                 * (cfg.mlp.width / 128) ** 2))
        for track in tracks[1:]:
            out += self._train_stages(track)
        for track in tracks:
            for m in track.modes:
                run_dir = self.run_dir(track, m)
                out.append(self._analyze_stage(track, run_dir))
                out.append(self._exit_stage(track, run_dir))
                out += [self._variant_stage(track, run_dir, v) for v in self.variants(track)]
                if track.probe_data:
                    out.append(self._probe_stage(track, run_dir))
            # the ablation's runs are read for their per-layer accuracy only: no exit sweep, no re-readings
            out += [self._analyze_stage(track, self.ablation_dir(track, w)) for w in self._ablation(track)]
        if cfg.with_lm:
            lm_dir = self.out / "lm"
            out.append(Stage("lm", f"causal-LM track ({cfg.lm_preset})",
                             lambda: _run_lm(lm_dir, cfg.lm_preset, cfg.threads, cfg.device),
                             lambda: (lm_dir / "lm.json").is_file()))
        out.append(Stage("report", "report.html + summary.md", self.report))
        return out

    def _ablation(self, track: TrackSection) -> list[str]:
        """The ablation's weightings (none unless the track trains an aligned mode to compare with)."""
        return [str(w) for w in track.layer_weights] if "aligned" in track.modes else []

    def _train_stages(self, track: TrackSection) -> list[Stage]:
        return ([self._train_stage(track, m) for m in track.modes]
                + [self._train_stage(track, "aligned", w) for w in self._ablation(track)])

    def run_dirs(self) -> list[Path]:
        from ..experiments.mlp_residual import run_name

        dirs = []
        for track in (self.cfg.vision, self.cfg.text):
            if track.enabled:
                dirs += [self.run_dir(track, m) for m in track.modes]
                dirs += [self.ablation_dir(track, w) for w in self._ablation(track)]
        if self.cfg.mlp.enabled:
            dirs += [self.out / run_name(self.cfg.mlp, r) for r in (True, False)]
        if self.cfg.with_lm:
            dirs.append(self.out / "lm")
        return dirs

    def report(self) -> Path:
        from ..report import build_report

        notes = [f"Produced by `layertrace demo --preset {self.cfg.preset}`; the resolved settings are in "
                 f"{self.out / 'config.yaml'}."]
        dirs = [d for d in self.run_dirs() if d.is_dir()]
        if not dirs:
            raise LayertraceError("nothing to report: vision, text and mlp are all disabled; enable one, "
                                  "e.g. --mlp.enabled true")
        paths = build_report(dirs, self.out / "report.html",
                             title=f"layertrace demo ({self.cfg.preset})", exit_tolerance=self.cfg.exits.tolerance,
                             notes=notes)
        return paths.html

    def run(self) -> Path:
        """Run every stage (skipping finished ones); returns the report path."""
        self.check_models()
        self.out.mkdir(parents=True, exist_ok=True)
        save_config(self.cfg, self.out)
        timings_path = self.out / "demo_timings.json"
        rates = dict(DEFAULT_RATES)
        if timings_path.is_file():
            try:
                rates.update(json.loads(timings_path.read_text()).get("rates", {}))
            except (json.JSONDecodeError, OSError):
                pass
        stages = self.stages()
        progress = Progress(stages, rates)
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            # Layer 0 of a ViT is the same [CLS] embedding for every image: its similarity is
            # undefined by construction, which the analysis records; no need to warn in the demo.
            from ..metrics import DegenerateLayerWarning

            warnings.simplefilter("ignore", DegenerateLayerWarning)
            measured = progress.run_all()
        total = time.perf_counter() - t0
        from ..io import write_json

        per_key: dict[str, list[tuple[float, float]]] = {}
        for stage in stages:
            if stage.label in measured and stage.units > 0:
                per_key.setdefault(stage.key, []).append((measured[stage.label], stage.units))
        rates.update({k: sum(t for t, _ in v) / sum(u for _, u in v) for k, v in per_key.items()})
        write_json(timings_path, {"total_s": total, "stages_s": measured, "rates": rates})
        progress.say(f"finished in {_fmt_s(total)}: {self.out / 'report.html'}")
        return self.out / "report.html"


def _train_steps(cfg: Any) -> int:
    """Optimizer steps a training config will run: ``train.steps``, else ``epochs`` passes over the
    full batches of the data (the trainer's own count, ``training.loop.total_steps_of``)."""
    if cfg.train.steps:
        return int(cfg.train.steps)
    n = _n_samples(cfg.data.name, cfg.data.train_split, cfg.data.train_limit, cfg.data.root)
    micro = max(1, cfg.train.batch_size // max(1, cfg.train.grad_accum))
    return max(1, int(cfg.train.epochs * (n // micro)) // max(1, cfg.train.grad_accum))


def _n_samples(data: str, split: str, limit: int | None, root: str | None) -> int:
    """Examples the stage will see: ``limit``, else the split's size (the loaders cache the files)."""
    if limit is not None:
        return int(limit)
    try:
        from ..data import load_dataset

        return len(load_dataset(data, split, root=root))
    except LayertraceError:
        return 1000  # the stage itself will report the problem; this is only the estimate


def _exit_keys(settings: dict) -> dict:
    """The ExitConfig fields among the exit stage's settings (unset ones left at their defaults)."""
    return {k: v for k, v in settings.items() if v is not None and k != "tolerance"}


def _mlp_done(cfg: MLPExperimentConfig, residual: bool, run_dir: Path) -> bool:
    from ..experiments.mlp_residual import is_finished

    return is_finished(cfg, residual, run_dir)


def _run_lm(out_dir: Path, preset: str, threads: int | None, device: str) -> None:
    from .lm_track import run_lm_track

    run_lm_track(out_dir, preset=preset, threads=threads, device=device)


# ---------------------------------------------------------------------------------------- CLI
def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_args(parser, DemoConfig)
    parser.epilog = ("presets: configs/demo-quick.yaml (default) and configs/demo-paper.yaml; "
                     "example: layertrace demo --preset quick --out demo-out")


def run(args: argparse.Namespace) -> int:
    from ..io import check_out_dir

    cfg = resolve_config(getattr(args, "config", None), overrides_from_args(args))
    check_out_dir(cfg.out)
    report = Demo(cfg).run()
    print(f"report: {report}\nsummary: {report.parent / 'summary.md'}")
    return 0
