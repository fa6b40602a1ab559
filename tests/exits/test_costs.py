"""FLOPs per stage, expected FLOPs of a sweep, parameter counts."""

from __future__ import annotations

import pytest
import torch

from layertrace.exits import LayerCosts, sweep
from layertrace.exits.costs import param_summary, stage_flops
from layertrace.models import ToyAdapter


def test_stage_flops_of_the_toy_model(toy_model, toy_batch):
    adapter = ToyAdapter(toy_model)
    costs = stage_flops(adapter, toy_batch)
    d, k, t, n_layers = 32, 3, 12, 4
    assert costs.embed == 0  # embedding lookups are not FLOPs
    assert costs.head == [2 * d * k] * n_layers  # one Linear(d, K) per sample (the norm is not counted)
    # per block and sample: qkv (3 d^2), proj (d^2), mlp (8 d^2) multiply-adds per token + attention (2 T^2 d)
    expected_block = 2 * t * (12 * d * d) + 2 * 2 * t * t * d
    assert costs.block == [pytest.approx(expected_block)] * n_layers


def test_expected_flops_in_a_sweep():
    costs = LayerCosts(embed=10.0, block=[100.0] * 4, head=[1.0] * 4)
    assert costs.full_cost() == 411.0
    assert costs.cost_at_exit().tolist() == [111.0, 212.0, 313.0, 414.0]
    logits = torch.randn(4, 30, 3, generator=torch.Generator().manual_seed(0))
    result = sweep(logits, "fixed", [1, 2, 4], costs=costs)
    assert [p.flops_per_sample for p in result.points] == [111.0, 212.0, 414.0]
    assert result.points[0].flops_speedup == pytest.approx(411 / 111)
    # with readouts at every layer, running all L layers costs more than the plain model
    assert result.points[-1].flops_speedup < 1.0


def test_param_summary(toy_model):
    adapter = ToyAdapter(toy_model)
    counts = param_summary(adapter)
    total = sum(p.numel() for p in toy_model.parameters())
    assert counts["shared_head"] == total == counts["this_run"]
    assert counts["per_layer_heads"] == total + 3 * (3 * 32)          # (L-1) K x d matrices (paper's Table 1)
    assert counts["per_layer_heads_copied"] == total + 3 * (3 * 32 + 3 + 2 * 32)  # + bias + LayerNorm
    import layertrace.training.heads as heads_mod
    heads = heads_mod.PerLayerHeads(adapter, range(1, 5))
    assert param_summary(adapter, heads)["this_run"] == counts["per_layer_heads_copied"]
