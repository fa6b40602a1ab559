"""Kept for old imports: causal LMs are served by discovery (:mod:`layertrace.models.hf_auto`)."""

from .hf_auto import HFAutoAdapter as CausalLMAdapter
from .hf_auto import positions_from_mask

__all__ = ["CausalLMAdapter", "positions_from_mask"]
