"""The training objective of each mode as one ``nn.Module`` (what DDP / Accelerate wrap).

Modes (PAPER.md section 5):

==========================  ==========================================================================
``standard``                CE of the model's own logits (= R(h_L))
``aligned``                 ``sum_l lambda_l CE(R(h_l), y)`` over the selected layers, one shared head
                            (with ``distill`` beta: ``(1 - beta) CE + beta KL(p_L || p_l)`` below L)
``aligned-alternating``     odd steps ``standard``, even steps ``aligned`` (the paper's ViT recipe)
``multi-head``              ``sum_l lambda_l CE(R_l(h_l), y)`` with a separate head per layer
``cos-reg``                 ``CE(R(h_L), y) + beta sum_l lambda_l (1 - cos(h_l, h_L))``
==========================  ==========================================================================

``alternate=True`` gives ``multi-head`` and ``cos-reg`` the same odd/even schedule.
Steps count from 1: step 1 is odd (plain CE), step 2 even (the layer-wise loss), and so on.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from torch import Tensor, nn

from ..errors import LayertraceError, did_you_mean
from ..models.layer_readout import LayerReadout
from ..run_folder import MODES  # the one mode list (also layertrace.training.MODES)
from .heads import PerLayerHeads
from .losses import (LayerLosses, aligned_loss, causal_lm_labels, check_distill, cosine_regularized_loss,
                     readout_cross_entropy)


def check_mode(mode: str) -> str:
    """Validate a mode name (one-line error with a suggestion)."""
    if mode not in MODES:
        raise LayertraceError(f"unknown training mode {mode!r}{did_you_mean(mode, MODES)}; use one of {', '.join(MODES)}")
    return mode


def check_mode_distill(mode: str, distill: float) -> float:
    """``distill`` as a float in [0, 1) for a mode whose layer-wise loss it can weight (aligned,
    aligned-alternating, multi-head), or a one-line error naming the fix."""
    beta = check_distill(distill)
    if beta and mode not in ("aligned", "aligned-alternating", "multi-head"):
        raise LayertraceError(f"distill={beta:g} applies to the aligned and multi-head losses, not to mode "
                              f"{mode!r}; drop train.distill or pick one of those modes")
    return beta


def uses_layerwise_loss(mode: str, step: int, alternate: bool = False) -> bool:
    """Whether optimizer step ``step`` (1-based) trains with the layer-wise loss of ``mode``.

    ``standard`` never does; ``aligned-alternating`` (and any mode with ``alternate``) only on even
    steps; ``aligned``, ``multi-head``, ``cos-reg`` on every step.
    """
    if mode == "standard":
        return False
    if mode == "aligned-alternating" or alternate:
        return step % 2 == 0
    return True


class TrainingObjective(nn.Module):
    """The loss of one training mode over an adapter (and per-layer heads for ``multi-head``).

    Args:
        adapter: the model adapter (its ``head`` is the shared readout).
        mode: one of :data:`MODES`.
        layers: the layers taking part (indices in 0..L, resolved by ``resolve_layers``); must
            contain L for every mode but ``standard``... L is always added where a mode needs it.
        weights: one weight per entry of ``layers`` (sum 1).
        heads: :class:`PerLayerHeads` for ``multi-head`` (created when omitted).
        cos_beta: beta of ``cos-reg``.
        alternate: odd/even schedule for ``multi-head`` / ``cos-reg`` too.
        lm_checkpoint: causal LMs apply the head layer by layer under activation checkpointing.
        distill: ``aligned`` / ``multi-head``: self-distillation weight (:func:`aligned_loss`).

    ``forward(batch, step)`` returns :class:`LayerLosses`; ``per_layer`` is over ``layers`` for
    layer-wise steps and a single entry (layer L) for plain CE steps.
    """

    def __init__(
        self,
        adapter: nn.Module,
        mode: str,
        layers: Sequence[int],
        weights: Sequence[float],
        heads: PerLayerHeads | None = None,
        cos_beta: float = 1.0,
        alternate: bool = False,
        lm_checkpoint: bool = True,
        distill: float = 0.0,
    ):
        super().__init__()
        self.adapter = adapter
        self.mode = check_mode(mode)
        self.layers = list(layers)
        self.weights = [float(w) for w in weights]
        if len(self.weights) != len(self.layers):
            raise LayertraceError(f"{len(self.weights)} layer weights for {len(self.layers)} layers {self.layers}")
        if mode == "multi-head" and heads is None:
            heads = PerLayerHeads(adapter, self.layers)
        self.heads = heads if mode == "multi-head" else None
        self.cos_beta = float(cos_beta)
        self.alternate = bool(alternate)
        self.lm_checkpoint = bool(lm_checkpoint)
        self.distill = check_mode_distill(mode, distill)

    @property
    def is_causal_lm(self) -> bool:
        return getattr(self.adapter, "kind", "classifier") == "causal_lm"

    def labels(self, batch: Mapping[str, Any]) -> Tensor:
        labels = causal_lm_labels(dict(batch)) if self.is_causal_lm else batch.get("labels")
        if labels is None:
            raise LayertraceError("a classifier training batch needs 'labels'; the data loader must provide them")
        return labels.to(self.adapter.device)

    # ------------------------------------------------------------------ the losses
    def standard_loss(self, batch: Mapping[str, Any]) -> LayerLosses:
        """CE of the model's own logits (R(h_L))."""
        ce = readout_cross_entropy(self.adapter.model_logits(batch), self.labels(batch))
        return LayerLosses(total=ce, per_layer=ce.reshape(1))

    def layerwise_loss(self, batch: Mapping[str, Any]) -> LayerLosses:
        """The mode's layer-wise loss (aligned / multi-head: :func:`aligned_loss`; cos-reg)."""
        labels = self.labels(batch)
        adapter = self.adapter
        n_layers = adapter.n_layers
        if self.mode == "cos-reg":
            layers = sorted(set(self.layers) | {n_layers})
            feats, state = adapter.layer_features(batch, layers)
            last_h = feats[layers.index(n_layers)]
            pooled = [adapter.pool(h) for h in feats]
            chosen = [pooled[layers.index(l)] for l in self.layers]
            mask = adapter.token_mask(state) if self.is_causal_lm else None
            return cosine_regularized_loss(adapter.readout(last_h), labels, chosen, adapter.pool(last_h),
                                           self.weights, beta=self.cos_beta, mask=mask)
        feats, _ = adapter.layer_features(batch, self.layers)
        return aligned_loss((self.readout, feats), labels, self.weights, layers=self.layers,
                            use_checkpoint=self.lm_checkpoint, distill=self.distill)

    @property
    def readout(self) -> LayerReadout:
        """What reads each layer: the shared head, or the per-layer heads of ``multi-head``."""
        return LayerReadout.of(self.adapter, self.heads)

    def forward(self, batch: Mapping[str, Any], step: int = 2) -> LayerLosses:
        """The loss of optimizer step ``step`` (1-based; decides odd/even for alternating modes)."""
        if uses_layerwise_loss(self.mode, step, self.alternate):
            return self.layerwise_loss(batch)
        return self.standard_loss(batch)
