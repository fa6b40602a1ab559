"""What the discovery adapter (:mod:`layertrace.models.hf_auto`) finds in a Hugging Face model besides its
blocks: the block stack, why a model is refused, its kind, and its head (:class:`HeadSpec`: final
norm, prediction feature, tail module); plus the token-position helpers of padded batches."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
from torch import Tensor, nn

from ..errors import LayertraceError
from .layer_readout import NormThenHead

# Final norms, looked up (in this order) under the model and its backbone.
NORM_NAMES = ("norm", "ln_f", "final_layernorm", "final_layer_norm", "decoder.final_layer_norm", "norm_f",
              "final_norm", "layernorm", "post_layernorm", "text_model.final_layer_norm",
              "vision_model.post_layernorm")
# model_type -> why it cannot be served (a one-line refusal).
REFUSED = {
    "funnel": "Funnel pools the sequence between blocks (its layers change the token count)",
    "gemma3n": "Gemma 3n mixes AltUp streams and per-layer inputs between its blocks",
    "gemma3n_text": "Gemma 3n mixes AltUp streams and per-layer inputs between its blocks",
    "reformer": "Reformer's reversible blocks carry two streams, not one residual stream",
    "xlnet": "XLNet's two-stream attention is not one stack of residual blocks",
    "transfo-xl": "Transformer-XL's memory segments are not one stack of residual blocks",
}


def _get(obj: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def find_blocks(model: nn.Module) -> nn.ModuleList:
    """The model's stack of blocks: the ``nn.ModuleList`` with the most parameters."""
    best, best_n = None, 0
    for _, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) > 0:
            n = sum(p.numel() for p in module.parameters())
            if n > best_n:
                best, best_n = module, n
    if best is None:
        raise LayertraceError(f"{type(model).__name__} has no nn.ModuleList of blocks; wrap it with "
                              f"layertrace.models.GenericAdapter(model, embed=..., blocks=..., head=...)")
    return best


def refusal(model: nn.Module) -> str | None:
    """Why ``model`` cannot be served by discovery (``None`` when it may be)."""
    cfg = getattr(model, "config", None)
    mt = str(getattr(cfg, "model_type", ""))
    if mt in REFUSED:
        return REFUSED[mt]
    if getattr(cfg, "is_encoder_decoder", False):
        return "encoder-decoder models have two stacks; adapt one of them (e.g. model.get_encoder()) with GenericAdapter"
    depths = getattr(cfg, "depths", None)
    hidden_sizes = getattr(cfg, "hidden_sizes", None)
    if (isinstance(depths, (list, tuple)) and len(depths) > 1) or (
            isinstance(hidden_sizes, (list, tuple)) and len(set(hidden_sizes)) > 1):
        return "its stages do not share one width (hierarchical model: Swin, PVT, Hiera, ConvNeXt style)"
    return None


def positions_from_mask(attention_mask: Tensor, n_new: int) -> Tensor:
    """Position ids of the last ``n_new`` tokens from a (B, past + n_new) 0/1 mask.

    Real tokens are numbered 0, 1, ... within each row (pads get 0): the convention of HF
    ``generate`` (``cumsum(mask) - 1``). Returns (B, n_new) long.
    """
    mask = attention_mask.long()
    pos = mask.cumsum(-1) - 1
    pos = pos.masked_fill(mask == 0, 0)
    return pos[:, -n_new:]


def last_real_index(mask: Tensor) -> Tensor:
    """(B,) index of each row's last real token in a (B, T) 0/1 mask (T - 1 under left padding)."""
    t = mask.shape[1]
    return t - 1 - mask.flip(1).long().argmax(dim=1)


# ---------------------------------------------------------------------------------------- heads
class TokenHead(nn.Module):
    """Apply a head that reads ``features[:, 0, :]`` (RoBERTa / BERT pooler style) to h (B, d)."""

    def __init__(self, head: nn.Module):
        super().__init__()
        self.head = head

    def forward(self, h: Tensor) -> Tensor:
        return self.head(h.unsqueeze(-2))


class Chain(nn.Module):
    """The model's own modules applied one after the other (no parameters of its own)."""

    def __init__(self, *steps: nn.Module | None):
        super().__init__()
        self.steps = nn.ModuleList([s for s in steps if s is not None])

    def forward(self, h: Tensor) -> Tensor:
        for step in self.steps:
            h = step(h)
        return h


class Relu(nn.Module):
    def forward(self, h: Tensor) -> Tensor:
        return torch.relu(h)


class ConcatTokens(nn.Module):
    """(..., k, d) -> (..., k * d): DINOv2 reads [CLS] and the patch mean side by side."""

    def forward(self, h: Tensor) -> Tensor:
        return h.flatten(-2)


class TwoTokenAverage(nn.Module):
    """DeiT-with-teacher readout: each head on its token, averaged; (..., 2, d) -> (..., K)."""

    def __init__(self, cls_head: nn.Module, distillation_head: nn.Module):
        super().__init__()
        self.cls_head = cls_head
        self.distillation_head = distillation_head

    def forward(self, h: Tensor) -> Tensor:
        return (self.cls_head(h[..., 0, :]) + self.distillation_head(h[..., 1, :])) / 2


class LMReadout(NormThenHead):
    """Causal-LM readout: final norm (+ OPT's ``project_out``) -> LM head -> the config's logit transform.

    ``scale`` multiplies the logits (Cohere ``logit_scale``; Granite ``1 / logits_scaling``) and
    ``softcap`` applies Gemma 2/3's ``tanh(x / cap) * cap``. h (..., d) -> (..., V).
    """

    def __init__(self, norm: nn.Module | None, head: nn.Module, final_norm: bool = True,
                 project: nn.Module | None = None, scale: float | None = None, softcap: float | None = None):
        super().__init__(norm, head, final_norm)
        self.project = project if project is not None else nn.Identity()
        self.scale = scale
        self.softcap = softcap

    def forward(self, h: Tensor) -> Tensor:
        logits = self.head(self.project(self.norm(h)))
        if self.scale is not None:
            logits = logits * self.scale
        if self.softcap is not None:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits


@dataclass
class HeadSpec:
    """How the model reads its prediction from the last hidden state.

    Attributes:
        norm: the final norm (per token), or ``None``.
        select: the model's own prediction feature: ``cls``, ``last``, ``mean``, ``patch_mean``
            (mean over tokens after ``skip``), ``cls_patch_mean`` (DINOv2), ``two`` (DeiT with
            teacher), ``eos`` (CLIP text), ``final_pos`` (SigLIP text), ``all`` (causal LMs).
        norm_first: the model normalises tokens before pooling them (the norm is then part of the
            feature, not of the readout, under ``pooling="auto"``).
        tail: module mapping the pooled (normalised) feature to the output.
        output: attribute of the model output that ``tail`` reproduces (``logits``, ``image_embeds``...).
        skip: leading tokens ``patch_mean`` leaves out ([CLS] and registers).
        num_outputs: K (classes / vocabulary / embedding width).
    """

    norm: nn.Module | None
    select: str
    tail: nn.Module
    output: str = "logits"
    norm_first: bool = False
    skip: int = 1
    num_outputs: int = 0
    lm_extra: dict = field(default_factory=dict)  # causal LMs: LMReadout's project / scale / softcap


def _final_norm(model: nn.Module, names: Sequence[str] = NORM_NAMES) -> nn.Module | None:
    base = getattr(model, "base_model", model)
    for root in (base, model):
        for name in names:
            m = _get(root, name)
            if isinstance(m, nn.Module) and not isinstance(m, (nn.ModuleList, nn.Identity)):
                return m
    return None


def _out_features(m: nn.Module) -> int:
    linears = [x for x in m.modules() if isinstance(x, nn.Linear)]
    if not linears:
        raise LayertraceError(f"cannot tell the output width of head {type(m).__name__}")
    return int(linears[-1].out_features)


def _causal_spec(model: nn.Module) -> HeadSpec:
    cfg = model.config
    head = model.get_output_embeddings()
    if head is None:
        raise LayertraceError(f"{type(model).__name__} has no output embeddings (get_output_embeddings() is None)")
    scale = None
    if getattr(cfg, "logit_scale", None) is not None and cfg.model_type.startswith("cohere"):
        scale = float(cfg.logit_scale)
    if getattr(cfg, "logits_scaling", None) not in (None, 1, 1.0):
        scale = 1.0 / float(cfg.logits_scaling)
    softcap = getattr(cfg, "final_logit_softcapping", None)
    project = _get(model, "model.decoder.project_out")  # OPT with word_embed_proj_dim != hidden
    return HeadSpec(norm=_final_norm(model), select="all", tail=head, num_outputs=int(head.weight.shape[0]),
                    lm_extra=dict(project=project, scale=scale, softcap=float(softcap) if softcap else None))


def _classifier_spec(model: nn.Module) -> HeadSpec:
    """The head table of ``*ForSequenceClassification`` / ``*ForImageClassification`` models."""
    name = type(model).__name__
    cfg = model.config
    base = getattr(model, "base_model", model)
    mt = str(cfg.model_type)
    k = int(cfg.num_labels)
    if name.endswith("ForImageClassificationWithTeacher"):
        return HeadSpec(_final_norm(model), "two", TwoTokenAverage(model.cls_classifier, model.distillation_classifier),
                        num_outputs=k)
    if name.endswith("ForImageClassification"):
        clf = model.classifier
        if mt.startswith("dinov2"):
            skip = 1 + int(getattr(cfg, "num_register_tokens", 0) or 0)
            return HeadSpec(_final_norm(model), "cls_patch_mean", Chain(ConcatTokens(), clf), norm_first=True,
                            skip=skip, num_outputs=k)
        if mt in ("clip",):
            return HeadSpec(None, "patch_mean", clf, num_outputs=k)
        if mt in ("ijepa", "siglip", "siglip_vision_model"):
            return HeadSpec(_final_norm(model), "mean", clf, norm_first=True, num_outputs=k)
        pooler = getattr(base, "pooler", None)
        if mt in ("beit", "data2vec-vision") and getattr(cfg, "use_mean_pooling", False):
            return HeadSpec(pooler.layernorm, "patch_mean", clf, num_outputs=k)
        return HeadSpec(_final_norm(model), "cls", clf, num_outputs=k)
    # sequence classifiers
    if hasattr(model, "score"):  # decoder classifiers: score(norm(h)) at the last non-pad token
        return HeadSpec(_final_norm(model), "last", model.score, num_outputs=k)
    if mt == "modernbert":
        tail = Chain(model.head, model.drop, model.classifier)
        mean = cfg.classifier_pooling == "mean"
        return HeadSpec(_final_norm(model), "mean" if mean else "cls", tail, norm_first=mean, num_outputs=k)
    if hasattr(model, "pre_classifier"):  # DistilBERT
        return HeadSpec(None, "cls", Chain(model.pre_classifier, Relu(), model.dropout, model.classifier),
                        num_outputs=k)
    clf = model.classifier
    if not isinstance(clf, nn.Linear):  # RoBERTa-style classification head reading features[:, 0]
        return HeadSpec(None, "cls", TokenHead(clf), num_outputs=k)
    dropout = getattr(model, "dropout", None)
    pooler = getattr(model, "pooler", None)  # DeBERTa's ContextPooler lives on the task model
    if pooler is None:
        pooler = getattr(base, "pooler", None)
        if isinstance(pooler, nn.Linear):  # ALBERT: pooler_activation(pooler(h))
            pooler = Chain(pooler, base.pooler_activation)
        elif pooler is not None:
            pooler = TokenHead(pooler)
    else:
        pooler = TokenHead(pooler)
    return HeadSpec(None, "cls", Chain(pooler, dropout, clf), num_outputs=k)


def _encoder_spec(model: nn.Module) -> HeadSpec:
    """Headless encoders: the readout reproduces the model's pooled / projected output."""
    name = type(model).__name__
    cfg = model.config
    mt = str(cfg.model_type)
    if mt.startswith("clip") and "Text" in name:
        proj = getattr(model, "text_projection", None)
        norm = _final_norm(model, ("text_model.final_layer_norm", "final_layer_norm"))
        return HeadSpec(norm, "eos", Chain(proj), output="text_embeds" if proj is not None else "pooler_output",
                        num_outputs=_out_features(proj) if proj is not None else int(cfg.hidden_size))
    if mt.startswith("clip") and "Vision" in name:
        proj = getattr(model, "visual_projection", None)
        norm = _final_norm(model, ("vision_model.post_layernorm", "post_layernorm"))
        return HeadSpec(norm, "cls", Chain(proj), output="image_embeds" if proj is not None else "pooler_output",
                        num_outputs=_out_features(proj) if proj is not None else int(cfg.hidden_size))
    if mt.startswith("siglip") and "Text" in name:
        tm = getattr(model, "text_model", model)
        return HeadSpec(tm.final_layer_norm, "final_pos", tm.head, output="pooler_output",
                        num_outputs=_out_features(tm.head))
    if mt.startswith("siglip") and "Vision" in name:
        vm = getattr(model, "vision_model", model)
        if getattr(vm, "head", None) is not None:
            return HeadSpec(vm.post_layernorm, "all_tokens", vm.head, output="pooler_output", norm_first=True,
                            num_outputs=int(cfg.hidden_size))
        return HeadSpec(vm.post_layernorm, "cls", nn.Identity(), output="last_hidden_state_cls",
                        num_outputs=int(cfg.hidden_size))
    pooler = getattr(model, "pooler", None)
    norm = _final_norm(model, ("layernorm", "norm", "final_layer_norm", "ln_f"))
    width = int(getattr(cfg, "hidden_size", 0) or 0)
    if pooler is not None:  # BertModel / ViTModel: the pooler reads token 0
        return HeadSpec(norm, "cls", TokenHead(pooler), output="pooler_output", num_outputs=width)
    return HeadSpec(norm, "cls", nn.Identity(), output="last_hidden_state_cls", num_outputs=width)


def model_kind(model: nn.Module) -> str:
    """``causal_lm``, ``classifier`` or ``encoder`` (headless), from the class name."""
    name = type(model).__name__
    if name.endswith(("ForCausalLM", "LMHeadModel")):
        return "causal_lm"
    if name.endswith(("ForSequenceClassification", "ForImageClassification", "ForImageClassificationWithTeacher")):
        return "classifier"
    if name.endswith(("Model", "ModelWithProjection")) and "For" not in name:
        return "encoder"
    raise LayertraceError(
        f"{name} is neither a causal LM, a sequence / image classifier nor a bare encoder; load it as one of "
        f"those (e.g. AutoModelForSequenceClassification) or wrap it with layertrace.models.GenericAdapter")


def _output_of(out: Any, name: str) -> Tensor:
    if name == "last_hidden_state_cls":
        return out.last_hidden_state[:, 0]
    value = getattr(out, name, None)
    if value is None:
        raise LayertraceError(f"the model output has no {name!r}")
    return value
