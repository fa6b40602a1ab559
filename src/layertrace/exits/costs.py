"""What an early-exit model costs: FLOPs of each stage the executor runs, and parameter counts.

FLOPs are counted with ``torch.utils.flop_counter.FlopCounterMode`` on the very calls the executor
makes (``adapter.embed``, ``adapter.block(l, .)``, ``readout(l, features)``), so per-layer heads and
the shared head are costed alike. The counter counts matrix products, convolutions and attention
(2 FLOPs per multiply-add); norms, activations and softmax are not counted (a few percent at most).
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import nn

from ..models.base import Adapter
from .executor import Readout, resolve_readout
from .simulate import LayerCosts


@torch.no_grad()
def stage_flops(adapter: Adapter, batch: Mapping[str, Any], readout: Readout | None = None) -> LayerCosts:
    """Per-sample FLOPs of the embedding, each block and each readout, measured on ``batch``.

    Args:
        adapter: a classifier adapter.
        batch: a representative batch (sequence models: FLOPs follow its padded length T).
        readout: ``readout(layer, h)``; default the shared head.
    Returns:
        :class:`~layertrace.exits.simulate.LayerCosts` with per-sample FLOPs.
    """
    from torch.utils.flop_counter import FlopCounterMode

    read = resolve_readout(adapter, readout)

    def counted(fn):
        with FlopCounterMode(display=False) as counter:
            out = fn()
        return out, float(counter.get_total_flops())

    state, embed = counted(lambda: adapter.embed(batch))
    n = state.batch_size
    blocks, heads = [], []
    for layer in range(1, adapter.n_layers + 1):
        state, f_block = counted(lambda: adapter.block(layer, state))
        _, f_head = counted(lambda: read(layer, adapter.features(state)))
        blocks.append(f_block / n)
        heads.append(f_head / n)
    return LayerCosts(embed=embed / n, block=blocks, head=heads)


def _n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def param_summary(adapter: Adapter, heads: nn.Module | None = None) -> dict[str, int]:
    """Parameters of the model served with one shared head vs with one head per layer.

    Uses ``layertrace.models.param_counts`` (the models area's definition) when available.

    Returns:
        ``{"shared_head": int, "per_layer_heads": int}``; with ``heads`` given (a trained multi-head
        run) also ``"this_run"``: the model plus those heads.
    """
    try:
        from ..models import param_counts  # type: ignore[attr-defined]

        counts = {k: int(v) for k, v in param_counts(adapter).items() if k in ("shared_head", "per_layer_heads")}
    except ImportError:
        # Private stand-in until models.param_counts lands: model + (L-1) copies of the final linear
        # classifier (PAPER.md section 5: (L - 1)(K d + K) extra parameters).
        total = _n_params(adapter.model)
        linear = next((m for m in reversed(list(adapter.head.modules())) if isinstance(m, nn.Linear)), None)
        per_head = _n_params(linear) if linear is not None else 0
        counts = {"shared_head": total, "per_layer_heads": total + (adapter.n_layers - 1) * per_head}
    if heads is not None:
        counts["this_run"] = _n_params(adapter.model) + _n_params(heads)
    return counts
