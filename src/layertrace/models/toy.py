"""A tiny pre-LN transformer text classifier for tests and docs (no download, builds in ms).

``ToyTransformerClassifier`` takes ``input_ids`` (B, T) with the [CLS] token at position 0 and an
optional ``attention_mask`` (B, T), and returns an object with ``.logits`` (B, K), like an HF model.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import Adapter, State, check_batch_keys
from .layer_readout import NormThenHead


@dataclass
class ToyConfig:
    """Size of the toy model. Defaults give 4 blocks of width 32 (~52k parameters)."""

    vocab_size: int = 64
    max_len: int = 32
    hidden_size: int = 32
    n_layers: int = 4
    n_heads: int = 4
    num_classes: int = 3
    mlp_ratio: int = 4
    dropout: float = 0.0


class ToyBlock(nn.Module):
    """Pre-LN block: h + attn(ln(h)), then h + mlp(ln(h)); padded keys are masked out."""

    def __init__(self, cfg: ToyConfig):
        super().__init__()
        self.n_heads = cfg.n_heads
        self.ln1 = nn.LayerNorm(cfg.hidden_size)
        self.qkv = nn.Linear(cfg.hidden_size, 3 * cfg.hidden_size)
        self.proj = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.ln2 = nn.LayerNorm(cfg.hidden_size)
        self.mlp = nn.Sequential(
            nn.Linear(cfg.hidden_size, cfg.mlp_ratio * cfg.hidden_size),
            nn.GELU(),
            nn.Linear(cfg.mlp_ratio * cfg.hidden_size, cfg.hidden_size),
        )
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, h: Tensor, key_mask: Tensor | None = None) -> Tensor:
        """h: (B, T, d); key_mask: (B, T) with 1 for real tokens. Returns (B, T, d)."""
        b, t, d = h.shape
        q, k, v = self.qkv(self.ln1(h)).view(b, t, 3, self.n_heads, d // self.n_heads).permute(2, 0, 3, 1, 4)
        attn_mask = None if key_mask is None else key_mask.bool()[:, None, None, :]
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        h = h + self.drop(self.proj(a.transpose(1, 2).reshape(b, t, d)))
        return h + self.drop(self.mlp(self.ln2(h)))


class ToyTransformerClassifier(nn.Module):
    """Tiny pre-LN transformer classifier: token + position embeddings -> blocks -> LN -> head([CLS])."""

    def __init__(self, cfg: ToyConfig | None = None, **overrides: Any):
        super().__init__()
        cfg = cfg or ToyConfig(**overrides)
        self.config = cfg
        self.tok = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.pos = nn.Embedding(cfg.max_len, cfg.hidden_size)
        self.blocks = nn.ModuleList(ToyBlock(cfg) for _ in range(cfg.n_layers))
        self.norm = nn.LayerNorm(cfg.hidden_size)
        self.classifier = nn.Linear(cfg.hidden_size, cfg.num_classes)

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None, labels: Tensor | None = None,
                output_hidden_states: bool = False) -> SimpleNamespace:
        """input_ids (B, T) -> ``.logits`` (B, K); ``.hidden_states`` tuple of L+1 (B, T, d) if asked."""
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        h = self.tok(input_ids) + self.pos(positions)[None]
        hidden_states = [h]
        for blk in self.blocks:
            h = blk(h, attention_mask)
            hidden_states.append(h)
        logits = self.classifier(self.norm(h[:, 0]))
        loss = F.cross_entropy(logits, labels) if labels is not None else None
        return SimpleNamespace(logits=logits, loss=loss,
                               hidden_states=tuple(hidden_states) if output_hidden_states else None)


class ToyAdapter(Adapter):
    """Adapter of :class:`ToyTransformerClassifier` ([CLS] -> final LN -> classifier)."""

    family = "toy"

    def __init__(self, model: ToyTransformerClassifier, final_norm: bool = True):
        super().__init__()
        self.model = model
        cfg = model.config
        self.n_layers = cfg.n_layers
        self.hidden_size = cfg.hidden_size
        self.num_outputs = cfg.num_classes
        self.kind = "classifier"
        self.final_norm = final_norm
        self.head = NormThenHead(model.norm, model.classifier, final_norm)

    def embed(self, batch: Mapping[str, Any]) -> State:
        check_batch_keys(batch, ["input_ids"], "toy")
        inputs = self.model_inputs(batch)
        ids = inputs["input_ids"]
        mask = inputs.get("attention_mask")
        if mask is None:
            mask = torch.ones_like(ids)
        positions = torch.arange(ids.shape[1], device=ids.device)
        hidden = self.model.tok(ids) + self.model.pos(positions)[None]
        return State(hidden=hidden, per_sample={"attention_mask": mask})

    def block(self, layer: int, state: State) -> State:
        return state.replace(self.model.blocks[layer - 1](state.hidden, state.per_sample["attention_mask"]))

    def features(self, state: State) -> Tensor:
        return state.hidden[:, 0]
