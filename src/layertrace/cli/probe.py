"""``layertrace probe --model M --data D [--train_split train] [--test_split test] --out DIR``, or
``layertrace probe --compare DIR1,DIR2 --out DIR``.

Task transfer: a linear probe per layer on the model's frozen features (train split -> fit, test
split -> accuracy), for any model and any dataset the data layer loads. Writes ``probe.json`` and
``probe-config.yaml``; ``--compare`` puts several folders' ``probe.json`` (standard vs aligned) into
one table (``probe-comparison.md`` / ``.json``). Protocol and schema: docs/probe.md.
"""

from __future__ import annotations

import argparse

from ..config import add_config_args, config_from_args

HELP = "linear probe per layer on frozen features of any model and dataset (task transfer); --compare tabulates runs"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..analysis.probe_run import ProbeConfig

    add_config_args(parser, ProbeConfig)


def run(args: argparse.Namespace) -> int:
    from ..analysis.probe import comparison_markdown
    from ..analysis.probe_run import ProbeConfig, probe_from_config

    cfg = config_from_args(ProbeConfig, args)
    result = probe_from_config(cfg)
    if cfg.compare:
        print(comparison_markdown(result), end="")
        print(f"-> {cfg.out}/probe-comparison.md, probe-comparison.json")
        return 0
    print(f"{result.model} probed on {result.data}: fit on {result.n_train} ({cfg.train_split}), scored on "
          f"{result.n_test} ({cfg.test_split}), {result.num_classes} classes, majority {result.majority_accuracy:.4f}"
          f" -> {cfg.out}")
    print(comparison_markdown([(str(result.model), result)]), end="")
    if not all(result.converged):
        bad = [layer for layer, ok in zip(result.layers, result.converged) if not ok]
        print(f"note: L-BFGS stopped before --tol at layers {bad} (raise --max_iter or --l2)")
    return 0
