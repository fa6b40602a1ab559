"""The aligned loss inside a plain Hugging Face ``Trainer``.

Two ways, same loss as ``layertrace train --train.mode aligned``:

1. the helper, for your own loop or ``Trainer`` subclass::

       loss, logits = aligned_compute_loss(model, batch, layer_weights="linear", return_logits=True)

2. the subclass, a drop-in for ``transformers.Trainer``::

       trainer = AlignedTrainer(model=model, args=TrainingArguments(...), train_dataset=...,
                                layer_weights="linear", aligned_layers="1:", alternate=False)
       trainer.train()

The model is read through its layertrace adapter (``layertrace.models.adapt``): the loss is
``sum_l lambda_l CE(R(h_l), y)`` with the model's own head ``R`` at every selected layer; the
returned logits are the last layer's (= the model's own), so ``Trainer.evaluate`` and
``compute_metrics`` see the usual predictions. Evaluation steps use the plain last-layer loss.

Limitation: the adapter runs the model's blocks directly, bypassing a ``DistributedDataParallel``
wrapper's forward, which DDP needs to synchronise gradients. ``AlignedTrainer`` therefore refuses
multi-process runs; use ``layertrace train`` under ``torchrun`` / ``accelerate launch`` for those.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import nn

from ..errors import LayertraceError
from ..layers import LayerSpec, resolve_layers
from .losses import WeightSpec, check_distill, weights_for_layers
from .objective import TrainingObjective, uses_layerwise_loss


def _unwrap(model: nn.Module) -> nn.Module:
    while hasattr(model, "module") and isinstance(model.module, nn.Module):
        model = model.module
    return model


def aligned_compute_loss(model: nn.Module, inputs: Mapping[str, Any], layer_weights: WeightSpec = "linear",
                         layers: LayerSpec = "1:", final_norm: bool = True, step: int = 2,
                         mode: str = "aligned", return_logits: bool = False,
                         _cache: dict | None = None, pooling: str = "auto",
                         distill: float = 0.0) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The aligned loss of an HF model on one batch, and the model's own (last-layer) logits.

    Args:
        model: an HF model (any family ``adapt()`` serves) or an Adapter; wrappers with ``.module`` are unwrapped.
        inputs: the batch dict the model takes, with ``labels`` (classifiers; causal LMs may omit them).
        layer_weights: linear | uniform | last | a list (see :func:`layertrace.training.layer_weights`).
        layers: a ``resolve_layers`` spec of the layers in the loss (default 1..L).
        final_norm: apply the final norm in the shared readout.
        step: optimizer step (1-based), for ``mode="aligned-alternating"`` (odd: plain CE).
        mode: ``aligned`` | ``aligned-alternating`` | ``cos-reg`` | ``standard``.
        return_logits: also compute the model's own logits (one more forward pass without gradients).
        pooling: the classifier's prediction feature (``auto`` | ``cls`` | ``mean`` | ``last``, see
            :func:`~layertrace.models.adapt`).
        distill: self-distillation weight beta in [0, 1) (``aligned`` modes; see
            :func:`~layertrace.training.aligned_loss`).

    Returns:
        ``(loss, logits)``: scalar loss with gradients; logits (B, K) / (B, T, V) of the last layer
        (detached), or ``None`` unless ``return_logits``.
    """
    from ..models import adapt

    base = _unwrap(model)
    key = (id(base), str(layer_weights), str(layers), final_norm, mode, pooling, float(distill))
    objective = (_cache or {}).get(key)
    if objective is None:
        adapter = adapt(base, final_norm=final_norm, pooling=pooling)
        chosen = resolve_layers(adapter.n_layers, layers)
        objective = TrainingObjective(adapter, mode, chosen, weights_for_layers(layer_weights, adapter.n_layers, chosen),
                                      distill=distill)
        if _cache is not None:
            _cache[key] = objective
    out = objective(inputs, step=step)
    logits = None
    if return_logits:
        with torch.no_grad():
            logits = objective.adapter.model_logits(inputs)
    return out.total, logits


try:  # transformers is a core dependency, but keep this module importable without it
    from transformers import Trainer as _Trainer
except ImportError:  # pragma: no cover
    _Trainer = object  # type: ignore[assignment,misc]


class AlignedTrainer(_Trainer):  # type: ignore[misc,valid-type]
    """``transformers.Trainer`` whose training loss is the aligned loss (single process).

    Extra keyword arguments (everything else goes to ``Trainer``):
        layer_weights: linear (default) | uniform | last | list.
        aligned_layers: ``resolve_layers`` spec of the layers in the loss (default ``"1:"``).
        alternate: odd optimizer steps plain last-layer CE, even steps aligned (the paper's ViT recipe).
        final_norm: apply the final norm in the shared readout.
        pooling: the classifier's prediction feature: auto (default) | cls | mean | last.
        distill: self-distillation weight beta in [0, 1) toward the last layer (default 0: the paper's loss).
    """

    loss_is_scaled_for_ga = False  # our loss is a per-batch mean: Trainer divides by accumulation steps

    def __init__(self, *args: Any, layer_weights: WeightSpec = "linear", aligned_layers: LayerSpec = "1:",
                 alternate: bool = False, final_norm: bool = True, pooling: str = "auto", distill: float = 0.0,
                 **kwargs: Any):
        super().__init__(*args, **kwargs)
        if self.args.world_size > 1:
            raise LayertraceError(
                "AlignedTrainer runs in one process only (the adapter bypasses DDP's forward); "
                "for several processes use 'torchrun ... -m layertrace.cli.main train'"
            )
        self.layer_weights = layer_weights
        self.aligned_layers = aligned_layers
        self.alternate = alternate
        self.final_norm = final_norm
        self.pooling = pooling
        self.distill = check_distill(distill)
        self._objectives: dict = {}

    def compute_loss(self, model: nn.Module, inputs: dict[str, Any], return_outputs: bool = False,
                     num_items_in_batch: Any = None):
        if not model.training:  # evaluation: the model's own loss and logits
            return super().compute_loss(model, inputs, return_outputs=return_outputs,
                                        num_items_in_batch=num_items_in_batch)
        step = int(self.state.global_step) + 1
        mode = "aligned-alternating" if self.alternate else "aligned"
        loss, logits = aligned_compute_loss(model, inputs, self.layer_weights, self.aligned_layers,
                                            self.final_norm, step=step, mode=mode, return_logits=return_outputs,
                                            _cache=self._objectives, pooling=self.pooling, distill=self.distill)
        if return_outputs:
            return loss, {"logits": logits}
        return loss


__all__ = ["aligned_compute_loss", "AlignedTrainer", "uses_layerwise_loss"]
