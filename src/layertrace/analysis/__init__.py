"""The analysis pass: one traversal of the data -> :class:`AnalysisResult` (docs/analysis.md).

    from layertrace.analysis import analyze, AnalysisResult
    result = analyze(model_or_adapter, batches)          # batches: dicts with "labels"
    result.save("out/")                                   # analysis.json + analysis_samples.npz
    AnalysisResult.from_json("out/analysis.json")

* :func:`analyze` - readout, saturation, effective depth, COS / CKA, norm ratio, theory checks.
* :func:`layerwise_readout` - the cheap readout-only mode of the pass (the training loop's own
  evaluation is :func:`layertrace.training.evaluate_layerwise`, which also reads per-layer heads;
  a test keeps the two equal on the shared head).
* :func:`analyze_from_config` / :class:`AnalyzeConfig` - what ``layertrace analyze`` runs.
"""

from __future__ import annotations

from typing import Any

from .core import DEFAULT_EPSILONS, AnalysisOptions, analyze, layerwise_readout
from .result import JSON_NAME, SAMPLES_NAME, AnalysisResult, load_samples_npz

__all__ = [
    "analyze", "layerwise_readout", "AnalysisResult", "AnalysisOptions", "DEFAULT_EPSILONS",
    "AnalyzeConfig", "analyze_from_config", "load_samples_npz", "JSON_NAME", "SAMPLES_NAME",
]


def __getattr__(name: str) -> Any:
    # The config / CLI runner import the model and data loaders: load them only when asked for.
    if name == "AnalyzeConfig":
        from .config import AnalyzeConfig

        return AnalyzeConfig
    if name == "analyze_from_config":
        from .run import analyze_from_config

        return analyze_from_config
    raise AttributeError(f"module 'layertrace.analysis' has no attribute {name!r}")
