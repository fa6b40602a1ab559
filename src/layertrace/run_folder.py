"""The run folder's layout: the one module that knows its file names, its training mode and the
training loop's records (every stage writes and reads a run folder through these names).

A run folder ``<data>-<model>-<mode>`` (``fmnist-vit-aligned``) holds, written by the stage named::

    config.yaml            train     the resolved TrainConfig (its presence marks a training folder)
    model/                 train     the checkpoint (HF folder), loadable with load_model
    heads.safetensors      train     per-layer heads (mode multi-head only)
    metrics.jsonl          train     one JSON record per line: training rows and ``eval`` records
    train_summary.json     train     written last: the run finished (mode, steps, timings, final eval)
    checkpoints/           train     resumable state, step by step
    analysis.json          analyze   the AnalysisResult (+ analysis_samples.npz, analyze-config.yaml)
    exit.json              exit      the early-exit sweep (+ exit-config.yaml)
    lm_eval.json           demo      the LM track's per-run evaluation
    variants/NAME/         demo      re-readings of the same model (a shifted test set, another pooling)

``metrics.jsonl`` records are read as typed :class:`EvalRecord` s by :func:`eval_records`: the
layer-wise evaluation the training loop runs every ``train.eval_every`` steps and once at the end
(``{"step", "eval": {"layers", "accuracy", "loss", "n"}, "final"?}``); ``train_summary.json`` as a
:class:`TrainSummary` by :func:`read_train_summary`. The other typed records live with the classes
they are (the rank rule below): ``analysis.json`` -> ``layertrace.analysis.AnalysisResult.from_json``,
``exit.json`` -> ``layertrace.exits.ExitRecord.from_json`` (its points are ``ExitPoint`` s).

Whether a stage is finished is ONE check, :func:`stage_done`: a stage that finishes writes a small
marker ``.done-<stage>.json`` holding a hash of the settings it ran with (:func:`running_stage` removes
the marker first and writes it only when the stage's block completes). A re-run with the same settings
and every output present skips; changed settings, a missing output or an interrupted stage re-run.
The demo's stages and the MLP experiment use it; :func:`is_trained` (``train_summary.json`` is
there) is what ``layertrace train`` itself resumes from.

Rank 0 (DESIGN.md section 1): it imports only errors / io / config, so every stage may use it.
"""

from __future__ import annotations

import hashlib
import json
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

CONFIG = "config.yaml"
MODEL_DIR = "model"
HEADS = "heads.safetensors"
METRICS = "metrics.jsonl"
TRAIN_SUMMARY = "train_summary.json"
CHECKPOINTS = "checkpoints"
ANALYSIS = "analysis.json"
ANALYSIS_SAMPLES = "analysis_samples.npz"
ANALYSIS_CONFIG = "analyze-config.yaml"   # not config.yaml: a training run folder keeps its own
EXIT = "exit.json"
EXIT_CONFIG = "exit-config.yaml"          # likewise
LM_EVAL = "lm_eval.json"
LM_TRACK = "lm.json"                      # the causal-LM track (`layertrace demo --with-lm`)
PROBE = "probe.json"                      # `layertrace probe`
CLIP = "clip.json"                        # `layertrace analyze-clip`
VARIANTS = "variants"                     # variants/NAME/: re-readings of the model (analysis.json + its config)

#: The training modes (``layertrace train --train.mode``; PAPER.md section 5), in the report's order.
MODES = ("standard", "aligned", "aligned-alternating", "multi-head", "cos-reg")
#: The variants of the MLP experiment (``mnist-mlp-residual`` / ``mnist-mlp-plain``).
EXPERIMENT_VARIANTS = ("residual", "plain")


def split_name(name: str) -> tuple[str, str]:
    """``fmnist-vit-multi-head`` -> (``fmnist-vit``, ``multi-head``); no known mode -> (name, "")."""
    for mode in sorted(MODES + EXPERIMENT_VARIANTS, key=len, reverse=True):  # longest first
        if name == mode:
            return name, mode
        if name.endswith("-" + mode):
            return name[: -len(mode) - 1], mode
    return name, ""


def training_mode(folder: str | Path) -> str | None:
    """The training mode of a run folder: ``train_summary.json``'s ``mode``, else ``config.yaml``'s
    ``train.mode`` (or top-level ``mode``), else the folder-name suffix; ``None`` when none says."""
    folder = Path(folder)
    summary = read_train_summary(folder)
    if summary is not None and summary.mode:
        return str(summary.mode)
    if (folder / CONFIG).is_file():
        from .config import read_yaml

        data = read_yaml(folder / CONFIG)
        train = data.get("train")
        mode = train.get("mode") if isinstance(train, dict) else data.get("mode")
        if isinstance(mode, str) and mode:
            return mode
    return split_name(folder.name)[1] or None


def is_trained(folder: str | Path) -> bool:
    """Whether the folder holds a finished training run (``train_summary.json`` is written last)."""
    return (Path(folder) / TRAIN_SUMMARY).is_file()


def done_marker(folder: str | Path, stage: str) -> Path:
    """The marker a finished ``stage`` leaves in ``folder``: ``.done-<stage>.json``."""
    return Path(folder) / f".done-{stage}.json"


def settings_hash(settings: dict[str, Any]) -> str:
    """A short, order-independent hash of a stage's settings (JSON; other values by ``str``)."""
    return hashlib.sha1(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


def mark_done(folder: str | Path, stage: str, settings: dict[str, Any]) -> Path:
    """Record that ``stage`` finished in ``folder`` with ``settings`` (call once its outputs are written;
    :func:`running_stage` does). Written atomically; returns the marker's path."""
    from .io import write_json

    path = done_marker(folder, stage)
    write_json(path, {"stage": stage, "settings_sha1": settings_hash(settings), "settings": settings})
    return path


def stage_done(folder: str | Path, stage: str, settings: dict[str, Any], outputs: Iterable[str | Path] = ()) -> bool:
    """Whether ``stage`` finished in ``folder`` with these ``settings`` and its ``outputs`` are all there.

    Args:
        folder: the folder the stage writes (a run folder, or a variant's folder inside one).
        stage: the stage's name (``train``, ``analyze``, ``exit``, ``probe``, ``mlp``, ...).
        settings: what decides the stage's result (JSON-able; compared by :func:`settings_hash`).
        outputs: files the stage writes, relative to ``folder`` (or absolute); each must exist.
    Returns:
        False when the marker is missing or unreadable, records other settings, or an output is missing.
    """
    folder = Path(folder)
    if not all((folder / o).is_file() for o in outputs):
        return False
    path = done_marker(folder, stage)
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):  # absent, or torn by a crash: not done
        return False
    return isinstance(record, dict) and record.get("settings_sha1") == settings_hash(settings)


@contextmanager
def running_stage(folder: str | Path, stage: str, settings: dict[str, Any]) -> Iterator[Path]:
    """Run a stage's block: its marker is removed first and written only when the block completes, so
    an interrupted stage (or one that raised) is never taken for done. Yields ``folder``."""
    folder = Path(folder)
    done_marker(folder, stage).unlink(missing_ok=True)
    yield folder
    folder.mkdir(parents=True, exist_ok=True)
    mark_done(folder, stage, settings)


def has_training_state(folder: str | Path) -> bool:
    """Whether a training run (finished or resumable) lives in the folder."""
    folder = Path(folder)
    return is_trained(folder) or (folder / CHECKPOINTS).is_dir()


@dataclass
class EvalRecord:
    """One layer-wise evaluation the training loop logged to ``metrics.jsonl``.

    Attributes:
        step: the optimizer step it was taken after.
        layers: evaluated layer indices (0..L, or the layers with a head).
        accuracy: per-layer accuracy (fraction), aligned with ``layers``.
        loss: per-layer mean cross-entropy (nats).
        n: samples (tokens for causal LMs) counted.
        final: the evaluation at the end of training.
    """

    step: int
    layers: list[int]
    accuracy: list[float]
    loss: list[float]
    n: int
    final: bool = False

    @property
    def last_layer_accuracy(self) -> float:
        """Accuracy of the deepest evaluated layer (the model's own head)."""
        return float(self.accuracy[-1])


def eval_records(rows: Iterable[dict[str, Any]]) -> list[EvalRecord]:
    """The ``eval`` records among ``metrics.jsonl`` rows, in file order (other rows skipped)."""
    out = []
    for row in rows:
        ev = row.get("eval") if isinstance(row, dict) else None
        if not isinstance(ev, dict) or not ev.get("accuracy"):
            continue
        out.append(EvalRecord(step=int(row.get("step", 0)), layers=[int(l) for l in ev.get("layers", [])],
                              accuracy=[float(a) for a in ev["accuracy"]],
                              loss=[float(x) for x in ev.get("loss", [])], n=int(ev.get("n", 0)),
                              final=bool(row.get("final", False))))
    return out


def read_metrics(folder: str | Path) -> list[dict[str, Any]]:
    """The rows of the folder's ``metrics.jsonl`` (``[]`` when absent; unreadable lines skipped)."""
    path = Path(folder) / METRICS
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(errors="replace").splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            # A run interrupted mid-write leaves at most a torn last line: skip it, keep the rest.
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


@dataclass
class TrainSummary:
    """What a finished training run reports (``train_summary.json``, written last by the training
    loop and by the MLP experiment; ``layertrace.training.RunSummary`` is this class).

    Attributes:
        run_dir: the run folder.
        mode: training mode; ``layers`` / ``layer_weights``: the layers in the loss and their weights.
        model, data: the model spec and dataset name.
        task: ``image-classification`` | ``text-classification`` | ``causal-lm``.
        steps: optimizer steps; ``samples_seen``: training samples consumed.
        wall_time_s: training time over all sessions (resumes included), without evaluation and saving.
        final_eval: ``{"layers": [0..L], "accuracy": [...], "loss": [...], "n": N}`` on the eval split
            (per-layer heads read their own layers in multi-head runs).
        params: ``{"model": ..., "per_layer_heads": ...}`` parameter counts.
        resumed_from: checkpoint step the last session resumed from (None: trained in one go).
        reused: True when this call found the run finished and did not train.
    """

    run_dir: str
    mode: str
    model: str
    data: str
    task: str
    steps: int
    samples_seen: int
    wall_time_s: float
    final_eval: dict[str, Any] | None
    layers: list[int]
    layer_weights: list[float]
    params: dict[str, int] = field(default_factory=dict)
    resumed_from: int | None = None
    reused: bool = False

    def to_json(self, path: str | Path) -> None:
        """Write the summary (atomically)."""
        from .io import write_json

        write_json(path, asdict(self))

    @classmethod
    def from_json(cls, path: str | Path) -> "TrainSummary":
        """Read ``train_summary.json`` (a file or its run folder); a file that is not one is a one-line
        error naming it. Keys this class does not know are ignored."""
        from .errors import LayertraceError
        from .io import read_json_dict

        path = Path(path)
        if path.is_dir():
            path = path / TRAIN_SUMMARY
        fix = (f"delete it, then re-run the training (`layertrace train --config {path.parent / CONFIG} "
               f"--out {path.parent}` resumes from its checkpoints; the demo re-runs its stage)")
        data = read_json_dict(path, fix)
        if "wall_time_s" not in data and "train_seconds" in data:
            # train_summary.json of the MLP experiment before it wrote this record (the previous
            # session's demo outputs, e.g. docs/demo.md's example folder): same facts, older keys.
            data = _legacy_mlp_summary(path.parent, data)
        known = {f for f in cls.__dataclass_fields__}
        missing = [f for f in ("mode", "steps", "wall_time_s") if f not in data]
        if missing:
            raise LayertraceError(f"{path}: missing key(s) {', '.join(missing)}; it is not a train_summary.json, {fix}")
        defaults = {"run_dir": str(path.parent), "model": "", "data": "", "task": "", "samples_seen": 0,
                    "final_eval": None, "layers": [], "layer_weights": []}
        return cls(**{**defaults, **{k: v for k, v in data.items() if k in known}})

    def table(self) -> str:
        """A short text table of the final layer-wise accuracy."""
        lines = [f"run {self.run_dir}: {self.mode}, {self.steps} steps, {self.wall_time_s:.1f} s"
                 + (" (reused)" if self.reused else "")]
        if self.final_eval:
            lines.append("layer     " + " ".join(f"{l:>6d}" for l in self.final_eval["layers"]))
            lines.append("accuracy  " + " ".join(f"{a:6.3f}" for a in self.final_eval["accuracy"]))
        return "\n".join(lines)


def _legacy_mlp_summary(folder: Path, data: dict[str, Any]) -> dict[str, Any]:
    """The keys of an old MLP-experiment summary (``train_seconds``, ``n_params``) as TrainSummary's."""
    out = {"mode": data.get("mode", split_name(folder.name)[1]), "steps": data.get("steps", 0),
           "wall_time_s": data["train_seconds"], "task": "image-classification"}
    if "n_params" in data:
        out["params"] = {"model": int(data["n_params"])}
    return out


def read_train_summary(folder: str | Path) -> TrainSummary | None:
    """The folder's :class:`TrainSummary`, ``None`` when it holds no finished training run."""
    return TrainSummary.from_json(folder) if is_trained(folder) else None
