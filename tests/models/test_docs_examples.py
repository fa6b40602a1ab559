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
