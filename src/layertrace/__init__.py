"""layertrace: trace how a transformer's representation progresses layer by layer.

Curated top-level names (imported lazily, so ``import layertrace`` stays light and never imports
transformers, accelerate or matplotlib):

    adapt, analyze, AnalysisResult, resolve_layers, LayertraceError,
    cos_matrix, linear_cka_matrix, layer_weights, aligned_loss, speedup, load_model
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "adapt": "layertrace.models",
    "load_model": "layertrace.models",
    "analyze": "layertrace.analysis",
    "AnalysisResult": "layertrace.analysis",
    "resolve_layers": "layertrace.layers",
    "LayertraceError": "layertrace.errors",
    "cos_matrix": "layertrace.metrics",
    "linear_cka_matrix": "layertrace.metrics",
    "layer_weights": "layertrace.training",
    "aligned_loss": "layertrace.training",
    "speedup": "layertrace.exits",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'layertrace' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
