"""``layertrace export --model RUN_DIR|PRESET|DIR --layers k --out DIR``: elastic depth.

Writes blocks 1..k plus the shared head as a standalone Hugging Face model folder
(``save_pretrained`` layout, safetensors, tokenizer and ``preprocess.json`` when known) that loads
with plain ``transformers`` Auto classes and predicts exactly what layer k's shared readout
predicts. Several layers (``--layers 2,4,6`` or a slice ``2::2``) write one sub-folder ``layers-K``
per k. Layer selectors follow :func:`layertrace.layers.resolve_layers` (``-1`` = L).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import add_config_args, config_from_args
from ..errors import LayertraceError

HELP = "export the first k blocks plus the shared head as a standalone HF model (configs/export.yaml)"


@dataclass
class ExportConfig:
    """What ``layertrace export`` needs."""

    model: str = field(default="", metadata={"help": "training run folder, save_pretrained folder, or preset"})
    layers: Any = field(default=None, metadata={
        "help": "blocks to keep: k (1..L, -1 = L), or several ('2,4,6', '2::2') for one sub-folder each"})
    out: str = field(default="", metadata={"help": "output folder (the exported model, or its layers-K sub-folders)"})
    num_classes: int | None = field(default=None, metadata={"help": "classes of a preset's head (default: its own)", "check": ">= 1"})
    seed: int | None = field(default=0, metadata={"help": "seed of a preset's random init (presets only)"})


def export_from_config(cfg: ExportConfig) -> list[Path]:
    """Export the model of ``cfg`` truncated at every selected layer; returns the folders written."""
    from ..config import save_config
    from ..layers import resolve_layers
    from ..models import export_first_k, load_model

    if not cfg.model:
        raise LayertraceError("no model given: pass --model (a run folder, a save_pretrained folder or a preset)")
    if cfg.layers is None or cfg.layers == "":
        raise LayertraceError("no depth given: pass --layers k (the number of blocks to keep, 1..L)")
    if not cfg.out:
        raise LayertraceError("no output folder: pass --out DIR")
    loaded = load_model(cfg.model, num_classes=cfg.num_classes, seed=cfg.seed)
    n_layers = loaded.adapter.n_layers
    chosen = resolve_layers(n_layers, cfg.layers)
    if chosen[0] == 0:
        raise LayertraceError(f"--layers {cfg.layers!r} selects layer 0 (the embeddings); keep 1..{n_layers} blocks")
    out = Path(cfg.out)
    folders = [out] if len(chosen) == 1 else [out / f"layers-{k}" for k in chosen]
    for k, folder in zip(chosen, folders):
        export_first_k(loaded, k, folder)
        save_config(cfg, folder, name="export-config.yaml")
    return folders


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_args(parser, ExportConfig)


def run(args: argparse.Namespace) -> int:
    cfg = config_from_args(ExportConfig, args)
    for folder in export_from_config(cfg):
        print(f"exported {cfg.model} -> {folder} (load with transformers.AutoModelFor*.from_pretrained)")
    return 0
