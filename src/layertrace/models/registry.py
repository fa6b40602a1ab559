"""Which adapter serves which model: ``adapt(model)``.

Hugging Face models are served by discovery (:mod:`layertrace.models.hf_auto`, imported only when
one is adapted, so ``import layertrace`` never imports transformers) and checked on load
(:func:`~layertrace.models.hf_auto.self_check`). Other model classes register a factory under their
class name (the toy model below); anything else goes through ``GenericAdapter``.
"""

from __future__ import annotations

import importlib
import weakref
from contextlib import contextmanager
from typing import Callable, Iterator

from torch import nn

from ..errors import LayertraceError
from .base import Adapter

AdapterFactory = Callable[..., Adapter]
_FACTORIES: dict[str, AdapterFactory] = {}
# Modules that register more families when imported (kept lazy: they import transformers).
_LAZY_FAMILY_MODULES: list[str] = []  # Hugging Face models are served by discovery (hf_auto), not by class
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


def factory_families() -> list[str]:
    """Model class names served by registered adapter factories (the lazy family modules loaded)."""
    _load_lazy_families()
    return sorted(_FACTORIES)


def adapt(model: nn.Module | Adapter, final_norm: bool = True, pooling: str = "auto", check: bool = True) -> Adapter:
    """Wrap a model in its adapter (an Adapter is returned unchanged).

    Hugging Face models are served by discovery (:class:`~layertrace.models.hf_auto.HFAutoAdapter`):
    the blocks, the arguments the model passes them, the final norm and the head are found by
    introspection, then checked on one tiny batch against the model itself.

    Args:
        model: an HF model (causal LM, sequence / image classifier, headless encoder), a toy model,
            or an Adapter.
        final_norm: apply the final norm in the shared readout (default; PAPER.md section 1).
        pooling: the prediction feature of classifiers / encoders: ``auto`` (the model's own head's
            choice), ``cls``, ``mean`` (masked) or ``last`` (last non-padding token).
        check: run the self-check the first time a model object is adapted (a couple of forwards
            of a 2-sample batch); ``False`` skips it.

    Raises:
        LayertraceError: no adapter serves the model, the family cannot be served (the reason is
            named), or the self-check failed (the check is named).
    """
    if isinstance(model, Adapter):
        if pooling != "auto" and getattr(model, "pooling", "auto") != pooling:
            raise LayertraceError(f"this adapter was built with pooling={getattr(model, 'pooling', 'auto')!r}; "
                                  f"adapt the model itself to use pooling={pooling!r}")
        return model
    if not isinstance(model, nn.Module):
        raise LayertraceError(f"adapt() needs a torch nn.Module, got {type(model).__name__}")
    if type(model).__module__.startswith("transformers") or type(model).__name__ not in _FACTORIES:
        _load_lazy_families()
    for cls in type(model).__mro__:
        factory = _FACTORIES.get(cls.__name__)
        if factory is not None:
            if pooling != "auto":
                raise LayertraceError(f"{type(model).__name__} has a fixed prediction feature; pooling={pooling!r} "
                                      f"applies to Hugging Face models")
            return factory(model, final_norm=final_norm)
    if _is_hf(model):
        from . import hf_auto

        name = type(model).__name__
        with _one_line(name, "discovery"):
            adapter = hf_auto.HFAutoAdapter(model, final_norm=final_norm, pooling=pooling)
        if check and model not in _CHECKED and not hf_auto.unmaterialised(model):
            with _one_line(name, "the self-check"):
                # the check is of the family's discovery: the model's own readout and pooling
                plain = adapter if (final_norm and pooling == "auto") else hf_auto.HFAutoAdapter(model)
                seconds = hf_auto.self_check(plain)
            hf_auto.VERIFIED[name] = f"verified ({seconds * 1000:.0f} ms self-check)"
            _CHECKED.add(model)
        return adapter
    raise LayertraceError(
        f"no adapter for model class {type(model).__name__}; supported: Hugging Face transformers models and "
        f"{', '.join(sorted(_FACTORIES)) or 'none'}; "
        f"wrap it with layertrace.models.GenericAdapter(model, embed=..., blocks=..., head=...)"
    )


_CHECKED: "weakref.WeakSet[nn.Module]" = weakref.WeakSet()


@contextmanager
def _one_line(name: str, stage: str) -> Iterator[None]:
    """Record the outcome for ``layertrace models``; any crash becomes a one-line LayertraceError."""
    from . import hf_auto

    try:
        yield
    except LayertraceError as exc:
        hf_auto.VERIFIED[name] = str(exc)
        raise
    except Exception as exc:  # the model's own code refused our inputs: refuse, never return numbers
        first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else ""
        msg = f"{name} failed {stage}: {type(exc).__name__}" + (f": {first}" if first else "")
        hf_auto.VERIFIED[name] = msg
        raise LayertraceError(msg) from None


def _is_hf(model: nn.Module) -> bool:
    try:
        from transformers import PreTrainedModel
    except ModuleNotFoundError:
        return False
    return isinstance(model, PreTrainedModel)


@register("ToyTransformerClassifier")
def _toy_factory(model: nn.Module, final_norm: bool = True) -> Adapter:
    from .toy import ToyAdapter

    return ToyAdapter(model, final_norm=final_norm)  # type: ignore[arg-type]
