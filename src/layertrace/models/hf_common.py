"""What every Hugging Face encoder adapter shares: attention masks carried in the state, and blocks.

Hugging Face ``transformers`` 5.x builds the attention mask once per forward with
``masking_utils.create_bidirectional_mask`` (its form depends on ``config._attn_implementation``:
an additive float mask (B, 1, T, T) for ``eager``, a boolean mask (B, 1, T, T) for ``sdpa``, or
``None`` when no token is padded) and passes it positionally to every layer as
``layer(hidden_states, attention_mask)``. The adapters below do exactly the same, once in
``embed``, and carry the prepared mask in ``State.per_sample`` so that ``State.select`` slices it
with the samples (early exit). Implementations whose mask is not a batch-first tensor (flex
attention's ``BlockMask``) are rebuilt from the (B, T) padding mask at every block instead.

This module imports ``transformers``; only the HF family modules import it.
"""

from __future__ import annotations

from typing import Any, Mapping

from torch import Tensor, nn

from .base import Adapter, State

# Keys used inside State.per_sample / State.shared by the HF encoder adapters.
PADDING_MASK = "attention_mask"        # (B, T) 1 = real token, 0 = padding (as the tokenizer gives it)
LAYER_MASK = "layer_attention_mask"    # the prepared mask every layer receives, batch-first
REBUILD_MASK = "rebuild_layer_mask"    # shared flag: the prepared mask is not sliceable, rebuild per block


def prepare_layer_mask(config: Any, hidden: Tensor, padding_mask: Tensor | None) -> Any:
    """The mask the model's layers receive, built as the HF model builds it.

    Args:
        config: the model's config (its ``_attn_implementation`` picks the mask form).
        hidden: (B, T, d) embedding output (gives batch size, length, dtype and device).
        padding_mask: (B, T) with 1 for real tokens, or ``None``.
    Returns:
        ``None`` (nothing masked), a (B, 1, T, T) tensor, or an implementation-specific object.
    """
    if padding_mask is None:
        return None
    from transformers.masking_utils import create_bidirectional_mask

    return create_bidirectional_mask(config=config, inputs_embeds=hidden, attention_mask=padding_mask)


def encoder_state(config: Any, hidden: Tensor, padding_mask: Tensor | None, **shared: Any) -> State:
    """Wrap an embedding output and its masks into a sliceable :class:`State`.

    Args:
        config: the model config (mask form).
        hidden: (B, T, d) embedding output.
        padding_mask: (B, T) or ``None``.
        shared: extras not indexed by sample.
    """
    per_sample: dict[str, Tensor] = {}
    shared_extras: dict[str, Any] = dict(shared)
    if padding_mask is not None:
        padding_mask = padding_mask.to(hidden.device)
        per_sample[PADDING_MASK] = padding_mask
        layer_mask = prepare_layer_mask(config, hidden, padding_mask)
        if isinstance(layer_mask, Tensor) and layer_mask.shape[0] == hidden.shape[0]:
            per_sample[LAYER_MASK] = layer_mask
        elif layer_mask is not None:  # e.g. flex attention's BlockMask: rebuild for each (sub)batch
            shared_extras[REBUILD_MASK] = True
    return State(hidden=hidden, per_sample=per_sample, shared=shared_extras)


def layer_mask_of(config: Any, state: State) -> Any:
    """The prepared layer mask of ``state`` (rebuilt from the padding mask when not sliceable)."""
    if state.shared.get(REBUILD_MASK):
        return prepare_layer_mask(config, state.hidden, state.per_sample.get(PADDING_MASK))
    return state.per_sample.get(LAYER_MASK)


class HFEncoderAdapter(Adapter):
    """Base of the HF encoder adapters (ViT, DeiT, BERT family): blocks called as the model calls them.

    Subclasses set ``self.config`` (the HF config), ``self.layers`` (the model's own ``nn.ModuleList``
    of blocks) and the usual adapter attributes, and implement ``embed`` / ``features``.
    """

    config: Any
    layers: nn.ModuleList

    def _ref(self, **modules: Any) -> None:
        """Keep plain references into the model (not registered again: no duplicate state_dict keys)."""
        for name, value in modules.items():
            object.__setattr__(self, name, value)

    def block(self, layer: int, state: State) -> State:
        """Apply the model's block ``layer`` (1-based) with the same mask the model would pass."""
        out = self.layers[layer - 1](state.hidden, layer_mask_of(self.config, state))
        if isinstance(out, (tuple, list)):  # older / other layer classes return tuples
            out = out[0]
        return state.replace(out)


def padding_mask_from(batch: Mapping[str, Any], key: str = "attention_mask") -> Tensor | None:
    """The (B, T) padding mask of a batch, or ``None``."""
    mask = batch.get(key)
    return mask if isinstance(mask, Tensor) else None


def classifier_num_labels(model: nn.Module) -> int:
    """K of an HF classifier model (``config.num_labels``)."""
    return int(model.config.num_labels)
