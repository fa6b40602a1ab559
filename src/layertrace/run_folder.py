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
(``{"step", "eval": {"layers", "accuracy", "loss", "n"}, "final"?}``).

Rank 0 (DESIGN.md section 1): it imports only errors / io / config, so every stage may use it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

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
    from .io import read_json_dict

    folder = Path(folder)
    if (folder / TRAIN_SUMMARY).is_file():
        mode = read_json_dict(folder / TRAIN_SUMMARY).get("mode")
        if mode:
            return str(mode)
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
