"""Which adapter serves which model: ``adapt(model)``.

Families register a factory under the model class names they serve. Hugging Face families live
in modules imported lazily (only when a model from ``transformers`` is adapted), so
``import layertrace`` never imports transformers.
"""

from __future__ import annotations

import importlib
from typing import Callable

from torch import nn

from ..errors import LayertraceError
from .base import Adapter

AdapterFactory = Callable[..., Adapter]
_FACTORIES: dict[str, AdapterFactory] = {}
# Modules that register more families when imported (kept lazy: they import transformers).
_LAZY_FAMILY_MODULES: list[str] = [
    "layertrace.models.hf_vision",   # ViT, DeiT image classifiers
    "layertrace.models.hf_text",     # BERT-family sequence classifiers (BERT, MiniLM, RoBERTa, DistilBERT)
    "layertrace.models.hf_causal",   # causal LMs (GPT-2, Llama / Qwen2 / Mistral layout)
]
_loaded_lazy = False


def register(*class_names: str) -> Callable[[AdapterFactory], AdapterFactory]:
    """Decorator: ``factory(model, final_norm=True) -> Adapter`` serves models of these class names."""

    def wrap(factory: AdapterFactory) -> AdapterFactory:
        for name in class_names:
            _FACTORIES[name] = factory
        return factory

    return wrap


def _load_lazy_families() -> None:
    global _loaded_lazy
    if not _loaded_lazy:
        for module in _LAZY_FAMILY_MODULES:
            try:
                importlib.import_module(module)
            except ModuleNotFoundError as exc:  # a family module not written yet / optional dep missing
                if exc.name != module:
                    raise
        _loaded_lazy = True


def registered_families() -> list[str]:
    """Names of every model class an adapter is registered for (imports the HF families)."""
    _load_lazy_families()
    return sorted(_FACTORIES)


def adapt(model: nn.Module | Adapter, final_norm: bool = True) -> Adapter:
    """Wrap a model in the adapter of its family (an Adapter is returned unchanged).

    Args:
        model: an HF model instance of a supported family, a toy model, or an Adapter.
        final_norm: apply the final norm in the shared readout (default; PAPER.md section 1).

    Raises:
        LayertraceError: no adapter is registered for the model's class.
    """
    if isinstance(model, Adapter):
        return model
    if not isinstance(model, nn.Module):
        raise LayertraceError(f"adapt() needs a torch nn.Module, got {type(model).__name__}")
    if type(model).__module__.startswith("transformers") or type(model).__name__ not in _FACTORIES:
        _load_lazy_families()
    for cls in type(model).__mro__:
        factory = _FACTORIES.get(cls.__name__)
        if factory is not None:
            return factory(model, final_norm=final_norm)
    raise LayertraceError(
        f"no adapter for model class {type(model).__name__}; supported: {', '.join(sorted(_FACTORIES)) or 'none'}; "
        f"wrap it with layertrace.models.GenericAdapter(model, embed=..., blocks=..., head=...)"
    )


@register("ToyTransformerClassifier")
def _toy_factory(model: nn.Module, final_norm: bool = True) -> Adapter:
    from .toy import ToyAdapter

    return ToyAdapter(model, final_norm=final_norm)  # type: ignore[arg-type]
