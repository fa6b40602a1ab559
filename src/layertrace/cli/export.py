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
    pooling: str | None = field(default=None, metadata={"aliases": ["model.pooling"], "help": (
        "prediction feature recorded with the export (auto | cls | mean | last); default: the run's stored "
        "pooling, else auto. Non-auto pooling is read by layertrace.load_model; plain transformers classes "
        "read their own head's token")})


def export_from_config(cfg: ExportConfig, force: bool = False) -> list[Path]:
    """Export the model of ``cfg`` truncated at every selected layer; returns the folders written.

    ``--out`` is checked first (:func:`~layertrace.cli.outputs.claim_out`: never a training run
    folder, whose model it would replace; another model folder only with ``force``). The new
    folder set replaces the old one as a whole: a re-export leaves no file of the previous one.
    """
    from ..config import save_config
    from ..io import result_set
    from ..layers import resolve_layers
    from ..models import export_first_k, load_model
    from .outputs import EXPORT_OWNED, claim_out

    if not cfg.model:
        raise LayertraceError("no model given: pass --model (a run folder, a save_pretrained folder or a preset)")
    if cfg.layers is None or cfg.layers == "":
        raise LayertraceError("no depth given: pass --layers k (the number of blocks to keep, 1..L)")
    if not cfg.out:
        raise LayertraceError("no output folder: pass --out DIR")
    out = claim_out("export", cfg.out, force=force)
    loaded = load_model(cfg.model, num_classes=cfg.num_classes, seed=cfg.seed, pooling=cfg.pooling)
    n_layers = loaded.adapter.n_layers
    chosen = resolve_layers(n_layers, cfg.layers)
    if chosen[0] == 0:
        raise LayertraceError(f"--layers {cfg.layers!r} selects layer 0 (the embeddings); keep 1..{n_layers} blocks")
    names = [None] if len(chosen) == 1 else [f"layers-{k}" for k in chosen]
    with result_set(out, EXPORT_OWNED) as staging:
        for k, name in zip(chosen, names):
            folder = staging if name is None else staging / name
            export_first_k(loaded, k, folder)
            save_config(cfg, folder, name="export-config.yaml")
    return [out if name is None else out / name for name in names]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_args(parser, ExportConfig)
    parser.add_argument("--force", action="store_true",
                        help="replace a model folder in --out that is not a layertrace export")


def run(args: argparse.Namespace) -> int:
    cfg = config_from_args(ExportConfig, args)
    for folder in export_from_config(cfg, force=args.force):
        print(f"exported {cfg.model} -> {folder} (load with transformers.AutoModelFor*.from_pretrained)")
    return 0
