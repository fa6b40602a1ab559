"""Kept for old imports: text encoders are served by discovery (:mod:`layertrace.models.hf_auto`)."""

from .hf_auto import HFAutoAdapter as BertFamilyAdapter
from .hf_auto import TokenHead

__all__ = ["BertFamilyAdapter", "TokenHead"]
