"""Adapters for Hugging Face causal language models (transformers 5.x).

Two layouts are served:

* GPT-2 (``GPT2LMHeadModel``): ``transformer.wte + wpe -> h[0..L-1] -> ln_f -> lm_head``.
* Llama layout (``LlamaForCausalLM``, ``Qwen2ForCausalLM``, ``MistralForCausalLM``):
  ``model.embed_tokens -> layers[0..L-1] (rotary positions) -> norm -> lm_head``.

``kind = "causal_lm"``: ``features(state)`` is every position (B, T, d) and ``readout(h)`` is the
shared final norm (``ln_f`` / ``norm``; skipped with ``final_norm=False``, which reproduces the
authors' GPT-2 code) followed by ``lm_head`` -> (B, T, V).

What the running :class:`~layertrace.models.base.State` carries:

* ``per_sample``: ``attention_mask`` (B, T) of the *current* tokens (1 = real), ``position_ids``
  (B, T), the 4-D attention masks (B, 1, T, past + T) when the model materialises them (padding
  present), and for rotary models ``rope_cos`` / ``rope_sin`` (B, T, head_dim). The rotary tables
  are per sample (not shared) because with padding every row has its own positions.
* ``shared``: ``cache``, an HF :class:`~transformers.DynamicCache` (or ``None``) that every block
  updates in place, so ``block(l, state)`` supports incremental decoding; and ``masks_broadcast``
  for masks that are not per sample.

Positions. Without explicit ``position_ids`` the adapter numbers the real tokens of every row from
0 (``cumsum(attention_mask) - 1``, pads get 0), the convention of HF ``generate``. HF's plain
``model(input_ids, attention_mask)`` instead numbers columns 0..T-1, which differs for left-padded
rows only; :meth:`model_logits` passes the adapter's positions to the model so the parity reference
and the adapter always agree. A left-padded row therefore gives the same logits as the unpadded row.

Hidden states. HF's ``output_hidden_states`` returns L + 1 tensors whose last entry has the final
norm applied (``ln_f`` / ``norm``: transformers ties ``hidden_states[-1]`` to ``last_hidden_state``).
Our layer L is the raw output of block L (before the final norm), so that the same readout applies
at every layer: ``features[l] == hidden_states[l]`` for l < L and ``norm(features[L]) ==
hidden_states[L]``.

KV cache. Pass ``past_key_values`` (a cache from :meth:`CausalLMAdapter.new_cache`) in the batch
with ``attention_mask`` covering past + new tokens (B, past + T), as for the HF model. Blocks append
their keys / values. :meth:`CausalLMAdapter.fill_cache` writes the keys / values a layer would
compute from a given hidden state without running attention or the MLP (CALM-style propagation of
an exited token's state to the layers it skipped).
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import Tensor, nn

from ..errors import LayertraceError
from .base import Adapter, State, check_batch_keys
from .generic import NormThenHead
from .registry import register


def positions_from_mask(attention_mask: Tensor, n_new: int) -> Tensor:
    """Position ids of the last ``n_new`` tokens from a (B, past + n_new) 0/1 mask.

    Real tokens are numbered 0, 1, ... within each row (pads do not count); pads get 0. This is the
    convention of HF ``generate`` (``cumsum(mask) - 1``).

    Returns:
        (B, n_new) long tensor.
    """
    mask = attention_mask.long()
    pos = mask.cumsum(-1) - 1
    pos = pos.masked_fill(mask == 0, 0)
    return pos[:, -n_new:]


class CausalLMAdapter(Adapter):
    """Common part of the causal-LM adapters: inputs, masks, cache, readout.

    Subclasses set ``self.embed_tokens``, ``self.blocks`` (ModuleList), ``self.norm``, ``self.lm_head``
    and implement :meth:`_embed_hidden`, :meth:`_run_block` and :meth:`_block_kv`.
    """

    kind = "causal_lm"

    def _setup(self, model: nn.Module, blocks: nn.ModuleList, norm: nn.Module, final_norm: bool) -> None:
        self.model = model
        # Plain references into ``model`` (not registered again: no duplicate state_dict keys).
        self._ref(config=model.config, blocks=blocks, norm=norm, lm_head=model.lm_head)
        self.n_layers = len(blocks)
        self.hidden_size = int(self.config.hidden_size)
        self.num_outputs = int(self.lm_head.out_features)
        self.final_norm = final_norm
        self.head = NormThenHead(norm, self.lm_head, final_norm)

    def _ref(self, **modules: Any) -> None:
        for name, value in modules.items():
            object.__setattr__(self, name, value)

    # ------------------------------------------------------------------ cache helpers
    def new_cache(self) -> Any:
        """An empty HF ``DynamicCache`` for this model (put it in the batch as ``past_key_values``)."""
        from transformers import DynamicCache

        return DynamicCache(config=self.config)

    @staticmethod
    def cache_length(cache: Any) -> int:
        """Number of tokens already stored in ``cache`` (0 for ``None``)."""
        return 0 if cache is None else int(cache.get_seq_length())

    # ------------------------------------------------------------------ the interface
    def embed(self, batch: Mapping[str, Any]) -> State:
        """Layer 0: token (+ position) embeddings of the new tokens.

        Args:
            batch: ``input_ids`` (B, T) (or ``inputs_embeds`` (B, T, d)); optional ``attention_mask``
                (B, past + T), ``position_ids`` (B, T), ``past_key_values`` (a cache holding ``past``
                tokens; updated in place by the blocks), GPT-2 ``token_type_ids``.
        Returns:
            State with ``hidden`` (B, T, d).
        """
        if not isinstance(batch, Mapping) or ("input_ids" not in batch and "inputs_embeds" not in batch):
            check_batch_keys(batch, ["input_ids"], self.family)
        inputs = self.model_inputs(batch)
        ids = inputs.get("input_ids")
        embeds = inputs.get("inputs_embeds")
        cache = inputs.get("past_key_values")
        if ids is not None and embeds is not None:
            raise LayertraceError(f"{self.family} batch has both input_ids and inputs_embeds; pass only one")
        if ids is not None and ids.dim() != 2:
            raise LayertraceError(f"{self.family} input_ids must be (batch, tokens), got shape {tuple(ids.shape)}")
        b, t = (ids.shape if ids is not None else embeds.shape[:2])
        past = self.cache_length(cache)
        device = self.device
        mask = inputs.get("attention_mask")
        if mask is None:
            mask = torch.ones(b, past + t, dtype=torch.long, device=device)
        if mask.dim() != 2 or mask.shape[0] != b or mask.shape[1] != past + t:
            raise LayertraceError(
                f"{self.family} attention_mask has shape {tuple(mask.shape)}; expected ({b}, {past + t}) "
                f"= (batch, cached tokens {past} + new tokens {t})"
            )
        position_ids = inputs.get("position_ids")
        if position_ids is None:
            position_ids = positions_from_mask(mask, t)
        position_ids = position_ids.expand(b, -1)
        if embeds is None:
            embeds = self.embed_tokens(ids)
        hidden = self._embed_hidden(embeds, position_ids, inputs)
        per_sample: dict[str, Tensor] = {"attention_mask": mask[:, -t:], "position_ids": position_ids}
        shared: dict[str, Any] = {"cache": cache, "masks_broadcast": {}}
        for name, m in self._attention_masks(hidden, mask, cache, position_ids).items():
            if isinstance(m, Tensor) and m.shape[0] == b and b > 1:
                per_sample["mask_" + name] = m
            else:  # None (sdpa's is_causal fast path) or a mask broadcast over the batch
                shared["masks_broadcast"][name] = m
        per_sample.update(self._position_extras(hidden, position_ids))
        return State(hidden=hidden, per_sample=per_sample, shared=shared)

    def block(self, layer: int, state: State) -> State:
        """Block ``layer`` (1-based) on the new tokens; appends their keys/values to the cache if any."""
        if not 1 <= layer <= self.n_layers:
            raise LayertraceError(f"block {layer} does not exist: {self.family} has blocks 1..{self.n_layers}")
        self._check_cache_batch(state)
        out = self._run_block(layer - 1, state)
        return state.replace(out[0] if isinstance(out, tuple) else out)

    def features(self, state: State) -> Tensor:
        return state.hidden

    def fill_cache(self, layer: int, state: State) -> None:
        """Append to the cache the keys/values block ``layer`` computes from ``state.hidden``.

        Runs only the attention input norm and the key/value projections (no attention, no MLP): the
        CALM propagation of an exited token's hidden state to the layers it skipped.
        """
        cache = state.shared.get("cache")
        if cache is None:
            raise LayertraceError("fill_cache needs a KV cache: put past_key_values=adapter.new_cache() in the batch")
        self._check_cache_batch(state)
        idx = layer - 1
        key, value = self._block_kv(idx, state)
        cache.update(key, value, idx)

    def model_logits(self, batch: Mapping[str, Any]) -> Tensor:
        """The HF model's own logits (B, T, V), with the adapter's position ids (see module doc)."""
        inputs = self.model_inputs(batch)
        if "position_ids" not in inputs and "attention_mask" in inputs:
            t = (inputs["input_ids"] if "input_ids" in inputs else inputs["inputs_embeds"]).shape[1]
            inputs["position_ids"] = positions_from_mask(inputs["attention_mask"], t)
        return self.model(**inputs).logits

    # ------------------------------------------------------------------ helpers
    def _check_cache_batch(self, state: State) -> None:
        cache = state.shared.get("cache")
        if cache is not None and self.cache_length(cache) > 0:
            keys = cache.layers[0].keys
            if keys is not None and keys.shape[0] != state.batch_size:
                raise LayertraceError(
                    f"the KV cache holds {keys.shape[0]} rows but the state has {state.batch_size}: "
                    f"State.select() does not slice a cache; call cache.batch_select_indices(index) too"
                )

    def _mask_for(self, idx: int, state: State) -> Any:
        name = self._layer_mask_name(idx)
        key = "mask_" + name
        if key in state.per_sample:
            return state.per_sample[key]
        return state.shared.get("masks_broadcast", {}).get(name)

    def _layer_mask_name(self, idx: int) -> str:
        return "full_attention"

    def _attention_masks(self, hidden: Tensor, mask: Tensor, cache: Any, position_ids: Tensor) -> dict[str, Any]:
        from transformers.masking_utils import create_causal_mask

        return {"full_attention": create_causal_mask(
            config=self.config, inputs_embeds=hidden, attention_mask=mask,
            past_key_values=cache, position_ids=position_ids)}

    def _position_extras(self, hidden: Tensor, position_ids: Tensor) -> dict[str, Tensor]:
        return {}

    def _embed_hidden(self, embeds: Tensor, position_ids: Tensor, inputs: Mapping[str, Any]) -> Tensor:
        raise NotImplementedError

    def _run_block(self, idx: int, state: State) -> Tensor:
        raise NotImplementedError

    def _block_kv(self, idx: int, state: State) -> tuple[Tensor, Tensor]:
        raise NotImplementedError


class GPT2Adapter(CausalLMAdapter):
    """``GPT2LMHeadModel``: wte + wpe (+ dropout) -> blocks ``transformer.h`` -> ``ln_f`` -> ``lm_head``."""

    family = "gpt2"

    def __init__(self, model: nn.Module, final_norm: bool = True):
        super().__init__()
        backbone = model.transformer
        if getattr(model.config, "add_cross_attention", False):
            raise LayertraceError("GPT-2 with cross-attention is not supported; use a decoder-only GPT2LMHeadModel")
        self._setup(model, backbone.h, backbone.ln_f, final_norm)
        self._ref(embed_tokens=backbone.wte, embed_positions=backbone.wpe, embed_dropout=backbone.drop)

    def _embed_hidden(self, embeds: Tensor, position_ids: Tensor, inputs: Mapping[str, Any]) -> Tensor:
        hidden = embeds + self.embed_positions(position_ids).to(embeds.device)
        token_type_ids = inputs.get("token_type_ids")
        if token_type_ids is not None:
            hidden = hidden + self.embed_tokens(token_type_ids)
        return self.embed_dropout(hidden)

    def _run_block(self, idx: int, state: State) -> Tensor:
        cache = state.shared.get("cache")
        return self.blocks[idx](
            state.hidden, cache, self._mask_for(idx, state), None,
            use_cache=cache is not None, position_ids=state.per_sample["position_ids"],
        )

    def _block_kv(self, idx: int, state: State) -> tuple[Tensor, Tensor]:
        attn = self.blocks[idx].attn
        x = self.blocks[idx].ln_1(state.hidden)
        _, key, value = attn.c_attn(x).split(attn.split_size, dim=2)
        shape = (*key.shape[:-1], -1, attn.head_dim)
        return key.view(shape).transpose(1, 2), value.view(shape).transpose(1, 2)


def _rotate_half(x: Tensor) -> Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class LlamaLayoutAdapter(CausalLMAdapter):
    """Llama / Qwen2 / Mistral: ``embed_tokens`` -> decoder ``layers`` with rotary positions -> ``norm``.

    Sliding-window layers (``config.layer_types``, or Mistral's ``sliding_window``) get the
    sliding-window causal mask, as in the HF model.
    """

    family = "llama"

    def __init__(self, model: nn.Module, final_norm: bool = True):
        super().__init__()
        backbone = model.model
        self._setup(model, backbone.layers, backbone.norm, final_norm)
        self._ref(embed_tokens=backbone.embed_tokens, rotary_emb=backbone.rotary_emb)
        self.family = type(model).__name__.replace("ForCausalLM", "").lower()
        cfg = self.config
        layer_types = getattr(cfg, "layer_types", None)
        if layer_types is None:
            sliding = getattr(cfg, "sliding_window", None) is not None and self.family == "mistral"
            layer_types = ["sliding_attention" if sliding else "full_attention"] * self.n_layers
        self.layer_types = list(layer_types)[: self.n_layers]

    def _layer_mask_name(self, idx: int) -> str:
        return self.layer_types[idx]

    def _attention_masks(self, hidden: Tensor, mask: Tensor, cache: Any, position_ids: Tensor) -> dict[str, Any]:
        from transformers.masking_utils import create_causal_mask, create_sliding_window_causal_mask

        kwargs = dict(config=self.config, inputs_embeds=hidden, attention_mask=mask,
                      past_key_values=cache, position_ids=position_ids)
        masks: dict[str, Any] = {}
        if "full_attention" in self.layer_types:
            masks["full_attention"] = create_causal_mask(**kwargs)
        if "sliding_attention" in self.layer_types:
            masks["sliding_attention"] = create_sliding_window_causal_mask(**kwargs)
        return masks

    def _position_extras(self, hidden: Tensor, position_ids: Tensor) -> dict[str, Tensor]:
        cos, sin = self.rotary_emb(hidden, position_ids=position_ids)
        return {"rope_cos": cos, "rope_sin": sin}

    def _embed_hidden(self, embeds: Tensor, position_ids: Tensor, inputs: Mapping[str, Any]) -> Tensor:
        return embeds

    def _run_block(self, idx: int, state: State) -> Tensor:
        cache = state.shared.get("cache")
        return self.blocks[idx](
            state.hidden,
            attention_mask=self._mask_for(idx, state),
            position_embeddings=(state.per_sample["rope_cos"], state.per_sample["rope_sin"]),
            position_ids=state.per_sample["position_ids"],
            past_key_values=cache,
            use_cache=cache is not None,
        )

    def _block_kv(self, idx: int, state: State) -> tuple[Tensor, Tensor]:
        layer = self.blocks[idx]
        attn = layer.self_attn
        x = layer.input_layernorm(state.hidden)
        shape = (*x.shape[:-1], -1, attn.head_dim)
        key = attn.k_proj(x).view(shape).transpose(1, 2)
        value = attn.v_proj(x).view(shape).transpose(1, 2)
        cos = state.per_sample["rope_cos"].unsqueeze(1)
        sin = state.per_sample["rope_sin"].unsqueeze(1)
        key = key * cos + _rotate_half(key) * sin
        return key, value


@register("GPT2LMHeadModel")
def _gpt2_factory(model: nn.Module, final_norm: bool = True) -> Adapter:
    return GPT2Adapter(model, final_norm=final_norm)


@register("LlamaForCausalLM", "Qwen2ForCausalLM", "MistralForCausalLM")
def _llama_factory(model: nn.Module, final_norm: bool = True) -> Adapter:
    return LlamaLayoutAdapter(model, final_norm=final_norm)
