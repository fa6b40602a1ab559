"""Hugging Face vision transformers: ViT and DeiT image classifiers (pre-LN, final layernorm).

==========================================  =====================  ===============================
model class                                 h = features(state)    readout(h)
==========================================  =====================  ===============================
ViTForImageClassification                   [CLS] (B, d)           classifier(layernorm(h))
DeiTForImageClassification                  [CLS] (B, d)           classifier(layernorm(h))
DeiTForImageClassificationWithTeacher       [CLS], [DIST] (B,2,d)  (cls_classifier(n[:, 0]) +
                                                                    distillation_classifier(n[:, 1])) / 2
                                                                    with n = layernorm(h)
==========================================  =====================  ===============================

``final_norm=False`` skips the final layernorm (``n = h``). For the DeiT model with a teacher the
readout is exactly the HF inference path (the average of both heads); ``pool(h)`` (the feature
similarity metrics see) is the mean of the two tokens, the vector whose two halves the averaged
linear heads read.

The embeddings, blocks and masks are the model's own modules, called as ``ViTModel.forward`` calls
them (``embeddings(pixel_values, interpolate_pos_encoding=...)``, then ``layer(hidden, mask)``).
"""

from __future__ import annotations

from typing import Any, Mapping

from torch import Tensor, nn

from .base import State, check_batch_keys
from .generic import NormThenHead
from .hf_common import HFEncoderAdapter, classifier_num_labels, encoder_state, padding_mask_from
from .registry import register


class TwoTokenHead(nn.Module):
    """DeiT-with-teacher readout: norm both tokens, apply each head to its token, average.

    Input h (..., 2, d) with [CLS] at index 0 and the distillation token at 1; output (..., K).
    """

    def __init__(self, norm: nn.Module | None, cls_head: nn.Module, distillation_head: nn.Module,
                 final_norm: bool = True):
        super().__init__()
        self.norm = norm if (norm is not None and final_norm) else nn.Identity()
        self.cls_head = cls_head
        self.distillation_head = distillation_head

    def forward(self, h: Tensor) -> Tensor:
        n = self.norm(h)
        return (self.cls_head(n[..., 0, :]) + self.distillation_head(n[..., 1, :])) / 2


class ViTFamilyAdapter(HFEncoderAdapter):
    """Adapter of HF ``ViTForImageClassification`` and the DeiT image classifiers.

    Args:
        model: the HF model (unmodified; its parameters are the adapter's).
        final_norm: apply the final layernorm in the readout (default).

    Batches are the dicts the model takes: ``pixel_values`` (B, C, H, W); optional
    ``interpolate_pos_encoding`` (bool) and ``attention_mask`` (B, T) over tokens, passed on as the
    model passes them.
    """

    def __init__(self, model: nn.Module, final_norm: bool = True):
        super().__init__()
        name = type(model).__name__
        self.model = model
        backbone = model.deit if hasattr(model, "deit") else model.vit
        self._ref(config=model.config, backbone=backbone, layers=backbone.layers)
        self.family = "deit" if hasattr(model, "deit") else "vit"
        self.n_layers = len(self.layers)
        self.hidden_size = int(self.config.hidden_size)
        self.num_outputs = classifier_num_labels(model)
        self.kind = "classifier"
        self.final_norm = final_norm
        self.two_tokens = name == "DeiTForImageClassificationWithTeacher"
        norm = self.backbone.layernorm
        if self.two_tokens:
            self.head = TwoTokenHead(norm, model.cls_classifier, model.distillation_classifier, final_norm)
        else:
            self.head = NormThenHead(norm, model.classifier, final_norm)

    def embed(self, batch: Mapping[str, Any]) -> State:
        """Layer 0: patch + position embeddings with [CLS] (and DeiT's distillation token); (B, T, d)."""
        check_batch_keys(batch, ["pixel_values"], self.family)
        inputs = self.model_inputs(batch)
        pixel_values = inputs["pixel_values"]
        expected = self.backbone.embeddings.patch_embeddings.projection.weight.dtype
        if pixel_values.dtype != expected:  # as ViTModel.forward does
            pixel_values = pixel_values.to(expected)
        interpolate = bool(inputs.get("interpolate_pos_encoding") or False)
        hidden = self.backbone.embeddings(pixel_values, interpolate_pos_encoding=interpolate)
        return encoder_state(self.config, hidden, padding_mask_from(inputs))

    def features(self, state: State) -> Tensor:
        """[CLS] (B, d), or [CLS] and distillation token (B, 2, d) for DeiT with teacher."""
        return state.hidden[:, :2] if self.two_tokens else state.hidden[:, 0]

    def pool(self, h: Tensor) -> Tensor:
        """(B, d): the token itself, or the mean of DeiT's two tokens."""
        return h.mean(dim=-2) if self.two_tokens else h


@register("ViTForImageClassification", "DeiTForImageClassification", "DeiTForImageClassificationWithTeacher")
def _vit_factory(model: nn.Module, final_norm: bool = True) -> ViTFamilyAdapter:
    return ViTFamilyAdapter(model, final_norm=final_norm)

