"""Kept for old imports: vision transformers are served by discovery (:mod:`layertrace.models.hf_auto`)."""

from .hf_auto import HFAutoAdapter as ViTFamilyAdapter

__all__ = ["ViTFamilyAdapter"]
