"""`layertrace exit`, exit_from_config and compare_runs on real (embedded) data with small models."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from layertrace.cli.main import main
from layertrace.io import read_json


FMNIST = Path("/usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz")
needs_fmnist = pytest.mark.skipif(not FMNIST.is_file(), reason="needs the Debian package dataset-fashion-mnist")

FAST = ["--measure_samples", "32", "--measure_samples_batch1", "4", "--repeats", "1", "--batch_size", "16",
        "--threads", "1"]


def make_run(folder: Path, multi_head: bool, seed: int = 0) -> Path:
    """A run folder as `layertrace train` lays it out (model/, preprocess.json[, heads.safetensors]),
    holding vit-demo with random weights (a sharpened head, so confidences spread)."""
    from layertrace.io import write_json
    from layertrace.models import load_model
    from layertrace.run_folder import TrainSummary
    from layertrace.training.heads import PerLayerHeads, save_heads

    loaded = load_model("vit-demo", seed=seed)
    with torch.no_grad():
        loaded.model.classifier.weight.mul_(20.0)
    loaded.save_pretrained(folder / "model")
    write_json(folder / "preprocess.json", loaded.preprocess)
    mode = "multi-head" if multi_head else "aligned"
    TrainSummary(run_dir=str(folder), mode=mode, model="vit-demo", data="fashion-mnist", task="image-classification",
                 steps=0, samples_seen=0, wall_time_s=0.0, final_eval=None, layers=[], layer_weights=[]
                 ).to_json(folder / "train_summary.json")  # what training writes last (random weights: 0 steps)
    if multi_head:
        heads = PerLayerHeads(loaded.adapter, range(1, loaded.adapter.n_layers + 1))
        torch.manual_seed(seed + 1)
        with torch.no_grad():
            for p in heads.heads.parameters():
                p.add_(torch.randn_like(p) * 0.3)
        save_heads(heads, folder / "heads.safetensors")
    return folder


@needs_fmnist
def test_exit_cli_writes_exit_json(tmp_path):
    run = make_run(tmp_path / "run", multi_head=False)
    out = tmp_path / "exit"
    code = main(["exit", "--model", str(run), "--data", "fashion-mnist", "--limit", "48", "--policy", "confidence",
                 "--thresholds", "0.0,0.3,0.5,0.7,0.9,1.01", "--out", str(out), *FAST])
    assert code == 0
    body = read_json(out / "exit.json")
    assert (out / "exit-config.yaml").is_file()
    for key in ("policy", "full_accuracy", "points", "params", "flops", "oracle", "timing", "layer_accuracy"):
        assert key in body
    assert body["policy"] == "confidence" and body["readout"] == "shared" and body["n_samples"] == 48
    assert set(body["params"]) >= {"shared_head", "per_layer_heads"}
    assert body["params"]["per_layer_heads"] > body["params"]["shared_head"]
    points = body["points"]
    assert [p["threshold"] for p in points] == [0.0, 0.3, 0.5, 0.7, 0.9, 1.01]
    for p in points:
        assert set(p) >= {"threshold", "accuracy", "speedup", "measured_speedup", "exit_hist"}
        assert sum(p["exit_hist"]) == 48 and len(p["exit_hist"]) == 6
        assert p["measured_speedup"] > 0 and p["measured_speedup_batch1"] > 0
        assert p["runtime_agreement"] == 1.0  # the executor reproduces the simulation on the timed samples
    assert points[0]["exit_hist"][0] == 48 and points[0]["speedup"] == 6.0
    assert points[-1]["exit_hist"][-1] == 48 and points[-1]["accuracy"] == body["full_accuracy"]
    assert body["oracle"]["accuracy"] == pytest.approx(body["full_accuracy"])
    assert body["timing"]["batch"]["batch_size"] == 16 and body["timing"]["batch1"]["batch_size"] == 1
    assert body["timing"]["threads"] == 1
    # the default executor pools the timed batches (32 samples = 2 batches of 16); batch 1 is per sample
    assert body["timing"]["batch"]["executor"] == "stream" and body["timing"]["batch"]["n_samples"] == 32
    assert body["timing"]["batch1"]["executor"] == "batch"
    assert "batch_per_batch" not in body["timing"] and points[0]["measured_speedup_per_batch"] is None


@needs_fmnist
def test_exit_executor_both_reports_the_per_batch_executor_too(tmp_path):
    run = make_run(tmp_path / "run", multi_head=False)
    out = tmp_path / "exit"
    assert main(["exit", "--model", str(run), "--data", "fashion-mnist", "--limit", "48", "--thresholds", "0.3,0.9",
                 "--out", str(out), "--executor", "both", "--stream_window", "2", *FAST]) == 0
    body = read_json(out / "exit.json")
    assert body["timing"]["batch"]["executor"] == "stream" and body["timing"]["batch"]["window"] == 2
    assert body["timing"]["batch_per_batch"]["executor"] == "batch"
    assert body["timing"]["batch_per_batch"]["n_samples"] == body["timing"]["batch"]["n_samples"] == 32
    for p in body["points"]:
        assert p["measured_speedup"] > 0 and p["measured_speedup_per_batch"] > 0 and p["runtime_agreement"] == 1.0


@needs_fmnist
def test_exit_uses_per_layer_heads_of_a_multi_head_run(tmp_path):
    from layertrace.exits import exit_from_config, ExitConfig

    run = make_run(tmp_path / "multi", multi_head=True)
    cfg = ExitConfig(model=str(run), data="fashion-mnist", limit=32, thresholds=[0.5, 0.9], measure=False,
                     batch_size=16)
    body = exit_from_config(cfg, write=False)
    shared = exit_from_config(ExitConfig(model=str(run), data="fashion-mnist", limit=32, thresholds=[0.5, 0.9],
                                         measure=False, batch_size=16, heads="shared"), write=False)
    assert body["readout"] == "per-layer heads" and shared["readout"] == "shared"
    assert body["layer_accuracy"][-1] == shared["layer_accuracy"][-1]   # layer L reads the model's own head
    assert body["params"]["this_run"] > body["params"]["shared_head"]
    assert body["points"][0]["measured_speedup"] is None


@needs_fmnist
def test_compare_runs_table(tmp_path):
    from layertrace.exits import compare_runs
    from layertrace.exits.run import comparison_markdown

    runs = [make_run(tmp_path / "fmnist-vit-aligned", multi_head=False),
            make_run(tmp_path / "fmnist-vit-multi-head", multi_head=True)]
    table = compare_runs(runs, "fashion-mnist", "confidence", [0.3, 0.6, 0.9, 1.01], {"max_accuracy_drop": 0.05},
                         limit=32, batch_size=16, measure_samples=16, measure_samples_batch1=2, repeats=1)
    assert [r["run"] for r in table["rows"]] == ["fmnist-vit-aligned", "fmnist-vit-multi-head"]
    assert [r["mode"] for r in table["rows"]] == ["aligned", "multi-head"]
    for row in table["rows"]:
        assert row["accuracy"] >= row["full_accuracy"] - 0.05 - 1e-12
        assert row["measured_speedup_batch1"] > 0 and row["measured_speedup_batch64"] > 0
        assert row["params"] in (row["params_shared_head"], table["runs"][row["run"]]["params"]["this_run"])
    md = comparison_markdown(table)
    assert "fmnist-vit-multi-head" in md and md.count("\n") == 6


def test_exit_cli_errors(tmp_path, capsys):
    assert main(["exit", "--data", "fashion-mnist", "--out", str(tmp_path)]) == 2
    assert "no model given" in capsys.readouterr().err
    assert main(["exit", "--model", "vit-demo", "--data", "fashion-mnist", "--policy", "confidense",
                 "--out", str(tmp_path)]) == 2
    assert "did you mean 'confidence'" in capsys.readouterr().err


@needs_fmnist
def test_exit_cli_compare_writes_table(tmp_path):
    runs = [make_run(tmp_path / "fmnist-vit-standard", multi_head=False, seed=1),
            make_run(tmp_path / "fmnist-vit-multi-head", multi_head=True)]
    out = tmp_path / "cmp"
    code = main(["exit", "--compare", ",".join(map(str, runs)), "--data", "fashion-mnist", "--limit", "32",
                 "--thresholds", "0.3,0.6,0.9,1.01", "--target_speedup", "1.2", "--measure", "false",
                 "--batch_size", "16", "--out", str(out)])
    assert code == 0
    table = read_json(out / "comparison.json")
    assert (out / "comparison.md").read_text().count("fmnist-vit-") == 2 and (out / "exit-config.yaml").is_file()
    assert [r["readout"] for r in table["rows"]] == ["shared", "per-layer heads"]
    assert table["target"] == {"min_speedup": 1.2}
    for row in table["rows"]:
        points = table["runs"][row["run"]]["points"]
        fast_enough = [p for p in points if p["speedup"] >= 1.2]
        if fast_enough:  # the most accurate point at >= 1.2x layer speed-up
            assert row["speedup"] >= 1.2 and row["accuracy"] == max(p["accuracy"] for p in fast_enough)
        assert row["measured_speedup_batch64"] is None
    assert main(["exit", "--compare", ",".join(map(str, runs)), "--model", "vit-demo", "--data", "fashion-mnist",
                 "--out", str(out)]) == 2


@needs_fmnist
def test_analyze_and_exit_into_a_training_run_folder_keep_its_config(tmp_path):
    """Writing analysis.json / exit.json beside a run's training config must not overwrite that
    config.yaml (a later `train --out` of the same folder resumes from it)."""
    run = make_run(tmp_path / "run", multi_head=False)
    training_config = "model:\n  spec: vit-demo\ntrain:\n  mode: aligned\n"
    (run / "config.yaml").write_text(training_config)
    assert main(["analyze", "--model", str(run), "--data", "fashion-mnist", "--limit", "16", "--batch_size", "8",
                 "--out", str(run), "--progress", "false"]) == 0
    assert main(["exit", "--model", str(run), "--data", "fashion-mnist", "--limit", "16", "--thresholds", "0.5,0.9",
                 "--measure", "false", "--out", str(run), *FAST]) == 0
    assert (run / "config.yaml").read_text() == training_config
    assert {"analysis.json", "analyze-config.yaml", "exit.json", "exit-config.yaml"} <= {p.name for p in run.iterdir()}
    from layertrace.report.runs import load_run

    assert load_run(run).mode == "aligned"
