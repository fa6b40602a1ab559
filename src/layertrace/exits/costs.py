"""What an early-exit model costs: FLOPs of each stage the executor runs, and parameter counts.

FLOPs are counted with the models area's ``flop_counter()`` (``torch.utils.flop_counter`` plus the CPU
attention kernel) on the very calls the executor makes (``adapter.embed``, ``adapter.block(l, .)``,
``readout(l, features)`` at each candidate exit layer), so per-layer heads and the shared head are
costed alike. Matrix products, convolutions and attention are counted (2 FLOPs per multiply-add);
norms, activations and softmax are not (a few percent at most).
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import nn

from ..models.base import Adapter
from .executor import Readout, readout_layers, resolve_readout
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
    from ..models.cost import flop_counter

    read = resolve_readout(adapter, readout)
    candidates = set(readout_layers(adapter, readout))

    def counted(fn):
        with flop_counter() as counter:
            out = fn()
        return out, float(counter.get_total_flops())

    state, embed = counted(lambda: adapter.embed(batch))
    n = state.batch_size
    blocks, heads = [], []
    for layer in range(1, adapter.n_layers + 1):
        state, f_block = counted(lambda: adapter.block(layer, state))
        f_head = counted(lambda: read(layer, adapter.features(state)))[1] if layer in candidates else 0.0
        blocks.append(f_block / n)
        heads.append(f_head / n)
    return LayerCosts(embed=embed / n, block=blocks, head=heads)


def _n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def param_summary(adapter: Adapter, heads: nn.Module | None = None) -> dict[str, int]:
    """Parameters of the model served with one shared head vs with one head per layer.

    Counts follow ``layertrace.models.param_counts``: ``shared_head`` is the model,
    ``per_layer_heads`` adds (L - 1) extra K x d output matrices (the paper's Table 1 convention);
    ``per_layer_heads_copied`` adds (L - 1) copies of the whole head path (norm, pooler, classifier:
    what ``--train.mode multi-head`` trains).

    Returns:
        ``{"shared_head", "per_layer_heads", "per_layer_heads_copied", "this_run"}``: ``this_run`` is
        the model plus ``heads`` when given (a trained multi-head run), else the model.
    """
    from ..models.cost import param_counts

    paper = param_counts(adapter, "paper")
    copied = param_counts(adapter, "copied_heads")
    model_params = paper["shared_head"]
    return {"shared_head": int(paper["shared_head"]), "per_layer_heads": int(paper["per_layer_heads"]),
            "per_layer_heads_copied": int(copied["per_layer_heads"]),
            "this_run": int(model_params + (_n_params(heads.heads if hasattr(heads, "heads") else heads)
                                            if heads is not None else 0))}
