"""Shared helpers of the analysis tests: toy batches and synthetic adapters with known trajectories."""

from __future__ import annotations

import math

import torch
from torch import nn

from layertrace.models import GenericAdapter, State


def toy_batches(n_batches=4, batch_size=8, seq=10, vocab=64, n_classes=3, seed=1, pad=True):
    """Batches for ToyTransformerClassifier: [CLS]=1 first, some rows padded, labels in 0..n_classes-1."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n_batches):
        ids = torch.randint(2, vocab, (batch_size, seq), generator=g)
        ids[:, 0] = 1
        mask = torch.ones(batch_size, seq, dtype=torch.long)
        if pad:
            mask[1, seq // 2:] = 0
        ids[mask == 0] = 0
        out.append({"input_ids": ids, "attention_mask": mask,
                    "labels": torch.randint(0, n_classes, (batch_size,), generator=g)})
    return out


class _AddStep(nn.Module):
    """Block h -> h + state.per_sample['step'] (a straight line traversed at uniform speed)."""

    takes_state = True

    def forward(self, h, state):
        return h + state.per_sample["step"]


class _Rotate(nn.Module):
    """Block h -> R h with R a rotation by ``degrees`` in the (e0, e1) plane."""

    def __init__(self, dim: int, degrees: float):
        super().__init__()
        rot = torch.eye(dim, dtype=torch.float64)
        c, s = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
        rot[0, 0], rot[0, 1], rot[1, 0], rot[1, 1] = c, -s, s, c
        self.register_buffer("rot", rot)

    def forward(self, h):
        return h @ self.rot.T


def synthetic_adapter(kind: str, n_layers: int = 4, dim: int = 6, n_classes: int = 3, degrees: float = 90.0):
    """A GenericAdapter whose per-sample trajectories are known.

    Batches: ``{"x0": (B, d) start, "x1": (B, d) end, "labels": (B,)}`` (float64).
    kind="straight": h_l = x0 + (l / L) (x1 - x0). kind="rotate": h_l = R^l x0, R a rotation by
    ``degrees`` in the first coordinate plane.
    """
    torch.manual_seed(0)
    head = nn.Linear(dim, n_classes).double()
    holder = nn.ModuleList([head])
    if kind == "straight":
        def embed(batch):
            x0, x1 = batch["x0"], batch["x1"]
            return State(hidden=x0[:, None, :], per_sample={"step": ((x1 - x0) / n_layers)[:, None, :]})

        blocks = [_AddStep() for _ in range(n_layers)]
    else:
        def embed(batch):
            return batch["x0"][:, None, :]

        blocks = [_Rotate(dim, degrees) for _ in range(n_layers)]
    holder.extend(blocks)
    return GenericAdapter(holder, embed=embed, blocks=blocks, head=head, kind="classifier", token_index=0)


def synthetic_batches(n_batches=3, batch_size=6, dim=6, n_classes=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [{"x0": torch.randn(batch_size, dim, generator=g, dtype=torch.float64),
             "x1": torch.randn(batch_size, dim, generator=g, dtype=torch.float64),
             "labels": torch.randint(0, n_classes, (batch_size,), generator=g)} for _ in range(n_batches)]
