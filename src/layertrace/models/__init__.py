"""Model adapters: all model-family knowledge lives here (DESIGN.md section 2)."""

from .base import Adapter, State, Trace
from .generic import GenericAdapter, NormThenHead
from .registry import adapt, register, registered_families
from .toy import ToyAdapter, ToyConfig, ToyTransformerClassifier

__all__ = [
    "Adapter", "State", "Trace", "GenericAdapter", "NormThenHead", "adapt", "register",
    "registered_families", "ToyAdapter", "ToyConfig", "ToyTransformerClassifier",
]
