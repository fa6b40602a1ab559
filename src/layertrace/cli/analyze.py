"""``layertrace analyze --model M --data D [--split test] [--limit N] --out DIR [--layers SPEC] [--config FILE.yaml]``.

One pass over the data: layer-wise readout of the shared head (accuracy, probabilities, entropy,
cross-entropy; causal LMs: next-token accuracy and perplexity), saturation layers, effective depth,
COS / CKA similarity and their agreement, norm ratio, theory checks. Writes ``analysis.json``,
``analysis_samples.npz`` and the resolved ``analyze-config.yaml`` into ``--out``. Every key of
:class:`~layertrace.analysis.config.AnalyzeConfig` is an option (``--center none``, ``--cache disk``).
Several processes: ``torchrun --nproc_per_node 2 -m layertrace.cli.main analyze ...``.
"""

from __future__ import annotations

import argparse
import os

from ..config import add_config_args, config_from_args

HELP = "one pass over data: COS/CKA similarity, layer-wise readout, saturation, theory checks (configs/analyze.yaml)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..analysis.config import AnalyzeConfig

    add_config_args(parser, AnalyzeConfig)
    parser.add_argument("--force", action="store_true",
                        help="write into --out even when it is the run folder of another model")


def run(args: argparse.Namespace) -> int:
    from ..analysis.config import AnalyzeConfig
    from ..analysis.run import analyze_from_config

    from .outputs import claim_out

    cfg = config_from_args(AnalyzeConfig, args)
    if cfg.out:
        claim_out("analyze", cfg.out, model=cfg.model, force=args.force)
    result = analyze_from_config(cfg)
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun only rank 0 reports
        print(f"{result.model} on {result.data} ({cfg.split}): {result.n_samples} samples, "
              f"{result.n_layers} layers, {result.timing.get('total_s', 0.0):.1f} s -> {cfg.out}")
        print(result.layer_table())
    return 0
