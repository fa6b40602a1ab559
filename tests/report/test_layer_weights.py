"""The layer-weight ablation (paper's Fig. 15) in the report: sets, figure, table, finding.

Fixture runs: synthetic analysis.json files (tests/report/fixtures.py) under training configs in the
resolved ``config.yaml`` layout of ``layertrace train`` (model / data / train sections), with accuracy
curves chosen so the claim holds or fails on purpose; plus two real 3-step vit-demo trainings on
Fashion-MNIST (linear vs uniform), analysed, whose finding is recomputed here from their JSON.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from layertrace.report import build_report
from layertrace.report.findings import all_findings
from layertrace.report.layer_weights import ablation_sets, check_layer_weights, layer_weight_rows, weights_of
from layertrace.report.runs import load_runs

from .fixtures import analysis_dict

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "paper" / "vit-fmnist-uniform-lambda.yaml"
FMNIST = Path("/usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz")
needs_fmnist = pytest.mark.skipif(not FMNIST.is_file(), reason="needs the Debian package dataset-fashion-mnist")

LINEAR = [0.10, 0.40, 0.55, 0.70, 0.80, 0.86, 0.90]


def _train_config(weights, **train):
    return {"model": {"spec": "vit-demo", "final_norm": True},
            "data": {"name": "fashion-mnist", "train_limit": 20000},
            "train": {"mode": "aligned", "layers": "1:", "layer_weights": weights, "epochs": 2, "lr": 1e-3,
                      "seed": 0, "log_every": 25, **train}}


def _run(root: Path, name: str, weights, accuracy, **train) -> Path:
    d = root / name
    d.mkdir(parents=True)
    (d / "config.yaml").write_text(yaml.safe_dump(_train_config(weights, **train)))
    L = len(accuracy) - 1
    cos = [0.2 + 0.8 * l / L for l in range(L + 1)]
    (d / "analysis.json").write_text(json.dumps(analysis_dict(L, accuracy, cos, cos)))
    return d


def _finding(root, *dirs):
    found = check_layer_weights(load_runs(list(dirs)))
    assert len(found) == 1
    return found[0]


def test_uniform_higher_shallow_and_lower_last_holds(tmp_path):
    lin = _run(tmp_path, "fmnist-vit-aligned", "linear", LINEAR)
    # uniform: layers 1..3 mean +10 pt, last layer -1 pt (the paper's Fig. 15 shape)
    uni = _run(tmp_path, "fmnist-vit-uniform-aligned", "uniform", [0.10, 0.50, 0.65, 0.80, 0.82, 0.86, 0.89],
               log_every=5, checkpoint_every=7)  # cosmetic keys differ: still one ablation set
    f = _finding(tmp_path, lin, uni)
    assert f.status == "holds"
    assert "uniform 65.00%, linear 55.00%" in f.evidence and "layer 6: uniform 89.00%, linear 90.00%" in f.evidence
    assert [g.status for g in all_findings(load_runs([lin, uni])) if "Fig. 15" in g.claim] == ["holds"]


@pytest.mark.parametrize("uniform, why", [
    ([0.10, 0.50, 0.65, 0.80, 0.82, 0.86, 0.91], "not lower"),     # shallow better but the last layer too
    ([0.10, 0.40, 0.55, 0.70, 0.82, 0.86, 0.88], "not higher"),    # shallow equal (not strictly higher)
])
def test_either_half_failing_does_not_hold(tmp_path, uniform, why):
    lin = _run(tmp_path, "a-vit-aligned", "linear", LINEAR)
    uni = _run(tmp_path, "b-vit-aligned", "uniform", uniform)
    f = _finding(tmp_path, lin, uni)
    assert f.status == "does not hold" and why in f.evidence


def test_runs_that_differ_in_more_than_the_weights_are_not_compared(tmp_path):
    lin = _run(tmp_path, "a-vit-aligned", "linear", LINEAR)
    uni = _run(tmp_path, "b-vit-aligned", "uniform", LINEAR, lr=3e-4)
    assert ablation_sets(load_runs([lin, uni])) == []
    assert check_layer_weights(load_runs([lin, uni])) == []
    # a standard run with other weights is no part of an ablation of aligned training
    std = _run(tmp_path, "c-vit-standard", "uniform", LINEAR)
    (std / "config.yaml").write_text(yaml.safe_dump(dict(_train_config("uniform"), train={
        **_train_config("uniform")["train"], "mode": "standard"})))
    assert ablation_sets(load_runs([lin, std])) == []


def test_report_overlays_the_curves_and_tabulates_them(tmp_path):
    lin = _run(tmp_path, "fmnist-vit-aligned", "linear", LINEAR)
    uni = _run(tmp_path, "fmnist-vit-uniform-aligned", "uniform", [0.10, 0.50, 0.65, 0.80, 0.82, 0.86, 0.89])
    last = _run(tmp_path, "fmnist-vit-last-aligned", "last", [0.10, 0.12, 0.15, 0.30, 0.60, 0.85, 0.91])
    runs = load_runs([lin, uni, last])
    assert [weights_of(r) for r in ablation_sets(runs)[0]] == ["linear", "uniform", "last"]
    (header, rows), = layer_weight_rows(runs)
    assert header[:3] == ["layer weights", "run", "l=0"] and rows[1][:3] == ["uniform", "fmnist-vit-uniform-aligned",
                                                                             "10.00"]
    paths = build_report([lin, uni, last], tmp_path / "out" / "report.html")
    html = paths.html.read_text()
    assert "Layer-weight ablation: linear vs uniform vs last" in html
    summary = paths.summary.read_text()
    assert "## Layer-weight ablation" in summary and "| uniform | fmnist-vit-uniform-aligned | 10.00 | 50.00" in summary
    assert "Fig. 15" in summary


@needs_fmnist
@pytest.mark.slow
def test_two_real_tiny_trainings_linear_vs_uniform(tmp_path):
    """3-step vit-demo trainings that differ only in train.layer_weights, analysed on 64 test images:
    the finding is drawn and its verdict is the one the test recomputes from analysis.json."""
    from layertrace.cli.main import main

    dirs = []
    for weights, name in (("linear", "fmnist-vit-aligned"), ("uniform", "fmnist-vit-uniform-aligned")):
        out = tmp_path / name
        assert main(["train", "--config", str(CONFIG), "--train.layer_weights",
                     weights, "--train.steps", "3", "--data.train_limit", "96", "--data.eval_limit", "32",
                     "--train.batch_size", "32", "--train.progress", "false", "--train.device", "cpu",
                     "--out", str(out)]) == 0
        assert main(["analyze", "--model", str(out), "--data", "fashion-mnist", "--limit", "64",
                     "--device", "cpu", "--out", str(out)]) == 0
        dirs.append(out)
    runs = load_runs(dirs)
    assert [weights_of(r) for r in runs] == ["linear", "uniform"]
    f = _finding(tmp_path, *dirs)
    acc = [json.loads((d / "analysis.json").read_text())["accuracy"] for d in dirs]
    L = len(acc[0]) - 1
    half = range(1, L // 2 + 1)
    expected = (sum(acc[1][l] for l in half) > sum(acc[0][l] for l in half)) and acc[1][L] < acc[0][L]
    assert f.status == ("holds" if expected else "does not hold")
    html = build_report(dirs, tmp_path / "report.html").html.read_text()
    assert "Layer-weight ablation: linear vs uniform" in html


def test_ablation_config_is_the_demo_recipe_with_uniform_weights():
    from dataclasses import asdict

    from layertrace.config import load_config
    from layertrace.training.config import TrainConfig

    uni = asdict(load_config(TrainConfig, str(CONFIG)))
    lin = asdict(load_config(TrainConfig, str(CONFIG.parents[1] / "demo" / "vit-fmnist.yaml")))
    assert (uni["train"].pop("layer_weights"), lin["train"].pop("layer_weights")) == ("uniform", "linear")
    assert uni == lin
    assert CONFIG.read_text().startswith("# layertrace train --config configs/paper/vit-fmnist-uniform-lambda.yaml")
