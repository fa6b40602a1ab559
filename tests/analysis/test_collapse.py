"""Neural collapse in the analysis pass (collapse=True): the feature the head's linear layer reads."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from layertrace.analysis import AnalysisResult, analyze
from layertrace.errors import LayertraceError
from layertrace.models import ToyAdapter, adapt
from layertrace.readout import CollapseAccumulator

from .helpers import toy_batches

pytestmark = pytest.mark.filterwarnings("ignore::layertrace.metrics.DegenerateLayerWarning")
KEYS = ("nc1", "nc2_equinorm", "nc2_equiangular", "nc2_maxangle", "nc3", "within_trace")


def one_shot(z: torch.Tensor, labels: torch.Tensor, k: int, weight: torch.Tensor) -> dict:
    acc = CollapseAccumulator(z.shape[0], k, z.shape[-1])
    acc.update(z.double(), labels)
    return acc.compute(weight.detach().double().numpy())


def test_toy_model_collapse_reads_the_final_norm_output(toy_model):
    adapter = ToyAdapter(toy_model)
    batches = toy_batches(n_batches=3)
    result = analyze(adapter, batches, collapse=True, similarity=False)
    with torch.no_grad():  # the toy head is final norm -> linear: z_l = norm(h_l)
        h = torch.cat([adapter.trace(b, with_logits=False).features for b in batches], dim=1)
        z = toy_model.norm(h)
    labels = torch.cat([b["labels"] for b in batches])
    ref = one_shot(z, labels, 3, toy_model.classifier.weight)
    for key in KEYS:
        np.testing.assert_allclose(result.collapse[key], ref[key], rtol=1e-5, err_msg=key)
    assert len(result.collapse["nc1"]) == len(result.layers) == adapter.n_layers + 1
    assert result.collapse["n_samples"] == len(labels) and result.collapse["dim"] == 32
    assert not toy_model.classifier._forward_hooks  # the hook lives for the pass only


def test_hf_vit_collapse_uses_layernormed_cls_of_hidden_states(tiny_vit):
    model, batches = tiny_vit
    result = analyze(adapt(model), batches, collapse=True, layers="1::1")
    with torch.no_grad():
        hidden = [model(pixel_values=b["pixel_values"], output_hidden_states=True).hidden_states for b in batches]
        z = torch.stack([torch.cat([model.vit.layernorm(hs[layer][:, 0]) for hs in hidden]) for layer in result.layers])
    labels = torch.cat([b["labels"] for b in batches])
    ref = one_shot(z, labels, 5, model.classifier.weight)
    for key in KEYS:
        np.testing.assert_allclose(result.collapse[key], ref[key], rtol=1e-4, err_msg=key)


def test_collapse_round_trips_through_json(toy_model, tmp_path):
    result = analyze(ToyAdapter(toy_model), toy_batches(n_batches=2), collapse=True)
    back = AnalysisResult.from_json(result.save(tmp_path))
    for key in KEYS:
        np.testing.assert_allclose(back.collapse[key], result.collapse[key], rtol=1e-12)
    assert back.collapse["feature"] == result.collapse["feature"]
    assert analyze(ToyAdapter(toy_model), toy_batches(n_batches=1)).collapse is None  # off by default


def test_two_linear_head_is_refused_and_hook_removed_on_failure(toy_model):
    import transformers as tf

    torch.manual_seed(0)
    deit = tf.DeiTForImageClassificationWithTeacher(tf.DeiTConfig(
        image_size=16, patch_size=4, num_channels=3, hidden_size=32, num_hidden_layers=2,
        num_attention_heads=4, intermediate_size=64, num_labels=5)).eval()
    batch = {"pixel_values": torch.randn(4, 3, 16, 16), "labels": torch.tensor([0, 1, 2, 3])}
    with pytest.raises(LayertraceError, match="exactly one linear layer"):
        analyze(adapt(deit), [batch], collapse=True)
    bad = toy_batches(n_batches=1)
    bad[0]["labels"][0] = 7  # fails inside the pass, after the hook was attached
    with pytest.raises(LayertraceError, match="out of range"):
        analyze(ToyAdapter(toy_model), bad, collapse=True)
    assert not toy_model.classifier._forward_hooks


@pytest.fixture
def tiny_vit():
    import transformers as tf

    torch.manual_seed(0)
    model = tf.ViTForImageClassification(tf.ViTConfig(
        image_size=16, patch_size=4, num_channels=3, hidden_size=32, num_hidden_layers=3,
        num_attention_heads=4, intermediate_size=64, num_labels=5)).eval()
    assert sum(p.numel() for p in model.parameters()) < 60_000
    g = torch.Generator().manual_seed(1)
    batches = [{"pixel_values": torch.randn(8, 3, 16, 16, generator=g),
                "labels": torch.arange(8) % 5} for _ in range(3)]
    return model, batches


def test_cli_collapse_option_writes_the_entry(tmp_path):
    import json

    from layertrace.cli.main import main

    out = tmp_path / "run"
    assert main(["analyze", "--model", "vit-demo", "--data", "mnist-5k", "--limit", "20", "--batch_size", "10",
                 "--out", str(out), "--collapse", "true", "--similarity", "false", "--progress", "false"]) == 0
    data = json.loads((out / "analysis.json").read_text())
    nc = data["collapse"]
    assert len(nc["nc1"]) == len(data["layers"]) and nc["n_samples"] == 20 and nc["n_classes"] >= 2
    assert data["config"]["collapse"] is True
