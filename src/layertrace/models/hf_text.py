"""Hugging Face BERT-family sequence classifiers (post-LN encoders read at [CLS]).

=====================================  ===============  ==================================================
model class                            backbone         readout(h), h = [CLS] (B, d)
=====================================  ===============  ==================================================
BertForSequenceClassification          ``bert``         classifier(dropout(tanh(pooler.dense(h))))
(incl. MiniLM checkpoints)
RobertaForSequenceClassification,      ``roberta``      out_proj(dropout(tanh(dense(dropout(h)))))
XLMRobertaForSequenceClassification,                    (the model's ``RobertaClassificationHead``)
CamembertForSequenceClassification
ElectraForSequenceClassification       ``electra``      out_proj(dropout(gelu(dense(dropout(h)))))
DistilBertForSequenceClassification    ``distilbert``   classifier(dropout(relu(pre_classifier(h))))
=====================================  ===============  ==================================================

These encoders are post-LN (every block ends with its own LayerNorm) and have no final norm, so
``final_norm`` is accepted and has no effect. Dropout modules are the model's own: inactive in
``eval()``, active in ``train()`` exactly as in the model's forward.

Batches are the dicts the model takes: ``input_ids`` (B, T) (or ``inputs_embeds``), optional
``attention_mask`` (B, T), ``token_type_ids``, ``position_ids``. The padding mask is turned into the
layers' mask as the model does (``create_bidirectional_mask``) and carried per sample, so padding
never changes a sample's result and ``State.select`` keeps masks aligned with samples.
"""

from __future__ import annotations

from typing import Any, Mapping

from torch import Tensor, nn

from ..errors import LayertraceError
from .base import State
from .hf_common import HFEncoderAdapter, classifier_num_labels, encoder_state, padding_mask_from


class PoolerThenClassifier(nn.Module):
    """BERT readout: ``classifier(dropout(pooler(h)))`` with the model's own pooler (dense + tanh).

    h (..., d) -> logits (..., K).
    """

    def __init__(self, pooler: nn.Module | None, dropout: nn.Module, classifier: nn.Module):
        super().__init__()
        self.pooler = pooler
        self.dropout = dropout
        self.classifier = classifier

    def forward(self, h: Tensor) -> Tensor:
        if self.pooler is not None:
            h = self.pooler.activation(self.pooler.dense(h))
        return self.classifier(self.dropout(h))


class TokenHead(nn.Module):
    """Apply a head that reads ``features[:, 0, :]`` (RoBERTa / ELECTRA style) to h (B, d)."""

    def __init__(self, head: nn.Module):
        super().__init__()
        self.head = head

    def forward(self, h: Tensor) -> Tensor:
        return self.head(h.unsqueeze(-2))


class DistilBertHead(nn.Module):
    """DistilBERT readout: ``classifier(dropout(relu(pre_classifier(h))))``; h (..., d) -> (..., K)."""

    def __init__(self, pre_classifier: nn.Module, dropout: nn.Module, classifier: nn.Module):
        super().__init__()
        self.pre_classifier = pre_classifier
        self.dropout = dropout
        self.classifier = classifier

    def forward(self, h: Tensor) -> Tensor:
        return self.classifier(self.dropout(nn.functional.relu(self.pre_classifier(h))))


# model class -> (backbone attribute, family name)
_TEXT_CLASSES: dict[str, tuple[str, str]] = {
    "BertForSequenceClassification": ("bert", "bert"),
    "RobertaForSequenceClassification": ("roberta", "roberta"),
    "XLMRobertaForSequenceClassification": ("roberta", "roberta"),
    "CamembertForSequenceClassification": ("roberta", "roberta"),
    "ElectraForSequenceClassification": ("electra", "electra"),
    "DistilBertForSequenceClassification": ("distilbert", "distilbert"),
}


class BertFamilyAdapter(HFEncoderAdapter):
    """Adapter of the HF BERT-family ``*ForSequenceClassification`` models listed in this module.

    Args:
        model: the HF model (unmodified).
        final_norm: accepted for a uniform interface; these post-LN encoders have no final norm.
    """

    def __init__(self, model: nn.Module, final_norm: bool = True):
        super().__init__()
        cls_name = type(model).__name__
        attr, family = next(
            (v for k, v in _TEXT_CLASSES.items() if any(c.__name__ == k for c in type(model).__mro__)),
            (None, None),
        )
        if attr is None:
            raise LayertraceError(f"BertFamilyAdapter does not serve {cls_name}; use layertrace.models.adapt(model)")
        self.model = model
        if getattr(model.config, "is_decoder", False):
            raise LayertraceError(
                f"{cls_name} is configured as a decoder (config.is_decoder=True); layertrace reads it as an "
                f"encoder classifier only: load it with is_decoder=False"
            )
        self.family = family
        backbone = getattr(model, attr)
        layers = backbone.transformer.layer if family == "distilbert" else backbone.encoder.layer
        self._ref(config=model.config, backbone=backbone, layers=layers)
        self.n_layers = len(self.layers)
        self.hidden_size = int(self.config.dim if family == "distilbert" else self.config.hidden_size)
        self.num_outputs = classifier_num_labels(model)
        self.kind = "classifier"
        self.final_norm = final_norm  # no final norm in post-LN encoders: a no-op
        if family == "bert":
            self.head = PoolerThenClassifier(self.backbone.pooler, model.dropout, model.classifier)
        elif family == "distilbert":
            self.head = DistilBertHead(model.pre_classifier, model.dropout, model.classifier)
        else:  # roberta, electra: the model's classification head reads token 0 of (B, T, d)
            self.head = TokenHead(model.classifier)

    def embed(self, batch: Mapping[str, Any]) -> State:
        """Layer 0: the embedding output (B, T, d) (after ELECTRA's projection when it has one)."""
        if "input_ids" not in batch and "inputs_embeds" not in batch:
            raise LayertraceError(
                f"{self.family} batch needs input_ids (B, T) (or inputs_embeds); it has {sorted(batch)}"
            )
        inputs = self.model_inputs(batch)
        input_ids = inputs.get("input_ids")
        embeds = inputs.get("inputs_embeds")
        position_ids = inputs.get("position_ids")
        emb = self.backbone.embeddings
        if self.family == "distilbert":
            hidden = emb(input_ids, embeds, position_ids)
        else:
            hidden = emb(input_ids=input_ids, token_type_ids=inputs.get("token_type_ids"),
                         position_ids=position_ids, inputs_embeds=embeds)
            if hasattr(self.backbone, "embeddings_project"):  # ELECTRA with embedding_size != hidden_size
                hidden = self.backbone.embeddings_project(hidden)
        return encoder_state(self.config, hidden, padding_mask_from(inputs))

    def features(self, state: State) -> Tensor:
        """[CLS] / <s>: (B, d)."""
        return state.hidden[:, 0]


def _register() -> None:
    from .registry import register

    register(*_TEXT_CLASSES)(lambda model, final_norm=True: BertFamilyAdapter(model, final_norm=final_norm))


_register()
