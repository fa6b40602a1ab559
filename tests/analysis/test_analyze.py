"""The analysis pass against direct computations on the toy model (classifier branch)."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

from layertrace import metrics
from layertrace.analysis import AnalysisResult, analyze, layerwise_readout
from layertrace.models import ToyAdapter
from layertrace.readout import saturation_positions

from .helpers import synthetic_adapter, synthetic_batches, toy_batches

pytestmark = pytest.mark.filterwarnings("ignore::layertrace.metrics.DegenerateLayerWarning")


def direct_layer_logits(adapter, batches):
    """(S, n, K) logits of the shared readout at every layer, via adapter.forward(upto=l) per layer."""
    with torch.no_grad():
        return torch.stack([torch.cat([adapter(b, upto=l) for b in batches]) for l in range(adapter.n_layers + 1)])


def traced_features(adapter, batches):
    with torch.no_grad():
        return torch.cat([adapter.trace(b, with_logits=False).features for b in batches], dim=1).double()


@pytest.fixture
def setup(toy_model):
    adapter = ToyAdapter(toy_model)
    batches = toy_batches()
    return adapter, batches


def test_readout_statistics_equal_a_direct_computation(setup):
    adapter, batches = setup
    result = analyze(adapter, batches, similarity=False)
    logits = direct_layer_logits(adapter, batches).double()
    labels = torch.cat([b["labels"] for b in batches])
    p = logits.softmax(-1)
    idx = torch.arange(len(labels))
    np.testing.assert_allclose(result.accuracy, (logits.argmax(-1) == labels).double().mean(1), rtol=1e-12)
    np.testing.assert_allclose(result.true_class_prob, p[:, idx, labels].mean(1), rtol=1e-6)
    np.testing.assert_allclose(result.max_prob, p.max(-1).values.mean(1), rtol=1e-6)
    np.testing.assert_allclose(result.entropy, -(p * p.log()).sum(-1).mean(1), rtol=1e-5)
    np.testing.assert_allclose(result.cross_entropy, -p[:, idx, labels].log().mean(1), rtol=1e-5)
    # the last layer's readout is the model itself
    with torch.no_grad():
        own = torch.cat([adapter.model_logits(b) for b in batches])
    assert result.accuracy[-1] == pytest.approx((own.argmax(-1) == labels).double().mean().item())
    # saturation from the direct predictions
    preds = logits.argmax(-1).T.numpy()
    hist = np.bincount(saturation_positions(preds), minlength=5)
    assert result.saturation_hist.tolist() == hist.tolist()
    # agreement with the last layer's prediction, layer by layer
    np.testing.assert_allclose(result.final_agreement, (preds == preds[:, -1:]).mean(0), rtol=1e-12)
    assert result.final_agreement[-1] == 1.0
    table = result.layer_table().splitlines()  # one row per traced layer, agreement in the last column
    assert table[0].split("|")[-2].strip() == "agrees with last" and len(table) == 2 + len(result.layers)
    for row, value in zip(table[2:], result.final_agreement):
        assert row.split("|")[-2].strip() == f"{value:.3f}"
    assert result.n_samples == result.n_predictions == len(labels)
    assert result.cos_matrix is None and result.cka_matrix is None


@pytest.mark.parametrize("center", ["mean", "none", "feature"])
def test_similarity_equals_metrics_on_traced_features(setup, center):
    adapter, batches = setup
    result = analyze(adapter, batches, center=center)
    feats = traced_features(adapter, batches)
    np.testing.assert_allclose(result.cos_matrix, metrics.cos_matrix(feats, center=center), atol=1e-10)
    np.testing.assert_allclose(result.cka_matrix, metrics.linear_cka_matrix(feats), atol=1e-10)
    np.testing.assert_allclose(result.cos_to_last, result.cos_matrix[:, -1])
    np.testing.assert_allclose(result.adjacent_cos[1:], metrics.adjacent_cos(feats, center=center), atol=1e-10)
    assert math.isnan(result.adjacent_cos[0])
    agreement = metrics.agreement(result.cos_matrix, result.cka_matrix)
    assert result.cos_cka_agreement == pytest.approx(agreement)
    # per-sample COS to last: mean over the valid samples is the matrix row; box stats agree with metrics
    per = result.samples["cos_to_last"].astype(np.float64)
    ref, valid = metrics.per_sample_cos(feats, center=center, return_valid=True)
    np.testing.assert_allclose(np.where(valid.T, per, 0.0), np.where(valid.T, ref.T, 0.0), atol=1e-6)
    assert np.isnan(per[~valid.T]).all()
    assert result.zero_norm_count == int(metrics.zero_norm_counts(feats, center=center).sum())
    # norm ratio ||h_l|| / ||h_{l+1} - h_l||, averaged over samples
    direct = (feats[:-1].norm(dim=-1) / (feats[1:] - feats[:-1]).norm(dim=-1)).mean(1).numpy()
    np.testing.assert_allclose(result.norm_ratio[:-1], direct, rtol=1e-10)
    assert math.isnan(result.norm_ratio[-1])


def test_cache_modes_agree(setup, tmp_path):
    adapter, batches = setup
    ram = analyze(adapter, batches, cache="ram", rbf_cka=True, procrustes=True)
    disk = analyze(adapter, batches, cache="disk", cache_dir=str(tmp_path), rbf_cka=True, procrustes=True)
    spill = analyze(adapter, batches, cache="auto", cache_ram_gb=1e-6)  # spills to disk after ~1 kB
    none = analyze(adapter, batches, cache="none")  # second forward pass instead of a cache
    assert spill.config["cache_spilled_to_disk"] and not ram.config["cache_spilled_to_disk"]
    assert list(tmp_path.iterdir()) == []  # the disk cache is removed
    for other in (disk, spill, none):
        np.testing.assert_allclose(other.cos_matrix, ram.cos_matrix, atol=1e-12)
        np.testing.assert_allclose(other.cka_matrix, ram.cka_matrix, atol=1e-10)
        np.testing.assert_allclose(other.samples["cos_to_last"], ram.samples["cos_to_last"], atol=1e-7)
        assert other.theory["theorem_2_1"] == ram.theory["theorem_2_1"]
    np.testing.assert_allclose(disk.rbf_cka_matrix, ram.rbf_cka_matrix, atol=1e-12)
    feats = traced_features(adapter, batches)
    np.testing.assert_allclose(ram.rbf_cka_matrix, metrics.rbf_cka_matrix(feats), atol=1e-10)
    np.testing.assert_allclose(ram.procrustes_matrix, metrics.procrustes_similarity_matrix(feats), atol=1e-10)


def test_one_shot_iterator_with_cache_none_is_refused(setup):
    adapter, batches = setup
    from layertrace.errors import LayertraceError

    with pytest.raises(LayertraceError, match="one-shot iterator"):
        analyze(adapter, iter(batches), cache="none")
    analyze(adapter, iter(batches), cache="none", center="none")  # centres known: one pass is enough


def test_minibatch_cka_equals_the_metric_over_the_same_batches(setup):
    adapter, batches = setup
    result = analyze(adapter, batches, cka="minibatch")
    acc = metrics.MinibatchCKA(5)
    with torch.no_grad():
        for b in batches:
            acc.update(adapter.trace(b, with_logits=False).features)
    np.testing.assert_allclose(result.cka_matrix, acc.compute(), atol=1e-10)
    assert result.cka_estimator == "minibatch"


def test_layer_selection_always_keeps_the_last_layer(setup):
    adapter, batches = setup
    result = analyze(adapter, batches, layers="0::3")   # 0, 3 of 0..4 -> plus 4
    assert result.layers == [0, 3, 4]
    full = analyze(adapter, batches)
    idx = [0, 3, 4]
    np.testing.assert_allclose(result.accuracy, full.accuracy[idx])
    np.testing.assert_allclose(result.cos_matrix, full.cos_matrix[np.ix_(idx, idx)], atol=1e-12)
    assert result.samples["pred"].shape == (32, 3)


def test_json_and_npz_round_trip(setup, tmp_path):
    adapter, batches = setup
    result = analyze(adapter, batches, model_name="toy", data_name="random")
    result.save(tmp_path)
    back = AnalysisResult.from_json(tmp_path / "analysis.json")
    for key in ("accuracy", "cos_matrix", "cka_matrix", "saturation_hist", "norm_ratio", "adjacent_cos",
                "final_agreement"):
        np.testing.assert_array_equal(np.asarray(getattr(back, key)), np.asarray(getattr(result, key)))
    assert back.theory["theorem_2_1"] == pytest.approx(result.theory["theorem_2_1"])
    assert back.effective_depth == result.effective_depth and back.layers == result.layers
    assert set(back.samples) == set(result.samples)
    np.testing.assert_array_equal(back.samples["pred"], result.samples["pred"])
    import json

    data = json.loads((tmp_path / "analysis.json").read_text())
    for key in ("n_layers", "layers", "n_samples", "accuracy", "true_class_prob", "max_prob", "entropy",
                "cos_to_last", "adjacent_cos", "cos_matrix", "cka_matrix", "cos_cka_agreement", "saturation_hist",
                "effective_depth", "norm_ratio", "theory", "cross_entropy", "saturation_cumulative", "final_agreement", "cos_box",
                "center", "cka_estimator", "zero_norm_count", "timing", "model", "data"):
        assert key in data, key
    assert data["adjacent_cos"][0] is None  # NaN is written as null


def test_per_sample_arrays_are_consistent(setup):
    adapter, batches = setup
    result = analyze(adapter, batches)
    s = result.samples
    logits = direct_layer_logits(adapter, batches)
    np.testing.assert_array_equal(s["pred"], logits.argmax(-1).T.numpy())
    np.testing.assert_allclose(s["logits"], logits.permute(1, 0, 2).numpy(), rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(s["labels"], torch.cat([b["labels"] for b in batches]).numpy())
    assert s["saturation_layer"].tolist() == np.asarray(result.layers)[saturation_positions(s["pred"])].tolist()
    np.testing.assert_allclose(s["max_prob"], logits.softmax(-1).max(-1).values.T.numpy(), rtol=1e-5)
    hist = np.bincount(np.searchsorted(result.layers, s["saturation_layer"]), minlength=len(result.layers))
    assert hist.tolist() == result.saturation_hist.tolist()
    assert result.theory["theorem_2_1"]["n_evaluated_triples"] == int(s["theorem_2_1_triples"].sum())


def test_straight_trajectories_satisfy_the_theory_checks():
    adapter = synthetic_adapter("straight")
    for center in ("none", "mean"):
        result = analyze(adapter, synthetic_batches(), center=center)
        t = result.theory
        assert t["theorem_2_1"]["triple_violation_rate"] == 0.0
        assert t["theorem_2_1"]["sample_violation_rate"] == 0.0
        assert t["theorem_2_1"]["cos_matrix_violation_rate"] == 0.0
        assert t["straightness"]["min"] == pytest.approx(1.0, abs=1e-12)
        assert t["geodesic_residual"]["max"] == pytest.approx(0.0, abs=1e-12)
    # COS to the last layer then increases monotonically along the line (mean over samples)
    assert np.all(np.diff(result.cos_to_last) > 0)


def test_rotating_trajectories_violate_half_of_the_triples():
    adapter = synthetic_adapter("rotate", n_layers=4, degrees=90.0)
    result = analyze(adapter, synthetic_batches(), center="none")
    t = result.theory
    assert t["theorem_2_1"]["triple_violation_rate"] == pytest.approx(0.5)   # 5 of 10 triples, every sample
    assert t["theorem_2_1"]["sample_violation_rate"] == 1.0
    # a full turn in the plane; the other coordinates stay, so the path is a loop around an axis
    assert t["straightness"]["max"] < 0.05
    # rotation preserves the norm; ||h_l|| / ||R h_l - h_l|| for 90 degrees is 1 / sqrt(2) in the plane part
    x0 = torch.cat([b["x0"] for b in synthetic_batches()])
    plane = x0[:, :2].norm(dim=-1)
    expected = (x0.norm(dim=-1) / (math.sqrt(2) * plane)).mean().item()
    np.testing.assert_allclose(result.norm_ratio[:-1], expected, rtol=1e-10)


def test_layerwise_readout_cheap_mode(setup):
    adapter, batches = setup
    quick = layerwise_readout(adapter, batches)
    full = analyze(adapter, batches)
    assert quick["layers"] == full.layers
    np.testing.assert_allclose(quick["accuracy"], full.accuracy)
    np.testing.assert_allclose(quick["cross_entropy"], full.cross_entropy)
    assert quick["perplexity"] is None and quick["n_samples"] == 32


def test_model_is_left_in_its_mode(setup):
    adapter, batches = setup
    adapter.train()
    analyze(adapter, batches, similarity=False)
    assert adapter.training and adapter.model.training
    # a fresh adapter object reports "training" while the wrapped model is in eval mode: keep eval
    adapter.model.eval()
    fresh = ToyAdapter(adapter.model)
    analyze(fresh, batches, similarity=False)
    assert not adapter.model.training


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_bf16_autocast_on_gpu_is_close_to_fp32(toy_model):
    adapter = ToyAdapter(toy_model).cuda()
    batches = toy_batches()
    ref = analyze(adapter, batches)
    half = analyze(adapter, batches, precision="bf16")
    np.testing.assert_allclose(half.cos_matrix, ref.cos_matrix, atol=0.05)
    np.testing.assert_allclose(half.true_class_prob, ref.true_class_prob, atol=0.05)
    assert half.config["precision"] == "bf16"
