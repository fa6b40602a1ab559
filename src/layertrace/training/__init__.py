"""Aligned training and its baselines (PAPER.md section 5; user guide: docs/training.md).

Losses (pure functions over per-layer features and the model's own shared readout):

    layer_weights(name, L)                    linear 2l/(L(L+1)) | uniform | last | list -> L weights
    aligned_loss(per_layer_logits, labels, w) -> LayerLosses(total, per_layer)
    aligned_loss(..., distill=beta)           + self-distillation: (1-beta) CE + beta KL(p_L || p_l) below L
    aligned_loss_layerwise(adapter, feats, labels, w)   causal LMs: head layer by layer, checkpointed
    cosine_regularized_loss(...)              the paper's rejected baseline
    PerLayerHeads / load_heads(run_dir)       the multi-exit baseline (one head per layer)

Training:

    train_from_config(cfg: TrainConfig, out_dir) -> RunSummary      (``layertrace train``)
    fit(adapter, batches, cfg.train, run_dir, eval_batches=...)      the loop on your own data
    AlignedTrainer / aligned_compute_loss                            HF ``Trainer`` interop

Importing this package does not import transformers or accelerate (they are loaded when a run
starts).
"""

from __future__ import annotations

import importlib
from typing import Any

from .heads import PerLayerHeads, load_heads, save_heads
from .losses import (
    LayerLosses,
    aligned_loss,
    aligned_loss_layerwise,
    cosine_regularized_loss,
    distill_kl,
    layer_weights,
    per_layer_cross_entropy,
    weights_for_layers,
)
from .objective import MODES, TrainingObjective

_LAZY = {
    "TrainConfig": "layertrace.training.config",
    "fit": "layertrace.training.loop",
    "TrainState": "layertrace.training.loop",
    "train_from_config": "layertrace.training.run",
    "RunSummary": "layertrace.training.run",
    "AlignedTrainer": "layertrace.training.hf_trainer",
    "aligned_compute_loss": "layertrace.training.hf_trainer",
    "ImageAugment": "layertrace.training.augment",
    "TensorBatches": "layertrace.training.batches",
    "evaluate_layerwise": "layertrace.training.evaluate",
}

__all__ = [
    "layer_weights", "weights_for_layers", "aligned_loss", "aligned_loss_layerwise", "cosine_regularized_loss",
    "per_layer_cross_entropy", "distill_kl", "LayerLosses", "PerLayerHeads", "load_heads", "save_heads", "MODES",
    "TrainingObjective", *_LAZY,
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'layertrace.training' has no attribute {name!r}")
