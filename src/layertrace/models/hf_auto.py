"""Any Hugging Face transformer, found by introspection: the discovery adapter.

(Just over ~450 lines: what is left is the one class :class:`HFAutoAdapter`, whose recording, replay and
cache methods share its discovered state; recording, heads, the decode path and the self-check have their
own modules.)

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
from typing import Any, Mapping

import torch
from torch import Tensor, nn

from ..errors import LayertraceError
from .base import Adapter, State, check_batch_keys
# The pieces live in their own modules (recording, head discovery, decode path, self-check); the names
# below stay importable from here, where the rest of the package and the tests import them.
from .classifier_embed import ClassifierEmbed
from .decode_step import DecodeStep
from .head_discovery import (NORM_NAMES, REFUSED, Chain, ConcatTokens, HeadSpec, LMReadout,  # noqa: F401
                             Relu, TokenHead, TwoTokenAverage, _causal_spec, _classifier_spec, _encoder_spec,
                             _output_of, find_blocks, last_real_index, model_kind, positions_from_mask, refusal)
from .recording import (_HIDDEN, _HIDDEN_KWARGS, _Call, _CacheWritten, _Ref, _Shared, _Stop,  # noqa: F401
                        _hidden_kwarg, recording_blocks)
from .self_check import (VERIFIED, _input_device, dispatched, dispatched_fast, probe_batch,  # noqa: F401
                         run_self_check, unmaterialised)

POOLINGS = ("auto", "cls", "mean", "last")
# Batch keys adapt() handles itself (everything else in a batch goes to the model unchanged).
_CAUSAL_KEYS = ("input_ids", "inputs_embeds", "attention_mask", "position_ids", "past_key_values")


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
        # classifiers / encoders: embed() from the embedding modules, checked against one replay per case
        self.fast_embed = True
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
        direct = self._direct_embed
        case = direct.case(inputs, keep) if direct is not None else None
        if case is not None:
            state = direct.state(inputs, keep, case)
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
        if self.kind != "causal_lm" and self._select_mode() in ("last", "eos"):  # only these read it
            per_sample["pool_index"] = self._pool_index(inputs, hidden)
        shared = {"calls": templates, "cache": inputs.get("past_key_values")}
        state = State(hidden=hidden, per_sample=per_sample, shared=shared)
        if step is not None:
            step.learn(inputs, keep, state)
        if case is not None:
            direct.learn(inputs, keep, state, case)
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

    @property
    def _direct_embed(self) -> "ClassifierEmbed | None":
        """The replay-free embed of this classifier / encoder (``None`` when it is off or refused)."""
        direct = self.__dict__.get("_direct")
        if direct is None and self.kind != "causal_lm":
            direct = ClassifierEmbed(self) if ClassifierEmbed.refusal(self.model) is None else False
            object.__setattr__(self, "_direct", direct)
        return direct if (direct and self.fast_embed) else None

    def embed_path(self) -> str:
        """How :meth:`embed` builds layer 0 for the cases seen so far: ``"direct"`` (every case built
        from the embedding modules, :class:`ClassifierEmbed`), ``"replay"`` (the forward replayed),
        or ``"replay for some cases: <why>"``; causal LMs: ``"replay"`` (their decoding steps: :class:`DecodeStep`)."""
        direct = self.__dict__.get("_direct")
        if self.kind == "causal_lm" or not self.fast_embed:
            return "replay"
        if direct is False:
            return f"replay: {ClassifierEmbed.refusal(self.model)}"
        if direct is None or not direct.cases:
            return "direct (no batch yet)"
        if not direct.reasons:
            return "direct"
        why = "; ".join(sorted(set(direct.reasons.values())))
        return ("replay: " if len(direct.reasons) == len(direct.cases) else "replay for some cases: ") + why

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
        if select == "cls":
            return h[:, 0]
        if select in ("last", "eos"):
            return h[torch.arange(h.shape[0], device=h.device), state.per_sample["pool_index"].to(h.device)]
        if select == "final_pos":
            return h[:, -1]
        if select == "two":
            return h[:, :2]
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


def _num_heads(cfg: Any) -> int:
    for name in ("num_attention_heads", "n_head", "n_heads"):
        v = getattr(cfg, name, None)
        if isinstance(v, int):
            return v
    return 0


@torch.no_grad()
def self_check(adapter: Adapter, batch: Mapping[str, Any] | None = None) -> float:
    """Check the adapter against its model on one tiny batch; raise a one-line error naming the check.

    Checks: readout of layer L == the model's own output (``model_logits`` for a GenericAdapter);
    HF models: every layer l < L == ``output_hidden_states[l]`` (real tokens); ``State.select`` of one sample + block by block == that sample's row; causal LMs:
    cached incremental decoding of the last token == the full forward. Runs in eval mode (restored).

    Returns:
        seconds it took.
    """
    return run_self_check(adapter, batch, hf=isinstance(adapter, HFAutoAdapter))
