"""The code examples of docs/models.md run and give what the text says."""

from __future__ import annotations

import re
from pathlib import Path

import torch
from torch.testing import assert_close

DOC = Path(__file__).resolve().parents[2] / "docs" / "models.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)


def test_adapt_example_shapes():
    block = next(b for b in python_blocks() if "adapt(model)" in b)
    scope: dict = {}
    exec(block, scope)
    assert scope["trace"].features.shape == (5, 8, 64) and scope["trace"].logits.shape == (5, 8, 10)


def test_generic_adapter_example_matches_model():
    block = next(b for b in python_blocks() if "GenericAdapter(" in b)
    scope: dict = {}
    exec(block, scope)
    trace, net, adapter = scope["trace"], scope["net"], scope["adapter"]
    assert trace.features.shape == (4, 16, 32) and trace.logits.shape == (4, 16, 4)
    x = torch.randn(5, 20)
    with torch.no_grad():
        assert_close(adapter.trace({"x": x}).logits[-1], net(x))
        assert_close(adapter.model_logits({"x": x}), net(x))


def test_layer_loop_and_readout_example():
    blocks = python_blocks()
    scope: dict = {}
    exec(next(b for b in blocks if "adapt(model)" in b), scope)
    with torch.no_grad():
        exec(next(b for b in blocks if "LayerReadout.of(adapter)" in b), scope)
    feats, read, adapter, batch = scope["feats"], scope["read"], scope["adapter"], scope["batch"]
    assert scope["layer"] == 4 and scope["h"].shape == (8, 64)
    assert [f.shape for f in feats] == [(8, 64), (8, 64)]
    with torch.no_grad():
        stacked = read.stacked([2, 4], feats)
        assert stacked.shape == (2, 8, 10)
        assert_close(stacked[0], read(2, feats[0]))                            # one call == per-layer calls
        assert_close(stacked, adapter.trace(batch, layers=[2, 4]).logits)      # == the adapter's own trace
        assert_close(stacked[1], adapter.model_logits(batch))                  # layer L == the model itself
