"""Run an adapter on one batch under the requested precision and check what comes out.

The adapter's own :meth:`~layertrace.models.base.Adapter.trace` does the layer-by-layer pass; this
module adds the pieces every consumer needs around it: mixed-precision autocast on GPU, and a
one-line error when an activation is NaN or infinite (instead of silently averaging NaNs).
"""

from __future__ import annotations

import contextlib
from typing import Any, Mapping

import torch
from torch import Tensor

from ..errors import LayertraceError

# The one precision vocabulary (analysis, probe, training): auto | fp32 | bf16 | fp16. "no" (Accelerate's
# name for full precision, accepted in train.precision) and the torch dtype names are aliases.
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
_PRECISIONS = {"fp32": None, "float32": None, "no": None, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
               "fp16": torch.float16, "float16": torch.float16}
_CANONICAL = {"float32": "fp32", "no": "fp32", "bfloat16": "bf16", "float16": "fp16"}


def resolve_precision(precision: str | None, device: torch.device | str, fp16_fallback: bool = True) -> str:
    """The canonical name (``fp32`` / ``bf16`` / ``fp16``) of ``precision`` on ``device``.

    ``"auto"`` -> ``"bf16"`` on a CUDA device that supports it, else ``"fp16"`` on CUDA (``fp32`` with
    ``fp16_fallback=False``, as training does: fp16 training needs loss scaling), ``"fp32"`` on CPU.
    """
    device = torch.device(device)
    text = (precision or "fp32").lower()
    if text == "auto":
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else ("fp16" if fp16_fallback else "fp32")
        return "fp32"
    if text not in _PRECISIONS:
        raise LayertraceError(f"precision {precision!r} is not one of auto, fp32, bf16, fp16")
    return _CANONICAL.get(text, text)


def autocast(precision: str | None, device: torch.device | str) -> contextlib.AbstractContextManager:
    """Autocast context for ``precision`` on ``device`` (a no-op for fp32)."""
    device = torch.device(device)
    dtype = _PRECISIONS.get((precision or "fp32").lower())
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def check_finite(values: Tensor, what: str, layers: list[int], batch_index: int) -> None:
    """Raise a one-line error naming the first layer whose ``values`` (S, ...) hold NaN / inf."""
    finite = torch.isfinite(values.reshape(values.shape[0], -1)).all(dim=1)
    if bool(finite.all()):
        return
    bad = int(torch.nonzero(~finite)[0, 0])
    raise LayertraceError(
        f"non-finite {what} (NaN or inf) at layer {layers[bad]} in batch {batch_index}: check the model "
        f"weights and inputs, or run in fp32 (--precision fp32) if half precision overflowed"
    )


def trace_batch(adapter, batch: Mapping[str, Any], layers: list[int], with_logits: bool,
                precision: str | None = None, batch_index: int = 0, check: bool = True):
    """``adapter.trace(batch, layers, with_logits)`` under autocast, with finiteness checks
    (``check=False`` leaves them to the caller, e.g. to skip padded positions).

    Returns:
        the adapter's :class:`~layertrace.models.base.Trace`.
    """
    with autocast(precision, adapter.device):
        trace = adapter.trace(batch, layers=layers, with_logits=with_logits)
    if not check:
        return trace
    check_finite(trace.features, "activations", trace.layers, batch_index)
    if trace.logits is not None:
        check_finite(trace.logits, "logits", trace.layers, batch_index)
    return trace
