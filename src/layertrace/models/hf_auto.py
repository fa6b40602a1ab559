"""Any Hugging Face transformer, found by introspection: the discovery adapter.

How it works (docs/models.md has the long form):

1. **Blocks.** The stack of residual blocks is the ``nn.ModuleList`` holding the most parameters
   (``model.layers``, ``encoder.layer``, ``transformer.h``, ALBERT's ``albert_layer_groups``, ...).
   Layer l is the l-th *call* of one of its modules in the model's forward, so ALBERT's shared
   layer group called L times gives L layers.
2. **Arguments.** ``embed(batch)`` runs the model's own forward with every block's ``forward``
   temporarily replaced by a recorder (restored in ``finally``): the recorder stores the arguments
   the model passes that block (masks, position ids, rotary tables, ALiBi, relative-position
   embeddings, the KV cache, per-layer sliding-window / global masks) and returns its input
   unchanged; the last one stops the forward. Layer 0 is the hidden state the model passes its
   first block, so whatever the model computes before its blocks (embedding scale, projection,
   pre-norm) is part of the embedding step. ``embed`` therefore costs about the embedding step.
   Cached decoding steps of a causal LM skip the replay once it has been seen (:class:`DecodeStep`:
   the embedding, masks, positions and rotary tables derived directly, matched bitwise against one
   replay per case; families it cannot derive keep the replay; ``adapter.fast_decode = False`` turns it off).
   Every block is recorded separately, so families whose blocks get different arguments
   (Gemma 2/3, Cohere 2, ModernBERT, sliding-window Mistral / Qwen2) are replayed exactly.
3. **State.** Recorded tensors whose first dim is the batch (masks, position ids, rotary
   ``(cos, sin)`` tuples) go in ``State.per_sample`` (``State.select`` slices them); the rest
   (cache, flags, broadcast masks, ``cache_position``) stay in ``State.shared`` with the call
   templates. ``block(l, state)`` calls the model's own block l with those arguments.
4. **Head.** The final norm and head come from a small table of attribute names (:data:`NORM_NAMES`,
   :func:`_classifier_spec`), the language-model head from ``get_output_embeddings()`` plus the
   config's logit scale / soft-capping; the prediction feature is the model's own (``pooling="auto"``)
   or ``"cls"`` / ``"mean"`` / ``"last"``.
5. **Self-check.** :func:`self_check` (run by ``adapt``) compares, on a tiny batch, the readout of
   layer L with the model's logits, every layer with ``output_hidden_states``, a sliced state with
   the full batch, and (causal LMs) cached incremental decoding with the full forward.
"""

from __future__ import annotations

import inspect
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping, Sequence

import torch
from torch import Tensor, nn

from ..errors import LayertraceError
from .base import Adapter, State, check_batch_keys
from .layer_readout import NormThenHead

POOLINGS = ("auto", "cls", "mean", "last")
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
# Batch keys adapt() handles itself (everything else in a batch goes to the model unchanged).
_CAUSAL_KEYS = ("input_ids", "inputs_embeds", "attention_mask", "position_ids", "past_key_values")


class _Stop(Exception):
    """Raised by the last block's recorder: the embedding step is done, stop the forward."""


class _CacheWritten(Exception):
    """Raised by :meth:`HFAutoAdapter.fill_cache`'s wrapped ``cache.update``: the keys / values are in."""


class _Hidden:
    """Placeholder of the hidden-state argument in a recorded call."""


class _Ref:
    """Placeholder of a per-sample tensor (``State.per_sample[key]``) in a recorded call.

    ``flat`` marks a tensor the model passes with batch and heads flattened into its first dim
    (BLOOM's ALiBi (B * H, 1, T)): it is kept as (B, H, ...) so that ``State.select`` slices it.
    """

    __slots__ = ("key", "flat")

    def __init__(self, key: str, flat: bool = False):
        self.key = key
        self.flat = flat


_HIDDEN = _Hidden()


class _Shared:
    """Placeholder of a value the state carries in ``State.shared[key]`` (the decode path's KV cache)."""

    __slots__ = ("key",)

    def __init__(self, key: str):
        self.key = key


@dataclass
class _Call:
    """One recorded block call: the module and its arguments with placeholders."""

    module: nn.Module
    args: tuple
    kwargs: dict


class _Recorder(nn.Module):
    """Stands in for one block while recording: stores the call, returns the hidden input unchanged.

    Attribute reads fall through to the real block (models read ``layer.attention_type`` etc.).
    """

    def __init__(self, block: nn.Module, calls: list, n_calls: int | None, arity: int):
        super().__init__()
        object.__setattr__(self, "_block", block)
        object.__setattr__(self, "_calls", calls)
        object.__setattr__(self, "_n_calls", n_calls)
        object.__setattr__(self, "_arity", arity)

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(object.__getattribute__(self, "_block"), name)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        self._calls.append((self._block, args, kwargs))
        if self._n_calls is not None and len(self._calls) >= self._n_calls:
            raise _Stop
        hidden = args[0] if args else _hidden_kwarg(kwargs)
        # the same structure as the real block's output (DeBERTa unpacks ``hidden, att = layer(...)``)
        return (hidden,) + (None,) * (self._arity - 1) if self._arity else hidden


@contextmanager
def recording_blocks(blocks: nn.ModuleList, n_calls: int | None, arity: int = 0) -> Iterator[list]:
    """Put a :class:`_Recorder` in place of every block of ``blocks`` while the context is open.

    Yields the list of recorded ``(block, args, kwargs)`` calls, in call order; after ``n_calls``
    calls the recorder raises :class:`_Stop`. The blocks are put back in ``finally``. Hooks on the
    real blocks (the user's, Accelerate's) do not fire while recording.
    """
    calls: list = []
    originals = list(blocks)
    try:
        for i, block in enumerate(originals):
            blocks[i] = _Recorder(block, calls, n_calls, arity)
        yield calls
    finally:
        for i, block in enumerate(originals):
            blocks[i] = block


_MISSING = object()
_HIDDEN_KWARGS = ("hidden_states", "hidden_state", "hidden", "x")


def _hidden_kwarg(kwargs: Mapping[str, Any]) -> Any:
    for name in _HIDDEN_KWARGS:
        if name in kwargs:
            return kwargs[name]
    raise LayertraceError(f"a block was called without a hidden-state argument (kwargs {sorted(kwargs)})")


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


# ---------------------------------------------------------------------------------------- adapter
class HFAutoAdapter(Adapter):
    """Discovery adapter of an unmodified Hugging Face model (see the module docstring).

    Args:
        model: an HF ``PreTrainedModel``: a causal LM, a sequence / image classifier, or a headless
            encoder (``BertModel``, ``ViTModel``, CLIP / SigLIP towers).
        final_norm: apply the final norm in the shared readout (default; post-LN encoders have none).
        pooling: the prediction feature: ``auto`` (the model's own head's choice), ``cls``,
            ``mean`` (masked mean over tokens) or ``last`` (last non-padding token). Causal LMs read
            every position (``auto`` only).

    ``kind`` is ``causal_lm`` (features (B, T, d), readout (B, T, V)), ``classifier`` (features
    (B, d), DeiT-with-teacher / DINOv2 (B, 2, d); readout (B, K)) or ``encoder`` (headless:
    readout = the model's own pooled / projected output, (B, K) with K its width).
    """

    family = "hf"

    def __init__(self, model: nn.Module, final_norm: bool = True, pooling: str = "auto"):
        super().__init__()
        name = type(model).__name__
        if pooling not in POOLINGS:
            raise LayertraceError(f"pooling={pooling!r} is unknown: use one of {', '.join(POOLINGS)}")
        why = refusal(model)
        if why is not None:
            raise LayertraceError(f"layertrace cannot serve {name}: {why}")
        self.model = model
        object.__setattr__(self, "config", model.config)
        self.kind = model_kind(model)  # type: ignore[assignment]
        if self.kind == "causal_lm" and pooling != "auto":
            raise LayertraceError(f"pooling={pooling!r} does not apply to {name}: a causal LM reads every position "
                                  f"(use pooling='auto')")
        self.family = str(getattr(model.config, "model_type", name))
        self.pooling = pooling
        self.final_norm = final_norm
        blocks = find_blocks(model)
        object.__setattr__(self, "_block_list", blocks)
        if self.kind == "causal_lm":
            spec = _causal_spec(model)
            self.head = LMReadout(spec.norm, spec.tail, final_norm, **spec.lm_extra)
        else:
            spec = _classifier_spec(model) if self.kind == "classifier" else _encoder_spec(model)
            post_norm = spec.norm if (final_norm and not (spec.norm_first and pooling == "auto")) else None
            self.head = Chain(post_norm, spec.tail)
        self.spec = spec
        self.num_outputs = int(spec.num_outputs)
        sig = inspect.signature(model.forward).parameters
        self._takes_position_ids = "position_ids" in sig
        self._vision = "pixel_values" in sig
        self._input_key = "pixel_values" if self._vision else "input_ids"
        # Plain references into the model (not registered again: no duplicate state_dict keys).
        object.__setattr__(self, "norm", spec.norm)
        object.__setattr__(self, "lm_head", spec.tail if self.kind == "causal_lm" else None)
        self._arity = 0
        self._probed = False
        # causal LMs: embed() of cached decoding steps without replaying the forward (DecodeStep)
        self.fast_decode = True
        if unmaterialised(model):  # no weights to probe with (a model on "meta" for parameter counting)
            n = getattr(model.config, "num_hidden_layers", None) or len(blocks)
            object.__setattr__(self, "layers", [blocks[i * len(blocks) // n] for i in range(n)])
            self.n_layers = int(n)
            self.hidden_size = int(getattr(model.config, "hidden_size", 0) or 0)
        else:
            self._probe()
        object.__setattr__(self, "blocks", self.layers)
        if self.kind == "encoder" and not self.num_outputs:
            self.num_outputs = self.hidden_size

    def _probe(self) -> None:
        """What a block returns (tensor or tuple), from the first block run once on a tiny probe;
        then the layer count and call order from one recording pass (embedding cost only)."""
        name = type(self.model).__name__
        probe = self.model_inputs(probe_batch(self.model))
        if self.kind == "causal_lm":
            probe["use_cache"] = False
        first = self._record(probe, stop_after=1)
        if not first:
            raise LayertraceError(f"{name}: the forward never called its blocks")
        with torch.no_grad():
            out = first[0][0](*first[0][1], **first[0][2])
        self._arity = len(out) if isinstance(out, (tuple, list)) else 0
        calls = self._record(probe, stop_after=None)
        object.__setattr__(self, "layers", [c[0] for c in calls])
        self.n_layers = len(calls)
        hidden = calls[0][1][0] if calls[0][1] else _hidden_kwarg(calls[0][2])
        self.hidden_size = int(hidden.shape[-1])
        self._probed = True

    # ------------------------------------------------------------------ recording
    def _record(self, inputs: Mapping[str, Any], stop_after: int | None) -> list:
        with recording_blocks(self._block_list, stop_after, self._arity) as calls:
            try:
                self.model(**inputs)
            except _Stop:
                pass
            except LayertraceError:
                raise
            except Exception:  # without a stop, the model's code after the last block read a recorder's
                if stop_after is not None or not calls:  # output (its input, unchanged): only the calls matter
                    raise
        return list(calls)

    def _forward_inputs(self, batch: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Tensor]]:
        """The kwargs the model's forward gets, and the per-sample masks the adapter keeps."""
        if not isinstance(batch, Mapping):
            check_batch_keys(batch, [self._input_key], self.family)
        if self._vision:
            check_batch_keys(batch, ["pixel_values"], self.family)
        elif "input_ids" not in batch and "inputs_embeds" not in batch:
            check_batch_keys(batch, ["input_ids"], self.family)
        inputs = self.model_inputs(batch)
        keep: dict[str, Tensor] = {}
        if self.kind != "causal_lm":
            mask = inputs.get("attention_mask")
            if isinstance(mask, Tensor) and not self._vision:
                keep["attention_mask"] = mask
            if getattr(self.config, "use_cache", None) is not None:  # decoder classifiers: no KV cache
                inputs["use_cache"] = False
            return inputs, keep
        ids, embeds = inputs.get("input_ids"), inputs.get("inputs_embeds")
        if ids is not None and embeds is not None:
            raise LayertraceError(f"{self.family} batch has both input_ids and inputs_embeds; pass only one")
        if ids is not None and ids.dim() != 2:
            raise LayertraceError(f"{self.family} input_ids must be (batch, tokens), got shape {tuple(ids.shape)}")
        b, t = (ids.shape if ids is not None else embeds.shape[:2])
        cache = inputs.get("past_key_values")
        past = self.cache_length(cache)
        mask = inputs.get("attention_mask")
        if mask is None:
            mask = torch.ones(b, past + t, dtype=torch.long, device=(ids if ids is not None else embeds).device)
        if mask.dim() != 2 or mask.shape[0] != b or mask.shape[1] != past + t:
            raise LayertraceError(
                f"{self.family} attention_mask has shape {tuple(mask.shape)}; expected ({b}, {past + t}) "
                f"= (batch, cached tokens {past} + new tokens {t})")
        inputs["attention_mask"] = mask
        position_ids = inputs.get("position_ids")
        if position_ids is None:
            position_ids = positions_from_mask(mask, t)
        position_ids = position_ids.expand(b, -1)
        if self._takes_position_ids:
            inputs["position_ids"] = position_ids
        inputs["use_cache"] = cache is not None
        keep.update(attention_mask=mask[:, -t:], position_ids=position_ids)
        return inputs, keep

    # ------------------------------------------------------------------ the interface
    def embed(self, batch: Mapping[str, Any]) -> State:
        """Layer 0: what the model passes its first block, with every block's arguments recorded.

        Args:
            batch: the dict the model takes (``input_ids`` (B, T) + optional ``attention_mask``, or
                ``pixel_values`` (B, C, H, W)); causal LMs also take ``past_key_values`` (a cache from
                :meth:`new_cache`, updated in place by the blocks) with ``attention_mask`` (B, past + T)
                and optional ``position_ids`` (B, T).
        Returns:
            State with ``hidden`` (B, T, d).
        """
        if not self._probed:
            self._probe()
        inputs, keep = self._forward_inputs(batch)
        step = self._decode_step
        if step is not None:
            state = step.state(inputs, keep)
            if state is not None:
                return state
        calls = self._record(inputs, stop_after=self.n_layers)
        if len(calls) != self.n_layers:
            raise LayertraceError(f"{type(self.model).__name__} called {len(calls)} blocks, expected {self.n_layers}")
        first = calls[0]
        hidden = first[1][0] if first[1] else _hidden_kwarg(first[2])
        b = int(hidden.shape[0])
        per_sample: dict[str, Tensor] = dict(keep)
        ids: dict[int, str] = {}

        heads = _num_heads(self.config)

        def pack(value: Any) -> Any:
            if isinstance(value, Tensor):
                flat = heads > 1 and b > 1 and value.dim() >= 2 and value.shape[0] == b * heads
                if (value.dim() >= 2 and value.shape[0] == b) or flat:
                    key = ids.get(id(value))
                    if key is None:
                        key = ids[id(value)] = f"arg{len(ids)}"
                        per_sample[key] = value.unflatten(0, (b, heads)) if flat else value
                    return _Ref(key, flat)
                return value
            if isinstance(value, tuple) and not hasattr(value, "_fields"):
                return tuple(pack(v) for v in value)
            if isinstance(value, list):
                return [pack(v) for v in value]
            return value

        templates = []
        for module, args, kwargs in calls:
            if args:
                t_args = (_HIDDEN,) + tuple(pack(a) for a in args[1:])
                t_kwargs = {k: pack(v) for k, v in kwargs.items()}
            else:
                hk = next(n for n in _HIDDEN_KWARGS if n in kwargs)
                t_args = ()
                t_kwargs = {k: (_HIDDEN if k == hk else pack(v)) for k, v in kwargs.items()}
            templates.append(_Call(module, t_args, t_kwargs))
        if self.kind != "causal_lm":
            per_sample["pool_index"] = self._pool_index(inputs, hidden)
        shared = {"calls": templates, "cache": inputs.get("past_key_values")}
        state = State(hidden=hidden, per_sample=per_sample, shared=shared)
        if step is not None:
            step.learn(inputs, keep, state)
        return state

    @property
    def _decode_step(self) -> "DecodeStep | None":
        """The cheap decode-path embed of this causal LM (``None`` when it is off or not derivable)."""
        step = self.__dict__.get("_decode")
        if step is None and self.kind == "causal_lm" and self.fast_decode:
            why = DecodeStep.refusal(self.model)
            step = DecodeStep(self) if why is None else False
            object.__setattr__(self, "_decode", step)
        return step if (step and self.fast_decode and not step.broken) else None

    def _pool_index(self, inputs: Mapping[str, Any], hidden: Tensor) -> Tensor:
        """(B,) the prediction token of each sample for ``last`` / ``eos`` pooling."""
        b, t = hidden.shape[:2]
        mask = inputs.get("attention_mask")
        ids = inputs.get("input_ids")
        select = self._select_mode()
        if select == "eos" and ids is not None:
            eos = getattr(self.config, "eos_token_id", None)
            if eos == 2 or eos is None:  # CLIP's legacy rule
                return ids.to(torch.int).argmax(dim=-1).to(hidden.device)
            return (ids == eos).int().argmax(dim=-1).to(hidden.device)
        if isinstance(mask, Tensor) and not self._vision and mask.shape == (b, t):
            return last_real_index(mask).to(hidden.device)
        pad = getattr(self.config, "pad_token_id", None)
        if ids is not None and pad is not None and select == "last":  # HF's rule without a mask
            idx = torch.arange(t, device=ids.device)
            return (idx * (ids != pad).int()).argmax(-1).to(hidden.device)
        return torch.full((b,), t - 1, dtype=torch.long, device=hidden.device)

    def _select_mode(self) -> str:
        return self.spec.select if self.pooling == "auto" else self.pooling

    def block(self, layer: int, state: State) -> State:
        """Block ``layer`` (1-based) with the arguments the model passed it; appends to the cache if any."""
        if not 1 <= layer <= self.n_layers:
            raise LayertraceError(f"block {layer} does not exist: {self.family} has blocks 1..{self.n_layers}")
        self._check_cache_batch(state)
        call: _Call = state.shared["calls"][layer - 1]
        ps = state.per_sample

        def unpack(v: Any) -> Any:
            if v is _HIDDEN:
                return state.hidden
            if isinstance(v, _Ref):
                return ps[v.key].flatten(0, 1) if v.flat else ps[v.key]
            if isinstance(v, _Shared):
                return state.shared[v.key]
            if isinstance(v, tuple):
                return tuple(unpack(x) for x in v)
            if isinstance(v, list):
                return [unpack(x) for x in v]
            return v

        out = call.module(*(unpack(a) for a in call.args), **{k: unpack(v) for k, v in call.kwargs.items()})
        if isinstance(out, (tuple, list)):
            out = out[0]
        elif hasattr(out, "last_hidden_state"):
            out = out.last_hidden_state
        return state.replace(out)

    def features(self, state: State) -> Tensor:
        """Causal LMs: every position (B, T, d); else the prediction feature (B, d) / (B, 2, d)."""
        h = state.hidden
        if self.kind == "causal_lm":
            return h
        spec, select = self.spec, self._select_mode()
        if self.pooling == "auto" and spec.norm_first and self.final_norm and spec.norm is not None:
            h = spec.norm(h)
        rows = torch.arange(h.shape[0], device=h.device)
        if select == "cls":
            return h[:, 0]
        if select in ("last", "eos"):
            return h[rows, state.per_sample["pool_index"].to(h.device)]
        if select == "final_pos":
            return h[:, -1]
        if select == "mean":
            mask = state.per_sample.get("attention_mask")
            if mask is None:
                return h.mean(dim=1)
            m = mask.to(device=h.device, dtype=h.dtype).unsqueeze(-1)
            return (h * m).sum(1) / m.sum(1).clamp_min(1.0)
        if select == "patch_mean":
            return h[:, spec.skip:].mean(dim=1)
        if select == "cls_patch_mean":
            return torch.stack([h[:, 0], h[:, spec.skip:].mean(dim=1)], dim=1)
        if select == "two":
            return h[:, :2]
        if select == "all_tokens":
            return h
        raise AssertionError(select)

    def pool(self, h: Tensor) -> Tensor:
        """(B, d) for similarity metrics: the feature itself, the mean of two tokens, or of all tokens."""
        if self.kind == "causal_lm" or h.dim() == 2:
            return h
        if self._select_mode() == "cls_patch_mean":
            return h.flatten(-2)
        return h.mean(dim=-2)

    def model_logits(self, batch: Mapping[str, Any]) -> Tensor:
        """The unmodified model's own output for ``batch``: logits (B, K) / (B, T, V), or the
        headless encoder's pooled / projected output (B, K). Causal LMs get the adapter's position ids."""
        inputs = self.model_inputs(batch)
        if self.kind == "causal_lm" and self._takes_position_ids and "position_ids" not in inputs \
                and "attention_mask" in inputs:
            t = (inputs["input_ids"] if "input_ids" in inputs else inputs["inputs_embeds"]).shape[1]
            inputs["position_ids"] = positions_from_mask(inputs["attention_mask"], t)
        return _output_of(self.model(**inputs), self.spec.output)

    def token_mask(self, state: State) -> Tensor | None:
        return state.per_sample.get("attention_mask") if self.kind == "causal_lm" else None

    @property
    def device(self) -> torch.device:
        """Where inputs go: the embedding's (execution) device; with a ``device_map`` each block's
        Accelerate hook then moves the state to that block's device (and loads offloaded weights)."""
        return _input_device(self.model)

    # ------------------------------------------------------------------ KV cache (causal LMs)
    def new_cache(self) -> Any:
        """An empty HF ``DynamicCache`` for this model (put it in the batch as ``past_key_values``)."""
        if self.kind != "causal_lm":
            raise LayertraceError(f"{type(self.model).__name__} is a {self.kind}; only causal LMs have a KV cache")
        from transformers import DynamicCache

        return DynamicCache(config=self.config)

    @staticmethod
    def cache_length(cache: Any) -> int:
        """Number of tokens already stored in ``cache`` (0 for ``None``)."""
        return 0 if cache is None else int(cache.get_seq_length())

    def fill_cache(self, layer: int, state: State) -> None:
        """Append to the cache the keys / values block ``layer`` computes from ``state.hidden``.

        The CALM propagation of an exited token's state to the layers it skipped. The block's own
        code computes the entries (input norm, key / value projections, rotary: whatever this family
        does), so they are by construction what the block would write; the block is stopped right
        after its attention hands them to ``cache.update``, so no attention scores and no MLP are
        computed. A block that never calls ``update`` on the cache object, or one dispatched with
        Accelerate hooks (whose post-forward must run), is run in full and its output discarded.

        Args:
            layer: 1-based block index.
            state: the state of the new tokens (``hidden`` (B, T, d)) whose ``shared["cache"]`` gets
                the entries.
        """
        cache = state.shared.get("cache")
        if cache is None:
            raise LayertraceError("fill_cache needs a KV cache: put past_key_values=adapter.new_cache() in the batch")
        if not 1 <= layer <= self.n_layers:
            raise LayertraceError(f"block {layer} does not exist: {self.family} has blocks 1..{self.n_layers}")
        if hasattr(state.shared["calls"][layer - 1].module, "_hf_hook"):
            self.block(layer, state)
            return
        update = cache.update

        def update_then_stop(*args: Any, **kwargs: Any) -> Any:
            update(*args, **kwargs)
            raise _CacheWritten

        cache.update = update_then_stop  # an instance attribute shadows the class's method for this call
        try:
            self.block(layer, state)
        except _CacheWritten:
            pass
        finally:
            del cache.update

    def _check_cache_batch(self, state: State) -> None:
        cache = state.shared.get("cache")
        if cache is not None and self.cache_length(cache) > 0:
            keys = getattr(cache.layers[0], "keys", None)
            if isinstance(keys, Tensor) and keys.dim() > 0 and keys.shape[0] != state.batch_size:
                raise LayertraceError(
                    f"the KV cache holds {keys.shape[0]} rows but the state has {state.batch_size}: "
                    f"State.select() does not slice a cache; call cache.batch_select_indices(index) too")

    def extra_repr(self) -> str:
        return super().extra_repr() + f", pooling={self.pooling}"


def dispatched_fast(model: nn.Module) -> bool:
    """Accelerate placed the model (``device_map`` or a hook on the model itself); O(1), unlike :func:`dispatched`."""
    return getattr(model, "hf_device_map", None) is not None or hasattr(model, "_hf_hook")


# ---------------------------------------------------------------------------------------- decode path
class DecodeStep:
    """The embedding step of cached decoding without replaying the model's forward.

    ``embed`` replays the HF forward up to the blocks (recorders in place of the blocks), which on a
    small model costs about as much as two or three blocks per decoded token. For a cached decoding
    step (the cache holds P tokens, T new ones) every argument the blocks get is a simple function of
    the new token ids, the (B, P + T) attention mask and the position ids; this class derives them
    directly:

    * layer 0 (``hidden``): the input embedding of the ids, plus a learned position embedding of the
      position ids (plus an offset: OPT's 2) where the model has one;
    * the 4-D attention mask: causal (key j <= P + i) and the 2-D mask, as ``bool`` (SDPA) or as an
      additive float mask (eager), or no mask where HF's SDPA path passes none;
    * rotary ``(cos, sin)``: the model's own rotary module called on the position ids (the call its
      forward makes, so dynamic / scaled rope is whatever the model does);
    * the position ids themselves, the cache object and constant flags.

    Nothing is assumed per family: the first replayed decoding step of each *case* (mask all ones or
    not, T = 1 or not: HF decides from these whether to build a mask) is matched argument by argument
    against these candidates with ``torch.equal``; a case where any argument of any block matches
    none of them (ALiBi, sliding windows, scaled embeddings, extra per-layer inputs) is marked
    unservable and keeps the replay. Models whose masks change with the cache length beyond what
    one step shows (sliding-window / chunked attention, non-full ``layer_types``), caches other than
    ``DynamicCache``, ``inputs_embeds`` batches, training mode and Accelerate-dispatched models always
    use the replay. Tests (tests/models/test_decode_step.py) check state equality with the replay over
    many steps with padding and holes for GPT-2, Llama and OPT, and the fallback on BLOOM.
    """

    def __init__(self, adapter: "HFAutoAdapter"):
        self.adapter = adapter
        model = adapter.model
        self.embedding = model.get_input_embeddings()
        blocks = set(map(id, adapter._block_list.modules()))
        head = adapter.lm_head
        # learned position tables outside the blocks (GPT-2 wpe, OPT embed_positions)
        self.position_tables = [m for m in model.modules() if isinstance(m, nn.Embedding) and id(m) not in blocks
                                and m is not self.embedding and m is not head]
        self.rotary = [m for m in model.modules() if type(m).__name__.endswith("RotaryEmbedding")
                       and id(m) not in blocks]
        self.cases: dict[tuple, Any] = {}  # case -> (hidden rule, per-sample rules, templates) or None
        self.broken = False

    @staticmethod
    def refusal(model: nn.Module) -> str | None:
        """Why a model's decoding steps must keep the replay (``None``: the decode path may be learned)."""
        cfg = model.config
        impl = getattr(cfg, "_attn_implementation", None)
        if impl not in (None, "sdpa", "eager"):
            return f"attention implementation {impl!r}"
        if getattr(cfg, "sliding_window", None) is not None and getattr(cfg, "use_sliding_window", True) is not False:
            return "sliding-window attention"
        if getattr(cfg, "attention_chunk_size", None) is not None:
            return "chunked attention"
        types = getattr(cfg, "layer_types", None)
        if types and any(t != "full_attention" for t in types):
            return "per-layer attention types"
        if dispatched(model):
            return "dispatched with Accelerate hooks"
        return None

    # --------------------------------------------------------------- when the decode path applies
    def _case(self, inputs: Mapping[str, Any], keep: Mapping[str, Tensor]) -> tuple | None:
        from transformers import DynamicCache

        cache = inputs.get("past_key_values")
        ids = inputs.get("input_ids")
        if (cache is None or type(cache) is not DynamicCache or ids is None or self.adapter.model.training
                or any(getattr(cache, "is_sliding", None) or ())):
            return None
        past = self.adapter.cache_length(cache)
        if past == 0:
            return None
        weight = self.embedding.weight
        return (bool(inputs["attention_mask"].bool().all()), ids.shape[1] == 1, weight.dtype, weight.device)

    # --------------------------------------------------------------- candidates
    def _positions(self, keep: Mapping[str, Tensor]) -> Tensor:
        return keep["position_ids"]

    def _hidden_candidates(self, ids: Tensor, pos: Tensor) -> Iterator[tuple[Any, Tensor]]:
        h = self.embedding(ids)
        yield ("embed",), h
        for table in self.position_tables:
            for offset in (0, 2):
                idx = pos + offset
                if int(idx.max()) < table.num_embeddings:
                    yield ("embed+table", table, offset), h + nn.functional.embedding(idx, table.weight)

    def _hidden(self, rule: tuple, ids: Tensor, pos: Tensor) -> Tensor:
        h = self.embedding(ids)
        if rule[0] == "embed":
            return h
        _, table, offset = rule
        return h + nn.functional.embedding(pos + offset, table.weight)

    @staticmethod
    def _allowed(mask2d: Tensor, t: int) -> Tensor:
        """(B, 1, T, P + T) bool: key j is a real token and j <= P + i for query i (causal, HF's SDPA mask)."""
        kv = mask2d.shape[1]
        q = torch.arange(kv - t, kv, device=mask2d.device)
        causal = torch.arange(kv, device=mask2d.device)[None, :] <= q[:, None]
        return causal[None, None] & mask2d.bool()[:, None, None, :]

    def _derive(self, rule: tuple, ctx: dict) -> Tensor:
        kind = rule[0]
        if kind == "pos":
            return ctx["pos"]
        if kind == "mask_bool":
            return ctx.setdefault("allowed", self._allowed(ctx["mask2d"], ctx["t"]))
        if kind == "mask_float":
            allowed = ctx.setdefault("allowed", self._allowed(ctx["mask2d"], ctx["t"]))
            return torch.zeros(allowed.shape, dtype=rule[1], device=allowed.device).masked_fill(
                ~allowed, torch.finfo(rule[1]).min)
        if kind == "rotary":
            key = ("rot", id(rule[1]))
            if key not in ctx:
                ctx[key] = rule[1](ctx["hidden"], ctx["pos"])
            return ctx[key][rule[2]]
        raise AssertionError(kind)

    # --------------------------------------------------------------- learn from a replay, then step
    def learn(self, inputs: Mapping[str, Any], keep: Mapping[str, Tensor], state: State) -> None:
        """Match the replayed ``state`` of a decoding step against the candidates (once per case)."""
        case = self._case(inputs, keep)
        if case is None or case in self.cases:
            return
        try:
            self.cases[case] = self._match(inputs, keep, state)
        except Exception:  # noqa: BLE001 - an unexpected argument structure: keep the replay for this case
            self.cases[case] = None

    def _match(self, inputs: Mapping[str, Any], keep: Mapping[str, Tensor], state: State) -> Any:
        ids, mask2d, cache = inputs["input_ids"], inputs["attention_mask"], inputs["past_key_values"]
        pos = self._positions(keep)
        hidden_rule = next((rule for rule, h in self._hidden_candidates(ids, pos) if torch.equal(h, state.hidden)),
                           None)
        if hidden_rule is None:
            return None
        ctx = {"pos": pos, "mask2d": mask2d, "t": ids.shape[1], "hidden": state.hidden}
        candidates: list[tuple] = [("pos",), ("mask_bool",)]
        dtypes = {v.dtype for v in state.per_sample.values() if v.is_floating_point()}
        candidates += [("mask_float", dt) for dt in dtypes]
        for module in self.rotary:
            candidates += [("rotary", module, 0), ("rotary", module, 1)]
        rules: dict[str, tuple] = {}
        for key, value in state.per_sample.items():
            if key in keep:
                continue
            for rule in candidates:
                try:
                    got = self._derive(rule, ctx)
                except Exception:  # noqa: BLE001 - a candidate that does not apply (e.g. rotary signature)
                    continue
                if isinstance(got, Tensor) and got.shape == value.shape and torch.equal(got, value):
                    rules[key] = rule
                    break
            else:
                return None
        refs = set(rules) | set(keep)

        def template(v: Any) -> Any:
            if v is cache:
                return _Shared("cache")
            if isinstance(v, _Ref):
                if v.flat or v.key not in refs:
                    raise LayertraceError("unmatched per-sample argument")
                return v
            if isinstance(v, Tensor) or isinstance(v, nn.Module) or hasattr(v, "get_seq_length"):
                raise LayertraceError("a tensor or cache argument the decode path cannot derive")
            if isinstance(v, tuple) and not hasattr(v, "_fields"):
                return tuple(template(x) for x in v)
            if isinstance(v, list):
                return [template(x) for x in v]
            return v

        calls = [_Call(c.module, tuple(template(a) for a in c.args), {k: template(v) for k, v in c.kwargs.items()})
                 for c in state.shared["calls"]]
        return hidden_rule, rules, calls

    def state(self, inputs: Mapping[str, Any], keep: Mapping[str, Tensor]) -> State | None:
        """The State of a cached decoding step, or ``None`` where the replay must run (unlearned case)."""
        case = self._case(inputs, keep)
        learned = self.cases.get(case) if case is not None else None
        if learned is None:
            return None
        hidden_rule, rules, calls = learned
        ids = inputs["input_ids"]
        pos = self._positions(keep)
        hidden = self._hidden(hidden_rule, ids, pos)
        ctx = {"pos": pos, "mask2d": inputs["attention_mask"], "t": ids.shape[1], "hidden": hidden}
        per_sample = dict(keep)
        for key, rule in rules.items():
            per_sample[key] = self._derive(rule, ctx)
        shared = {"calls": calls, "cache": inputs["past_key_values"]}
        return State(hidden=hidden, per_sample=per_sample, shared=shared)


def _num_heads(cfg: Any) -> int:
    for name in ("num_attention_heads", "n_head", "n_heads"):
        v = getattr(cfg, name, None)
        if isinstance(v, int):
            return v
    return 0


def _output_of(out: Any, name: str) -> Tensor:
    if name == "last_hidden_state_cls":
        return out.last_hidden_state[:, 0]
    value = getattr(out, name, None)
    if value is None:
        raise LayertraceError(f"the model output has no {name!r}")
    return value


# ---------------------------------------------------------------------------------------- probe / check
def _vocab(cfg: Any) -> int:
    for c in (cfg, getattr(cfg, "text_config", None)):
        v = getattr(c, "vocab_size", None)
        if v:
            return int(v)
    return 100


def probe_batch(model: nn.Module, batch_size: int = 2, tokens: int = 6, seed: int = 0) -> dict[str, Tensor]:
    """A tiny batch the model takes: (B, T) token ids with row 1 padded by 2 (left for causal LMs,
    right otherwise), or (B, C, H, W) random pixels. On the model's input device."""
    cfg = model.config
    device = _input_device(model)
    g = torch.Generator().manual_seed(seed)
    sig = inspect.signature(model.forward).parameters
    if "pixel_values" in sig:
        cfg = getattr(cfg, "vision_config", None) or cfg
        size = getattr(cfg, "image_size", 32)
        size = size if isinstance(size, int) else int(size[0])
        ch = int(getattr(cfg, "num_channels", 3))
        pixels = torch.randn(batch_size, ch, size, size, generator=g)
        return {"pixel_values": pixels.to(device=device, dtype=_float_dtype(model))}
    vocab = _vocab(cfg)
    pad = getattr(cfg, "pad_token_id", None)
    pad = 0 if pad is None or pad >= vocab else int(pad)
    low = 3 if vocab > 8 else 0
    ids = torch.randint(low, vocab, (batch_size, tokens), generator=g)
    ids[ids == pad] = low if low != pad else low + 1
    mask = torch.ones(batch_size, tokens, dtype=torch.long)
    if batch_size > 1:
        if model_kind(model) == "causal_lm":
            mask[1, :2] = 0
        else:
            mask[1, -2:] = 0
    ids[mask == 0] = pad
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device)}


def dispatched(model: nn.Module) -> bool:
    """The model was dispatched by Accelerate (``device_map``): its hooks place / load each module."""
    return getattr(model, "hf_device_map", None) is not None or any(
        hasattr(m, "_hf_hook") for m in model.modules())


def unmaterialised(model: nn.Module) -> bool:
    """Parameters on ``meta`` that no Accelerate hook will load (nothing can run)."""
    return any(p.is_meta for p in model.parameters()) and not dispatched(model)


def _float_dtype(model: nn.Module) -> torch.dtype:
    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.float32


def _input_device(model: nn.Module) -> torch.device:
    """The device inputs go to (the embedding's execution device under Accelerate)."""
    try:
        emb = model.get_input_embeddings()
    except (NotImplementedError, AttributeError):
        emb = None
    hook = getattr(emb, "_hf_hook", None)
    if hook is not None and getattr(hook, "execution_device", None) is not None:
        return torch.device(hook.execution_device)
    weight = getattr(emb, "weight", None)
    if hook is None and isinstance(weight, Tensor) and not weight.is_meta and not dispatched_fast(model):
        return weight.device  # inputs go where the embedding is (listing every parameter costs ~1 block)
    main_device = getattr(model, "_hf_hook", None)
    if main_device is not None and getattr(main_device, "execution_device", None) is not None:
        return torch.device(main_device.execution_device)
    device_map = getattr(model, "hf_device_map", None)
    if device_map:
        first = next(iter(device_map.values()))
        return torch.device("cpu" if first in ("disk", "cpu") else (f"cuda:{first}" if isinstance(first, int)
                                                                    else first))
    devices = [p.device for p in model.parameters()]
    return next((d for d in devices if d.type != "meta"), devices[0] if devices else torch.device("cpu"))


# class name -> "verified" or the one-line reason a self-check failed, for this process
VERIFIED: dict[str, str] = {}


def _close(a: Tensor, b: Tensor, what: str, name: str) -> None:
    a, b = a.float(), b.float().to(a.device)
    if a.shape != b.shape:
        raise LayertraceError(f"{name} failed the self-check: {what} has shape {tuple(a.shape)} vs the model's "
                              f"{tuple(b.shape)}; pass check=False only if you know why")
    tol = 1e-4 * (1.0 + float(b.abs().max())) if b.dtype == torch.float32 else 2e-2 * (1.0 + float(b.abs().max()))
    err = float((a - b).abs().max()) if a.numel() else 0.0
    if not err <= tol:
        raise LayertraceError(f"{name} failed the self-check: {what} differs from the model by {err:.3g} "
                              f"(tolerance {tol:.2g}); pass check=False only if you know why")


@torch.no_grad()
def self_check(adapter: Adapter, batch: Mapping[str, Any] | None = None) -> float:
    """Check the adapter against its model on one tiny batch; raise a one-line error naming the check.

    Checks: readout of layer L == the model's own output (``model_logits`` for a GenericAdapter);
    HF models: every layer l < L == ``output_hidden_states[l]`` (real tokens); ``State.select`` of one sample + block by block == that sample's row; causal LMs:
    cached incremental decoding of the last token == the full forward. Runs in eval mode (restored).

    Returns:
        seconds it took.
    """
    model = adapter.model
    name = type(model).__name__
    start = time.perf_counter()
    modes = [(m, m.training) for m in adapter.modules()]
    adapter.eval()
    try:
        batch = dict(batch) if batch is not None else probe_batch(model)
        inputs = adapter.model_inputs(batch)
        lm = adapter.kind == "causal_lm"
        hs = None
        if isinstance(adapter, HFAutoAdapter):  # one forward gives the reference output and every layer
            if lm and "position_ids" not in inputs and adapter._takes_position_ids:
                t = inputs["input_ids"].shape[1]
                inputs["position_ids"] = positions_from_mask(inputs["attention_mask"], t)
            out = model(**inputs, output_hidden_states=True)
            ref = _output_of(out, adapter.spec.output)
            hs = getattr(out, "hidden_states", None)
        else:  # GenericAdapter: its model_logits callable is the reference
            ref = adapter.model_logits(batch)
        states = [adapter.embed(batch)]
        for layer in range(1, adapter.n_layers + 1):
            states.append(adapter.block(layer, states[-1]))
        got = adapter.readout(adapter.features(states[-1]))
        real = batch.get("attention_mask")
        real = real.bool().to(got.device) if (isinstance(real, Tensor) and "input_ids" in batch) else None
        if lm and real is not None:
            _close(got[real], ref[real], "the readout of the last layer", name)
        else:
            _close(got, ref, "the readout of the last layer", name)
        if hs is not None:
            if len(hs) != adapter.n_layers + 1:
                raise LayertraceError(f"{name} failed the self-check: output_hidden_states has {len(hs)} entries "
                                      f"for {adapter.n_layers} traced blocks")
            for layer in range(adapter.n_layers):
                a, b = states[layer].hidden, hs[layer].to(states[layer].hidden.device)
                if real is not None and a.shape[:2] == real.shape:
                    a, b = a[real], b[real]
                _close(a, b, f"layer {layer} (vs output_hidden_states)", name)
        if states[0].batch_size > 1:
            one = states[0].select([1])
            for layer in range(1, adapter.n_layers + 1):
                one = adapter.block(layer, one)
            row = adapter.readout(adapter.features(one))
            if lm and real is not None:
                _close(row[0][real[1]], got[1][real[1]], "State.select + block by block", name)
            else:
                _close(row[0], got[1], "State.select + block by block", name)
        if lm and hasattr(adapter, "new_cache") and "input_ids" in batch and "attention_mask" in batch:
            ids, mask = batch["input_ids"], batch["attention_mask"]
            cache = adapter.new_cache()
            state = adapter.embed({"input_ids": ids[:, :-1], "attention_mask": mask[:, :-1], "past_key_values": cache})
            for layer in range(1, adapter.n_layers + 1):
                state = adapter.block(layer, state)
            state = adapter.embed({"input_ids": ids[:, -1:], "attention_mask": mask, "past_key_values": cache})
            for layer in range(1, adapter.n_layers + 1):
                state = adapter.block(layer, state)
            _close(adapter.readout(adapter.features(state))[:, -1], got[:, -1], "cached incremental decoding", name)
    finally:
        for m, mode in modes:
            m.training = mode
    return time.perf_counter() - start
