"""Reading run folders: everything the report shows comes from these files.

A run folder (written by ``train``, ``analyze``, ``exit`` or ``demo``) may hold

    config.yaml          the resolved training config (else analyze-config.yaml, else exit-config.yaml)
    analysis.json        layer-wise statistics (DESIGN.md section 3; schema in docs/analysis.md)
    analysis_samples.npz per-sample arrays (optional; per-sample COS for the box plots)
    exit.json            early-exit sweep of one policy (more policies: ``exit-<policy>.json``)
    metrics.jsonl        training curves, one JSON object per logged step
    train_summary.json   final training numbers
    lm.json              the causal-LM track (``layertrace demo --with-lm``)
    probe.json           linear probes per layer on another task (``layertrace probe``)
    clip.json            CLIP within- and cross-modal COS per layer (``layertrace analyze-clip``)
    variants/NAME/       re-readings of the same trained model (the demo's ``shift`` on a shifted test
                         set, ``pooling-cls`` through another token): analysis.json + analyze-config.yaml

:func:`load_runs` reads them into :class:`RunResults` as the typed records of the stages that
wrote them (nothing recomputed): :class:`~layertrace.analysis.AnalysisResult`,
:class:`~layertrace.exits.ExitRecord` (points: :class:`~layertrace.exits.ExitPoint`),
:class:`~layertrace.run_folder.TrainSummary`, :class:`~layertrace.run_folder.EvalRecord`,
:class:`~layertrace.analysis.probe.ProbeResult`, :class:`~layertrace.analysis.clip.ClipSimilarityResult`;
the figures, tables and findings read their attributes. It expands a demo output folder into its run
folders. Missing optional files are simply absent; a file that is not what its name says is a one-line
error naming it and the stage to re-run; a folder with none of them is a one-line error.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, TypeVar

from .. import run_folder as rf
from ..analysis.clip import ClipSimilarityResult
from ..analysis.probe import ProbeResult
from ..analysis.result import AnalysisResult, load_samples_npz
from ..config import read_yaml
from ..errors import LayertraceError
from ..exits.record import ExitRecord
from ..io import reading
from ..run_folder import EvalRecord, TrainSummary, eval_records, split_name

T = TypeVar("T")

# Training modes as they appear at the end of a run folder name ``<data>-<model>-<mode>``.
KNOWN_MODES = rf.MODES + rf.EXPERIMENT_VARIANTS
RESULT_FILES = (rf.ANALYSIS, rf.EXIT, rf.METRICS, rf.TRAIN_SUMMARY, rf.LM_TRACK, rf.PROBE, rf.CLIP)
CONFIG_FILES = (rf.CONFIG, rf.ANALYSIS_CONFIG, rf.EXIT_CONFIG)  # in order of preference
VARIANTS_DIR = rf.VARIANTS


@dataclass
class Variant:
    """A re-reading of a run's model (``<run>/variants/<name>/``): its analysis and the analyze config
    that made it (``shift``: the shifted test set, ``pooling``: another token)."""

    analysis: AnalysisResult
    config: dict = field(default_factory=dict)


@dataclass
class RunResults:
    """The typed results of one run folder.

    Attributes:
        path: the run folder.
        name: its folder name, e.g. ``fmnist-vit-aligned``.
        group: the comparison it belongs to (``fmnist-vit``): runs of one group share data and model.
        mode: the training mode (``standard``, ``aligned``, ``multi-head``, ...) or ``""``.
        config: the resolved ``config.yaml`` as a dict (``{}`` if absent).
        analysis: ``analysis.json`` as an :class:`~layertrace.analysis.AnalysisResult` (``None`` if
            absent; its per-sample arrays are read lazily by :meth:`per_sample_arrays`).
        exits: ``{policy: ExitRecord}`` for every ``exit*.json`` in the folder.
        metrics: the rows of ``metrics.jsonl`` (training curves).
        evals: the training loop's layer-wise evaluations among them, typed
            (:class:`~layertrace.run_folder.EvalRecord`: step, per-layer accuracy / loss).
        train_summary: ``train_summary.json`` as a :class:`~layertrace.run_folder.TrainSummary`
            (``None``: no finished training run here).
        lm: the path of ``lm.json`` (``None`` if absent); :func:`layertrace.lm.plots.lm_figures` reads it.
        probe: ``probe.json`` as a :class:`~layertrace.analysis.probe.ProbeResult` (``None`` if absent).
        clip: ``clip.json`` as a :class:`~layertrace.analysis.clip.ClipSimilarityResult` (``None`` if absent).
        variants: ``{name: Variant}`` of every ``variants/<name>/`` folder (re-readings of this run's
            model: a shifted test set, another pooling).
    """

    path: Path
    name: str
    group: str
    mode: str
    config: dict = field(default_factory=dict)
    analysis: AnalysisResult | None = None
    exits: dict[str, ExitRecord] = field(default_factory=dict)
    metrics: list[dict] = field(default_factory=list)
    evals: list[EvalRecord] = field(default_factory=list)
    train_summary: TrainSummary | None = None
    lm: Path | None = None
    probe: ProbeResult | None = None
    clip: ClipSimilarityResult | None = None
    variants: dict[str, Variant] = field(default_factory=dict)

    @property
    def label(self) -> str:
        """Name shown in legends and tables."""
        return self.name

    @property
    def n_layers(self) -> int | None:
        if self.analysis is not None:
            return int(self.analysis.n_layers)
        return next((int(ex.n_layers) for ex in self.exits.values() if ex.n_layers is not None), None)

    def per_sample_arrays(self) -> dict[str, Any]:
        """Arrays of ``analysis_samples.npz`` (empty dict if the file is absent)."""
        npz = self.path / rf.ANALYSIS_SAMPLES
        return load_samples_npz(npz) if npz.is_file() else {}


def _read(path: Path, reader: Callable[[Path], T], fix: str) -> T:
    """``reader(path)``, every failure a one-line error naming ``path`` and ``fix``."""
    try:
        with reading(path, fix):
            return reader(path)
    except LayertraceError as exc:
        if str(path) in str(exc):
            raise
        raise LayertraceError(f"{path}: {exc}") from None
    except (KeyError, TypeError) as exc:  # a file of the right name without the record's shape
        raise LayertraceError(f"{path}: not the record its name says ({exc!r} missing or wrong); {fix}") from None


def _analysis(path: Path) -> AnalysisResult:
    return _read(path, lambda p: AnalysisResult.from_json(p, load_samples=False),
                 f"re-run `layertrace analyze ... --out {path.parent}`")


def load_run(path: str | Path) -> RunResults:
    """Read one run folder (see the module docstring for the files)."""
    p = Path(path)
    if not p.is_dir():
        raise LayertraceError(f"run folder {p} not found; pass folders written by train/analyze/exit/demo")
    group, _ = split_name(p.name)
    run = RunResults(path=p, name=p.name, group=group, mode=rf.training_mode(p) or "")
    # The training config when there is one; a folder written only by analyze / exit has theirs.
    config_path = next((p / n for n in CONFIG_FILES if (p / n).is_file()), None)
    if config_path is not None:
        run.config = read_yaml(config_path)
    if (p / rf.ANALYSIS).is_file():
        run.analysis = _analysis(p / rf.ANALYSIS)
    for exit_path in sorted(p.glob("exit*.json")):
        record = _read(exit_path, ExitRecord.from_json, f"re-run `layertrace exit ... --out {p}`")
        run.exits[record.policy] = record
    run.metrics = rf.read_metrics(p)
    run.evals = eval_records(run.metrics)
    run.train_summary = rf.read_train_summary(p)
    if (p / rf.LM_TRACK).is_file():
        run.lm = p / rf.LM_TRACK
    if (p / rf.PROBE).is_file():
        run.probe = _read(p / rf.PROBE, ProbeResult.from_json, f"re-run `layertrace probe ... --out {p}`")
    if (p / rf.CLIP).is_file():
        run.clip = _read(p / rf.CLIP, ClipSimilarityResult.from_json, f"re-run `layertrace analyze-clip ... --out {p}`")
    for v in sorted((p / VARIANTS_DIR).glob(f"*/{rf.ANALYSIS}")) if (p / VARIANTS_DIR).is_dir() else []:
        cfg_path = v.parent / rf.ANALYSIS_CONFIG
        run.variants[v.parent.name] = Variant(analysis=_analysis(v),
                                              config=read_yaml(cfg_path) if cfg_path.is_file() else {})
    return run


def _has_results(p: Path) -> bool:
    return any((p / f).is_file() for f in RESULT_FILES) or any(p.glob("exit*.json"))


def expand_run_dirs(paths: list[str | Path]) -> list[Path]:
    """Run folders among ``paths``; a folder without results of its own (a demo output folder)
    stands for its sub-folders that have results, in name order."""
    out: list[Path] = []
    for raw in paths:
        p = Path(raw)
        if not p.exists():
            raise LayertraceError(f"run folder {p} not found; pass folders written by train/analyze/exit/demo")
        if not p.is_dir():
            raise LayertraceError(f"{p} is a file; pass its run folder {p.parent} instead")
        if _has_results(p):
            out.append(p)
            continue
        subs = sorted(d for d in p.iterdir() if d.is_dir() and _has_results(d))
        if not subs:
            raise LayertraceError(
                f"{p} holds no analysis.json, exit.json, metrics.jsonl or lm.json (nor sub-folders with them); "
                f"run `layertrace analyze --out {p}` first")
        out.extend(subs)
    seen: set[Path] = set()
    unique = []
    for p in out:
        key = p.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(p)
    return unique


def load_runs(paths: list[str | Path]) -> list[RunResults]:
    """Read every run folder among ``paths`` (demo output folders are expanded)."""
    runs = [load_run(p) for p in expand_run_dirs(paths)]
    names = [r.name for r in runs]
    for r in runs:  # two folders with the same name from different parents: tell them apart
        if names.count(r.name) > 1:
            r.name = f"{r.path.parent.name}/{r.path.name}"
    return runs


MODE_RANK = {m: i for i, m in enumerate(rf.MODES + rf.EXPERIMENT_VARIANTS)}


def order_runs(runs: list[RunResults]) -> list[RunResults]:
    """Runs grouped by comparison (groups in first-seen order), standard first within a group."""
    first_seen = {}
    for i, r in enumerate(runs):
        first_seen.setdefault(r.group, i)
    return sorted(runs, key=lambda r: (first_seen[r.group], MODE_RANK.get(r.mode, len(MODE_RANK)), r.name))


def extra_files(paths: list[str | Path], pattern: str) -> list[Path]:
    """Files matching ``pattern`` in the given folders themselves (e.g. a demo's comparison files)."""
    found: list[Path] = []
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            found.extend(sorted(p.glob(pattern)))
    return found
