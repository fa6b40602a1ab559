"""Layer removal (layer_removal=True) and permutation-null calibration (null_permutations=K) in the
analysis pass. References: the model's own forward with a block deleted from a copy of it (not the
adapter), direct cosines of traced features, and the metrics functions on the same samples."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from layertrace import metrics
from layertrace.analysis import AnalysisResult, analyze
from layertrace.analysis.removal import spearman
from layertrace.errors import LayertraceError
from layertrace.models import ToyAdapter, adapt

from .helpers import toy_batches
from .test_causal_lm import VOCAB, lm_batches

pytestmark = pytest.mark.filterwarnings("ignore::layertrace.metrics.DegenerateLayerWarning")


def _without_block(model, container: str, index: int):
    """A copy of the model with block ``index`` (0-based) removed from its own ModuleList."""
    clone = copy.deepcopy(model)
    parent, name = clone, container
    *path, name = container.split(".")
    for part in path:
        parent = getattr(parent, part)
    blocks = getattr(parent, name)
    setattr(parent, name, torch.nn.ModuleList(b for i, b in enumerate(blocks) if i != index))
    return clone


def test_toy_removal_matches_the_models_own_forward_without_the_block(toy_model):
    batches = toy_batches(n_batches=3)
    result = analyze(ToyAdapter(toy_model), batches, layer_removal=True)
    lr = result.layer_removal
    labels = torch.cat([b["labels"] for b in batches])
    assert lr["blocks"] == [1, 2, 3, 4] and lr["n_predictions"] == len(labels)
    assert lr["baseline_accuracy"] == pytest.approx(result.accuracy[-1])
    assert lr["baseline_cross_entropy"] == pytest.approx(result.cross_entropy[-1], rel=1e-5)
    for l in range(1, 5):
        reduced = _without_block(toy_model, "blocks", l - 1)
        with torch.no_grad():
            logits = torch.cat([reduced(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
                                for b in batches])
        assert lr["cross_entropy"][l - 1] == pytest.approx(float(F.cross_entropy(logits, labels)), rel=1e-5)
        assert lr["accuracy"][l - 1] == pytest.approx(float((logits.argmax(-1) == labels).double().mean()))
    np.testing.assert_allclose(lr["delta_cross_entropy"], lr["cross_entropy"] - lr["baseline_cross_entropy"])
    # block influence: 1 - mean raw cosine of the traced prediction features of layers l-1 and l
    with torch.no_grad():
        feats = torch.cat([ToyAdapter(toy_model).trace(b, with_logits=False).features for b in batches], dim=1)
    cos = F.cosine_similarity(feats[:-1].double(), feats[1:].double(), dim=-1).mean(dim=1).numpy()
    np.testing.assert_allclose(lr["block_influence"], 1.0 - cos, atol=1e-6)
    np.testing.assert_allclose(lr["adjacent_cos"], result.adjacent_cos[1:], atol=1e-12)
    expected = spearman(lr["block_influence"], lr["delta_cross_entropy"])
    assert lr["spearman"]["block_influence_vs_delta_cross_entropy"] == pytest.approx(expected)
    assert result.timing["layer_removal_s"] > 0


def test_causal_lm_removal_reports_perplexity_against_hf_without_the_block():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_layer=3, n_embd=32, n_head=2, vocab_size=VOCAB, n_positions=32)).eval()
    batches = lm_batches()
    lr = analyze(adapt(model), batches, layer_removal=True, similarity=False).layer_removal
    for l in range(1, 4):
        reduced = _without_block(model, "transformer.h", l - 1)
        reduced.config.n_layer = 2
        ce, n = 0.0, 0
        with torch.no_grad():
            for b in batches:
                logits = reduced(input_ids=b["input_ids"], attention_mask=b["attention_mask"], use_cache=False).logits.double()
                mask = b["attention_mask"].bool()
                scored = mask[:, :-1] & mask[:, 1:]
                ce += float(F.cross_entropy(logits[:, :-1][scored], b["input_ids"][:, 1:][scored], reduction="sum"))
                n += int(scored.sum())
        assert lr["perplexity"][l - 1] == pytest.approx(np.exp(ce / n), rel=1e-4)
    assert lr["delta_perplexity"][0] == pytest.approx(lr["perplexity"][0] - lr["baseline_perplexity"])
    assert np.all(np.isnan(lr["adjacent_cos"]))  # no similarity pass: not measured, never invented


def test_calibration_equals_the_metrics_functions_on_the_same_samples(toy_model):
    batches = toy_batches(n_batches=4)
    adapter = ToyAdapter(toy_model)
    result = analyze(adapter, batches, null_permutations=39, seed=3, null_max_samples=10_000)
    cal = result.calibration
    with torch.no_grad():
        feats = torch.cat([adapter.trace(b, with_logits=False).features for b in batches], dim=1)
    for metric, key in (("cos", "cos"), ("linear_cka", "cka")):
        ref = metrics.calibrated_similarity(feats, metric, n_permutations=39, seed=3)
        for field in ("score", "calibrated", "tau", "p_value"):
            np.testing.assert_allclose(cal[key][field], ref[field], atol=1e-6, err_msg=f"{key} {field}")
    assert cal["cka"]["estimator"] == "exact" and cal["cos"]["n_samples"] == feats.shape[1] == 32
    np.testing.assert_allclose(cal["cos"]["score"], result.cos_matrix, atol=1e-6)


def test_minibatch_calibration_streams_the_null_over_the_batches(toy_model):
    batches = toy_batches(n_batches=3)
    adapter = ToyAdapter(toy_model)
    result = analyze(adapter, batches, cka="minibatch", null_permutations=19, seed=5)
    acc = metrics.MinibatchCKA(adapter.n_layers + 1, null_permutations=19, seed=5)
    with torch.no_grad():
        for b in batches:
            acc.update(adapter.trace(b, with_logits=False).features)
    ref = acc.calibrated()
    assert result.calibration["cka"]["estimator"] == "minibatch"
    for field in ("score", "calibrated", "tau", "p_value"):
        np.testing.assert_allclose(result.calibration["cka"][field], ref[field], atol=1e-9)


def test_calibration_and_removal_round_trip_through_json(toy_model, tmp_path):
    result = analyze(ToyAdapter(toy_model), toy_batches(n_batches=2), null_permutations=19, layer_removal=True)
    back = AnalysisResult.from_json(result.save(tmp_path / "run"))
    np.testing.assert_allclose(back.calibration["cka"]["calibrated"], result.calibration["cka"]["calibrated"])
    np.testing.assert_allclose(back.layer_removal["block_influence"], result.layer_removal["block_influence"])
    assert back.layer_removal["blocks"] == [1, 2, 3, 4]


def test_bad_options_are_one_line_errors(toy_model):
    with pytest.raises(LayertraceError, match="at least 19"):
        analyze(ToyAdapter(toy_model), toy_batches(n_batches=1), null_permutations=5)
    with pytest.raises(LayertraceError, match="feature cache"):
        analyze(ToyAdapter(toy_model), toy_batches(n_batches=1), null_permutations=19, cache="none")


def test_cli_options_write_both_entries(tmp_path):
    from layertrace.cli.main import main

    out = tmp_path / "run"
    assert main(["analyze", "--model", "vit-demo", "--data", "mnist-5k", "--limit", "20", "--batch_size", "10",
                 "--out", str(out), "--null_permutations", "19", "--layer_removal", "true",
                 "--progress", "false"]) == 0
    data = json.loads((out / "analysis.json").read_text())
    assert data["config"]["layer_removal"] is True and data["calibration"]["n_permutations"] == 19
    n = len(data["layers"])
    assert np.asarray(data["calibration"]["cka"]["calibrated"]).shape == (n, n)
    assert len(data["layer_removal"]["delta_accuracy"]) == data["n_layers"]


def test_removal_sample_cap_takes_every_kth_batch(toy_model):
    batches = toy_batches(n_batches=4)  # 4 x 8 samples; a cap of 16 -> every 2nd batch (0 and 2)
    capped = analyze(ToyAdapter(toy_model), batches, layer_removal=True, layer_removal_samples=16,
                     similarity=False).layer_removal
    direct = analyze(ToyAdapter(toy_model), [batches[0], batches[2]], layer_removal=True,
                     similarity=False).layer_removal
    assert capped["n_batches"] == 2 and capped["n_predictions"] == 16
    np.testing.assert_allclose(capped["delta_cross_entropy"], direct["delta_cross_entropy"], rtol=1e-6)
