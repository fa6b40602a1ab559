"""``layertrace exit --model RUN_DIR --data NAME [--split test] [--limit N] --policy confidence
--thresholds 0.5,0.7,0.9 --out DIR [--config FILE.yaml]``, or
``layertrace exit --compare RUN1,RUN2,RUN3 --data NAME --target_accuracy_drop 0.01 --out DIR``.

Early-exit sweep of a classifier: simulated over cached per-layer readouts (accuracy, the paper's
layer-count speed-up, exit histogram, expected FLOPs, Pareto flags, oracle) and measured with the
runtime executor (measured speed-up at ``--batch_size`` and at batch 1). A run folder with
``heads.safetensors`` (multi-head training) is read through its per-layer heads. Writes ``exit.json``
(schema: docs/exits.md) and the resolved ``config.yaml`` into ``--out``. With ``--compare`` it
evaluates several runs under the same protocol (standard vs aligned vs per-layer heads: the
paper's ImageNet table) and writes ``comparison.json`` and ``comparison.md`` instead.
"""

from __future__ import annotations

import argparse

from ..config import add_config_args, config_from_args

HELP = "early-exit sweep (simulated and measured) with a shared classifier or per-layer heads (configs/exit.yaml)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..exits.run import ExitConfig

    add_config_args(parser, ExitConfig)
    parser.add_argument("--force", action="store_true",
                        help="write into --out even when it is the run folder of another model")


def _fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def run(args: argparse.Namespace) -> int:
    from ..exits.run import ExitConfig, exit_from_config

    from .outputs import claim_out

    cfg = config_from_args(ExitConfig, args)
    if cfg.out:
        claim_out("exit", cfg.out, model=cfg.model or None, force=args.force)
    body = exit_from_config(cfg)
    if cfg.compare:
        from ..exits.run import comparison_markdown

        print(comparison_markdown(body), end="")
        print(f"-> {cfg.out}/comparison.json, comparison.md")
        return 0
    print(f"{body['model']} on {body['data']} ({body['split']}): {body['n_samples']} samples, {body['n_layers']} "
          f"layers, {body['readout']} readout, full accuracy {body['full_accuracy']:.4f} -> {cfg.out}")
    print(f"{'threshold':>10} {'accuracy':>9} {'speed-up':>9} {'wall b=' + str(cfg.batch_size):>10} {'wall b=1':>9}"
          f" {'FLOPs x':>8}  exit histogram (layers {body['exit_layers'][0]}..{body['n_layers']})")
    for p in body["points"]:
        print(f"{_fmt(p['threshold'], '10.4g')} {p['accuracy']:9.4f} {p['speedup']:8.2f}x "
              f"{_fmt(p['measured_speedup'], '9.2f')}x {_fmt(p['measured_speedup_batch1'], '8.2f')}x "
              f"{_fmt(p['flops_speedup'], '7.2f')}x  {p['exit_hist']}{' *' if p['pareto'] else ''}")
    if body.get("oracle"):
        o = body["oracle"]
        print(f"{'oracle':>10} {o['accuracy']:9.4f} {o['speedup']:8.2f}x {'':>10} {'':>9} "
              f"{_fmt(o['flops_speedup'], '7.2f')}x  {o['exit_hist']}")
    print("(* = Pareto-optimal in accuracy vs layer speed-up)")
    return 0
