"""Shared fixtures: tiny models built from config in code (nothing is downloaded)."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")
# Two xdist workers share two cores: one intra-op thread each avoids oversubscription.
torch.set_num_threads(1)


@pytest.fixture
def toy_model():
    """A 4-block, width-32 toy transformer classifier (3 classes), eval mode, seeded."""
    from layertrace.models import ToyTransformerClassifier

    torch.manual_seed(0)
    model = ToyTransformerClassifier().eval()
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params < 100_000, n_params  # stays tiny
    return model


@pytest.fixture
def toy_batch():
    """8 sequences of 12 tokens ([CLS]=1 first), two of them padded, with labels in 0..2."""
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(2, 64, (8, 12), generator=g)
    ids[:, 0] = 1
    mask = torch.ones(8, 12, dtype=torch.long)
    mask[3, 7:] = 0
    mask[5, 4:] = 0
    ids[mask == 0] = 0
    labels = torch.randint(0, 3, (8,), generator=g)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def cuda_available() -> bool:
    return torch.cuda.is_available()


requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
