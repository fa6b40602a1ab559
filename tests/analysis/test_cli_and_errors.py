"""Bad input gives one-line errors; the CLI writes its outputs; the example config parses."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from layertrace.analysis import AnalysisResult, analyze
from layertrace.errors import LayertraceError
from layertrace.models import ToyAdapter

from .helpers import toy_batches

pytestmark = pytest.mark.filterwarnings("ignore::layertrace.metrics.DegenerateLayerWarning")
ROOT = Path(__file__).resolve().parents[2]


def one_line(exc_info) -> str:
    text = str(exc_info.value)
    assert "\n" not in text
    return text


@pytest.fixture
def adapter(toy_model):
    return ToyAdapter(toy_model)


def test_label_out_of_range(adapter):
    batches = toy_batches(n_batches=2)
    batches[1]["labels"][3] = 7
    with pytest.raises(LayertraceError) as exc:
        analyze(adapter, batches)
    assert "label 7 in batch 1 is out of range for a model with 3 classes" in one_line(exc)
    batches[1]["labels"][3] = -1
    with pytest.raises(LayertraceError, match="out of range"):
        analyze(adapter, batches)


def test_empty_data(adapter):
    with pytest.raises(LayertraceError) as exc:
        analyze(adapter, [])
    assert "no batch" in one_line(exc)
    with pytest.raises(LayertraceError, match="no batch"):
        analyze(adapter, toy_batches(), max_batches=0)


def test_class_count_mismatch(adapter):
    with pytest.raises(LayertraceError) as exc:
        analyze(adapter, toy_batches(), num_classes=10)
    assert "3 classes but the data has 10" in one_line(exc)


def test_nan_activations(toy_model):
    with torch.no_grad():
        toy_model.blocks[2].mlp[0].weight[0, 0] = float("nan")
    with pytest.raises(LayertraceError) as exc:
        analyze(ToyAdapter(toy_model), toy_batches(n_batches=1))
    assert "non-finite activations (NaN or inf) at layer 3 in batch 0" in one_line(exc)


def test_missing_labels_and_unknown_option(adapter):
    batches = toy_batches(n_batches=1)
    del batches[0]["labels"]
    with pytest.raises(LayertraceError, match="no 'labels'"):
        analyze(adapter, batches)
    with pytest.raises(LayertraceError) as exc:
        analyze(adapter, toy_batches(), centre="mean")
    assert "did you mean 'center'" in one_line(exc)
    with pytest.raises(LayertraceError, match="not one of"):
        analyze(adapter, toy_batches(), cache="memory")


def test_cli_writes_outputs_and_one_line_errors(tmp_path, capsys):
    from layertrace.cli.main import main

    out = tmp_path / "run"
    assert main(["analyze", "--model", "vit-demo", "--data", "mnist-5k", "--limit", "20", "--batch_size", "8",
                 "--out", str(out), "--layers", "0::2", "--progress", "false"]) == 0
    data = json.loads((out / "analysis.json").read_text())
    assert data["layers"] == [0, 2, 4, 6] and data["n_samples"] == 20 and data["model"] == "vit-demo"
    assert data["config"]["split"] == "test"
    result = AnalysisResult.from_json(out / "analysis.json")
    assert result.samples["pred"].shape == (20, 4)
    from layertrace.analysis.config import AnalyzeConfig
    from layertrace.config import load_config

    cfg = load_config(AnalyzeConfig, out / "analyze-config.yaml")
    assert cfg.limit == 20 and cfg.layers == "0::2" and cfg.data == "mnist-5k"
    capsys.readouterr()
    # class-count mismatch and missing inputs: exit code 2, one line on stderr
    code = main(["analyze", "--model", "vit-demo", "--data", "mnist-5k", "--num_classes", "3", "--limit", "8",
                 "--out", str(tmp_path / "bad")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "3 output classes but dataset 'mnist-5k' has 10" in err and "\n" not in err
    assert main(["analyze", "--data", "mnist-5k", "--out", str(tmp_path / "bad")]) == 2
    assert "no model given" in capsys.readouterr().err


def test_example_config_parses_and_names_its_command():
    from layertrace.analysis.config import AnalyzeConfig
    from layertrace.config import load_config

    path = ROOT / "configs" / "analyze.yaml"
    first = path.read_text().splitlines()[0]
    assert first.startswith("# layertrace analyze --config configs/analyze.yaml")
    cfg = load_config(AnalyzeConfig, path)
    assert cfg.model == "minilm-cls" and cfg.limit == 2000 and cfg.epsilons == [0.01, 0.025, 0.05, 0.1]


def test_too_little_data_for_similarity(adapter):
    one = toy_batches(n_batches=1, batch_size=1, pad=False)
    with pytest.raises(LayertraceError, match="at least 2 samples, got 1"):
        analyze(adapter, one)
    assert analyze(adapter, one, similarity=False).n_samples == 1   # the readout alone works
    small = toy_batches(n_batches=2, batch_size=3)
    with pytest.raises(LayertraceError, match="batches of at least 4 samples"):
        analyze(adapter, small, cka="minibatch")


def test_causal_lm_data_is_cut_into_token_blocks(tmp_path):
    from types import SimpleNamespace

    from layertrace.analysis.config import AnalyzeConfig
    from layertrace.analysis.run import _lm_batches

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "notes.txt").write_text("\n\n".join(f"document number {i} " * 5 for i in range(40)))
    loaded = SimpleNamespace(tokenizer=lambda text: {"input_ids": [ord(c) % 50 for c in text]})
    cfg = AnalyzeConfig(model="x", data=str(corpus), split="train", limit=5, batch_size=2)
    batches = _lm_batches(cfg, loaded, block=16)
    got = list(batches)
    assert len(batches) == 3 and [b["input_ids"].shape[0] for b in got] == [2, 2, 1]
    assert all(b["input_ids"].shape[1] == 16 and bool(b["attention_mask"].all()) for b in got)
    assert list(batches)[0]["input_ids"].equal(got[0]["input_ids"])   # re-iterable, same blocks
    with pytest.raises(LayertraceError, match="fewer than one block of 100000"):
        _lm_batches(cfg, loaded, block=100_000)
