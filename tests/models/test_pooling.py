"""pooling= cls | mean | last | auto: the prediction feature, chosen once in the adapter and kept by
every stage (train -> run folder -> exit / analyze / export -> load_model)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch.testing import assert_close

from layertrace.errors import LayertraceError
from layertrace.models import adapt
from layertrace.models.zoo import get

FMNIST = Path("/usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz")
needs_fmnist = pytest.mark.skipif(not FMNIST.is_file(), reason="needs the Debian package dataset-fashion-mnist")


def text_batch():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 99, (3, 6), generator=g)
    mask = torch.tensor([[1] * 6, [1, 1, 1, 1, 0, 0], [1, 1, 1, 0, 0, 0]])
    ids[mask == 0] = 0
    return {"input_ids": ids, "attention_mask": mask}


@pytest.mark.parametrize("name", ["bert", "llama-cls", "deberta"])
def test_each_pooling_reads_the_token_it_names(name):
    model = get(name).build()
    batch = text_batch()
    mask = batch["attention_mask"].float()
    with torch.no_grad():
        hidden = model(**batch, output_hidden_states=True).hidden_states[1]
        expected = {
            "cls": hidden[:, 0],
            "mean": (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True),
            "last": hidden[torch.arange(3), mask.sum(1).long() - 1],
        }
        for pooling, want in expected.items():
            a = adapt(model, pooling=pooling)
            assert a.pooling == pooling
            got = a.trace(batch, layers=[1])
            assert_close(got.features[0], want, atol=1e-5, rtol=1e-4)
            assert_close(got.logits[0], a.readout(want))
            # padding leaves the pooled feature of a sample alone
            alone = a.trace({"input_ids": batch["input_ids"][2:, :3], "attention_mask": mask[2:, :3].long()},
                            layers=[1])
            assert_close(alone.features[0, 0], got.features[0, 2], atol=1e-5, rtol=1e-4)


def test_auto_is_the_models_own_choice_and_bad_choices_are_refused():
    bert, llama_cls = get("bert").build(), get("llama-cls").build()
    assert adapt(bert).spec.select == "cls" and adapt(llama_cls).spec.select == "last"
    with pytest.raises(LayertraceError, match="pooling='max' is unknown"):
        adapt(bert, pooling="max")
    with pytest.raises(LayertraceError, match="causal LM reads every position"):
        adapt(get("gpt2").build(), pooling="mean")


def test_vision_mean_pooling_averages_every_token():
    model = get("vit").build()
    x = {"pixel_values": torch.randn(2, 3, 16, 16)}
    with torch.no_grad():
        hidden = model(**x, output_hidden_states=True).hidden_states[2]
        got = adapt(model, pooling="mean").trace(x, layers=[2])
    assert_close(got.features[0], hidden.mean(1))


def test_load_model_keeps_the_stored_pooling(tmp_path):
    from layertrace.models import load_model, save_model_dir

    model = get("bert").build()
    save_model_dir(model, tmp_path / "m", preprocess={"modality": "text", "max_length": 16, "pooling": "mean"})
    loaded = load_model(tmp_path / "m")
    assert loaded.adapter.pooling == "mean" and loaded.preprocess["pooling"] == "mean"
    assert load_model(tmp_path / "m", pooling="cls").adapter.pooling == "cls"
    assert "pooling" not in load_model(tmp_path / "m", pooling="auto").preprocess


@needs_fmnist
def test_a_run_trained_with_mean_pooling_exits_analyzes_and_exports_with_it(tmp_path):
    from layertrace.cli.main import main
    from layertrace.models import load_model

    run = tmp_path / "run"
    assert main(["train", "--model.spec", "vit-demo", "--model.pooling", "mean", "--data.name", "fashion-mnist",
                 "--data.train_limit", "64", "--data.eval_limit", "32", "--train.mode", "aligned",
                 "--train.steps", "2", "--train.batch_size", "32", "--train.progress", "false",
                 "--out", str(run)]) == 0
    assert json.loads((run / "preprocess.json").read_text())["pooling"] == "mean"
    assert "pooling: mean" in (run / "config.yaml").read_text()
    loaded = load_model(run)
    assert loaded.adapter.pooling == "mean"

    out = tmp_path / "exit"
    assert main(["exit", "--model", str(run), "--data", "fashion-mnist", "--limit", "16", "--thresholds", "0.5",
                 "--measure", "false", "--batch_size", "16", "--out", str(out)]) == 0
    assert json.loads((out / "exit.json").read_text())["pooling"] == "mean"

    ana = tmp_path / "ana"
    assert main(["analyze", "--model", str(run), "--model.pooling", "cls", "--data", "fashion-mnist", "--limit", "16",
                 "--batch_size", "8", "--out", str(ana)]) == 0
    assert json.loads((ana / "analysis.json").read_text())["config"]["pooling"] == "cls"

    exported = tmp_path / "exported"
    assert main(["export", "--model", str(run), "--layers", "3", "--out", str(exported)]) == 0
    assert json.loads((exported / "preprocess.json").read_text())["pooling"] == "mean"
    again = load_model(exported)
    assert again.adapter.pooling == "mean" and again.adapter.n_layers == 3
    x = {"pixel_values": torch.randn(4, 1, 28, 28)}
    with torch.no_grad():
        assert_close(again.adapter(x), loaded.adapter(x, upto=3), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("command", ["analyze", "exit", "train", "export"])
def test_every_stage_takes_model_pooling(command):
    from layertrace.cli.main import build_parser
    from layertrace.config import overrides_from_args

    parser, _ = build_parser(command)
    required = ["--out", "x"] if command == "train" else []  # train's --out is a plain required option
    args = parser.parse_args(["--model.pooling", "mean", *required])
    assert set(overrides_from_args(args).values()) == {"mean"}
    assert "--model.pooling" in parser.format_help()


def test_hf_trainer_loss_takes_the_pooling():
    from layertrace.training.hf_trainer import aligned_compute_loss
    from layertrace.training.objective import TrainingObjective
    from layertrace.training.losses import weights_for_layers

    model = get("bert").build()
    batch = {**text_batch(), "labels": torch.tensor([0, 2, 1])}
    mean_loss, _ = aligned_compute_loss(model, batch, pooling="mean")
    cls_loss, _ = aligned_compute_loss(model, batch)
    a = adapt(model, pooling="mean")
    chosen = list(range(1, a.n_layers + 1))
    want = TrainingObjective(a, "aligned", chosen, weights_for_layers("linear", a.n_layers, chosen))(batch, step=2).total
    assert_close(mean_loss, want)
    assert not torch.allclose(mean_loss, cls_loss)
