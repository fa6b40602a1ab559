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
import json
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable

from ..config import add_config_args, load_config, overrides_from_args, save_config
from ..errors import LayertraceError, did_you_mean
from ..experiments.mlp_residual import MLPExperimentConfig
from .. import run_folder
from ..run_folder import LM_TRACK, MODES
# The config (sections, presets, resolve_config) lives in settings.py and the stage / progress display in
# progress.py; the names stay importable from here, where the CLI, the docs and the tests import them.
from .progress import DEFAULT_RATE, DEFAULT_RATES, Progress, Stage, _fmt_s  # noqa: F401
from .settings import (PRESETS, AnalysisSection, DemoConfig, ExitSection, TrackSection,  # noqa: F401
                       find_file, resolve_config)

HELP = ("train, analyze and early-exit the paper's comparisons on the embedded data, then write report.html "
        "and summary.md. --preset quick (default) is sized for 15 minutes on an idle 2-core CPU (docs/demo.md); --preset paper "
        "holds paper-scale settings meant for a GPU (12-layer DeiT-S-sized ViT, longer schedules, full test "
        "sets) and takes hours")


# ---------------------------------------------------------------------------------------- stages
# Every stage is done when run_folder.stage_done says so: its marker records the settings it ran with
# (run_folder.running_stage writes it when the stage's block completes).
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
        from ..training.run import training_settings

        cfg = self.train_config(track, mode, layer_weights)
        run_dir = self.run_dir(track, mode) if layer_weights is None else self.ablation_dir(track, layer_weights)
        settings = training_settings(cfg)

        def run() -> None:
            from ..training.run import train_from_config

            # train_from_config reuses a finished run of this config and resumes an interrupted one
            with run_folder.running_stage(run_dir, "train", settings):
                train_from_config(cfg, run_dir)

        return Stage(f"train:{track.name}", f"train {run_dir.name} ({_train_steps(cfg)} steps)", run,
                     lambda: run_folder.stage_done(run_dir, "train", settings, [run_folder.TRAIN_SUMMARY, run_folder.CONFIG]),
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
                # the recipe's loader options too (only when set: the done-markers of earlier demos stay valid)
                **({"loader_kwargs": dict(train_cfg.data.loader_kwargs)} if train_cfg.data.loader_kwargs else {})}

    def _analyze_stage(self, track: TrackSection, run_dir: Path) -> Stage:
        def run() -> None:
            from ..analysis import analyze_from_config
            from ..analysis.config import AnalyzeConfig

            settings = self.analyze_settings(track, run_dir)
            cfg = AnalyzeConfig(**settings, out=str(run_dir), progress=False)
            # Writes analysis.json, analysis_samples.npz and analyze-config.yaml beside the training config.
            with run_folder.running_stage(run_dir, "analyze", settings):
                analyze_from_config(cfg)

        settings = self.analyze_settings(track, run_dir)
        n = _n_samples(settings["data"], settings["split"], settings["limit"], settings["data_root"])
        return Stage(f"analyze:{track.name}", f"analyze {run_dir.name} ({n} {self.cfg.analysis.split} samples)", run,
                     lambda: run_folder.stage_done(run_dir, "analyze", self.analyze_settings(track, run_dir),
                                                   [run_folder.ANALYSIS]),
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

        def run() -> None:
            from ..analysis import analyze_from_config
            from ..analysis.config import AnalyzeConfig

            settings = self.variant_settings(track, run_dir, variant)
            out_dir.mkdir(parents=True, exist_ok=True)
            with run_folder.running_stage(out_dir, "analyze", settings):
                analyze_from_config(AnalyzeConfig(**settings, out=str(out_dir), progress=False))

        settings = self.variant_settings(track, run_dir, variant)
        n = _n_samples(settings["data"], settings["split"], settings["limit"], settings["data_root"])
        what = f"shift {track.shift}" if variant == "shift" else f"pooling={track.counter_pooling}"
        return Stage(f"variant:{track.name}", f"re-analyze {run_dir.name} ({what}, {n} samples)", run,
                     lambda: run_folder.stage_done(out_dir, "analyze", self.variant_settings(track, run_dir, variant),
                                                   [run_folder.ANALYSIS]),
                     units=n / 1000)

    # -- task transfer: linear probes on a second data set ---------------------------------------
    def probe_settings(self, track: TrackSection, run_dir: Path) -> dict:
        train_cfg = self.train_config_of(track, run_dir)
        return {"model": str(run_dir), "data": track.probe_data, "limit_train": track.probe_limit_train,
                "limit_test": track.probe_limit_test, "max_length": train_cfg.data.max_length,
                "batch_size": self.cfg.analysis.batch_size, "device": self.cfg.device}

    def _probe_stage(self, track: TrackSection, run_dir: Path) -> Stage:
        def run() -> None:
            from ..analysis.probe_run import ProbeConfig, probe_from_config

            settings = self.probe_settings(track, run_dir)
            with run_folder.running_stage(run_dir, "probe", settings):
                probe_from_config(ProbeConfig(**settings, out=str(run_dir)))

        s = self.probe_settings(track, run_dir)
        n = (_n_samples(s["data"], "train", s["limit_train"], None) + _n_samples(s["data"], "test", s["limit_test"], None))
        return Stage(f"probe:{track.name}", f"probe {run_dir.name} on {track.probe_data} ({n} samples)", run,
                     lambda: run_folder.stage_done(run_dir, "probe", self.probe_settings(track, run_dir),
                                                   [run_folder.PROBE]),
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
            with run_folder.running_stage(run_dir, "exit", settings):  # the marker last, after both files
                write_json(run_dir / EXIT_FILE, body)
                save_config(cfg, run_dir, name=CONFIG_FILE)

        settings = self.exit_settings(track, run_dir)
        n = _n_samples(settings["data"], settings["split"], settings["limit"], settings["data_root"])
        return Stage(f"exit:{track.name}", f"early-exit sweep {run_dir.name}", run,
                     lambda: run_folder.stage_done(run_dir, "exit", self.exit_settings(track, run_dir),
                                                   [run_folder.EXIT]),
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
                             lambda: (lm_dir / LM_TRACK).is_file()))
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
        # In name order, as `layertrace report OUT` expands the folder, so both write the same report.
        dirs = sorted((d for d in self.run_dirs() if d.is_dir()), key=lambda d: d.name)
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
