"""Early exit and elastic depth (PAPER.md section 6).

* :mod:`.policies`: when a sample may stop (confidence, entropy, patience, fixed layer, oracle), one
  signature shared by the simulation and the runtime executor.
* :mod:`.simulate`: sweeps over cached per-layer logits; the paper's :func:`speedup`, exit
  histograms, expected FLOPs, Pareto flags.
* :mod:`.record`: :class:`ExitRecord`, ``exit.json`` read back typed (its points are ``ExitPoint`` s).
* :mod:`.executor`: batched runtime early exit that drops finished samples at every layer.
* :mod:`.costs`, :mod:`.timing`: FLOPs per stage, parameter counts, measured wall-clock speed-up.
* :mod:`.run`: the ``layertrace exit`` pipeline (``ExitConfig``, ``exit_from_config``) and
  :func:`compare_runs` (standard vs aligned vs per-layer heads under one protocol).
"""

from __future__ import annotations

import importlib
from typing import Any

from .executor import (ExitResult, Readout, layer_logits, run_early_exit, run_early_exit_batches,
                       run_early_exit_stream, shared_readout)
from .policies import (POLICIES, ConfidencePolicy, EntropyPolicy, ExitPolicy, FixedLayerPolicy, OraclePolicy,
                       PatiencePolicy, default_thresholds, get_policy)
from .record import ExitRecord
from .simulate import (ExitPoint, ExitSweep, LayerCosts, exit_histogram, pareto_flags, simulate_exits, speedup,
                       speedup_from_hist, sweep)

# Names whose modules import more (costs -> flop counter, run -> models/data loaders): loaded lazily.
_LAZY = {
    "stage_flops": "layertrace.exits.costs",
    "param_summary": "layertrace.exits.costs",
    "measure_speedups": "layertrace.exits.timing",
    "ExitConfig": "layertrace.exits.config",
    "exit_from_config": "layertrace.exits.run",
    "evaluate_exits": "layertrace.exits.run",
    "compare_runs": "layertrace.exits.run",
    "comparison_markdown": "layertrace.exits.run",
    "sweep_analysis": "layertrace.exits.simulate",
}

__all__ = [
    "speedup", "speedup_from_hist", "exit_histogram", "simulate_exits", "sweep", "pareto_flags", "ExitPoint", "ExitRecord",
    "ExitSweep", "LayerCosts", "ExitPolicy", "ConfidencePolicy", "EntropyPolicy", "PatiencePolicy",
    "FixedLayerPolicy", "OraclePolicy", "POLICIES", "get_policy", "default_thresholds", "run_early_exit",
    "run_early_exit_batches", "run_early_exit_stream", "layer_logits", "shared_readout", "ExitResult", "Readout", *_LAZY,
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'layertrace.exits' has no attribute {name!r}")
