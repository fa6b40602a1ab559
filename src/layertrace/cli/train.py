"""``layertrace train --config FILE.yaml --out RUN_DIR [--train.mode aligned ...]``.

Trains a model in one of the modes standard | aligned | aligned-alternating | multi-head | cos-reg
and writes a run folder (model/, metrics.jsonl, checkpoints/, train_summary.json; see
``layertrace.training.run``). A finished folder with the same config is reused; an interrupted one
resumes from its last checkpoint. Distributed: ``torchrun --nproc_per_node N -m layertrace.cli.main
train ...`` or ``accelerate launch -m layertrace.cli.main train ...``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..config import add_config_args, config_from_args
from ..errors import LayertraceError

HELP = "train a model: standard, aligned, aligned-alternating, multi-head or cos-reg (examples in configs/train-*.yaml)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..training.config import TrainConfig

    parser.add_argument("--out", required=True, metavar="RUN_DIR", help="run folder (created; reused / resumed if present)")
    parser.add_argument("--resume", action="store_true",
                        help="require RUN_DIR to hold a run to continue (it resumes by default when it does)")
    parser.add_argument("--force", action="store_true",
                        help="train into RUN_DIR even when it holds analysis / exit results of another model "
                             "(they are deleted)")
    add_config_args(parser, TrainConfig)


def run(args: argparse.Namespace) -> int:
    from ..training.config import TrainConfig
    from .. import run_folder
    from ..training.run import train_from_config

    from .outputs import claim_out, drop_model_results

    cfg = config_from_args(TrainConfig, args)
    out = claim_out("train", args.out, force=args.force)
    if args.resume:
        if not cfg.train.resume:
            raise LayertraceError("--resume contradicts --train.resume false; drop one of them")
        if not ((out / "checkpoints" / "latest.json").is_file() or run_folder.is_trained(out)):
            raise LayertraceError(f"--resume: {out} holds no checkpoint to continue from; drop --resume to start a run")
    has_run = run_folder.has_training_state(out)
    if out.is_dir() and (args.force or (has_run and not cfg.train.resume)):
        gone = drop_model_results(out)  # they describe the model this run replaces
        if gone:
            print(f"[train] removed results of the previous model: {', '.join(gone)}", flush=True)
    summary = train_from_config(cfg, out)
    if summary.final_eval is not None:
        print(summary.table())
    return 0
