"""Model adapters: all model-family knowledge lives here (DESIGN.md section 2)."""

from .base import Adapter, State, Trace
from .cost import LayerFlops, ParamComparison, compare_params, layer_flops, param_counts
from .export import export_first_k
from .generic import GenericAdapter
from .layer_readout import LayerReadout, NormThenHead
from .loading import LoadedModel, load_model, save_model_dir
from .presets import PRESETS, Preset, build_preset, get_preset, preset_names
from .registry import adapt, register
from .toy import ToyAdapter, ToyConfig, ToyTransformerClassifier
from .zoo import registered_families

__all__ = [
    "Adapter", "State", "Trace", "LayerReadout", "GenericAdapter", "NormThenHead", "adapt", "register",
    "registered_families", "ToyAdapter", "ToyConfig", "ToyTransformerClassifier",
    "LoadedModel", "load_model", "save_model_dir", "PRESETS", "Preset", "build_preset", "get_preset",
    "preset_names", "param_counts", "compare_params", "ParamComparison", "layer_flops", "LayerFlops",
    "export_first_k",
]
