"""Elastic export: the exported k-block model, loaded with plain transformers Auto classes, predicts
exactly what layer k's shared readout of the original model predicts."""

from __future__ import annotations

import pytest
import torch

from layertrace.cli.main import main

import transformers


def saved_vit(folder):
    from layertrace.models import load_model

    torch.manual_seed(0)
    cfg = transformers.ViTConfig(image_size=16, patch_size=4, num_channels=1, hidden_size=32, num_hidden_layers=5,
                                 num_attention_heads=4, intermediate_size=64, num_labels=4, initializer_range=0.2)
    transformers.ViTForImageClassification(cfg).save_pretrained(folder)
    return load_model(str(folder))


def saved_bert(folder):
    from layertrace.models import load_model

    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=5, num_attention_heads=4,
                                  intermediate_size=64, max_position_embeddings=32, num_labels=3,
                                  initializer_range=0.2)
    transformers.BertForSequenceClassification(cfg).save_pretrained(folder)
    return load_model(str(folder))


def image_batch():
    return {"pixel_values": torch.randn(12, 1, 16, 16, generator=torch.Generator().manual_seed(1))}


def text_batch():
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(5, 100, (12, 9), generator=g)
    mask = torch.ones_like(ids)
    mask[2, 4:] = 0
    mask[7, 6:] = 0
    ids[mask == 0] = 0
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}


@pytest.mark.parametrize("family", ["vit", "bert"])
@pytest.mark.parametrize("k", [1, 3, 5])
def test_exported_model_equals_layer_k_readout(tmp_path, family, k):
    loaded = (saved_vit if family == "vit" else saved_bert)(tmp_path / "source")
    batch = image_batch() if family == "vit" else text_batch()
    out = tmp_path / f"export-{k}"
    assert main(["export", "--model", str(tmp_path / "source"), "--layers", str(k), "--out", str(out)]) == 0
    auto = (transformers.AutoModelForImageClassification if family == "vit"
            else transformers.AutoModelForSequenceClassification)
    exported = auto.from_pretrained(str(out), local_files_only=True).eval()
    assert exported.config.num_hidden_layers == k
    with torch.no_grad():
        expected = loaded.adapter(batch, upto=k)
        got = exported(**batch).logits
    assert torch.equal(got.argmax(-1), expected.argmax(-1))
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    # the early-exit executor's fixed-layer policy (elastic depth) serves the same predictions
    from layertrace.exits import run_early_exit

    fixed = run_early_exit(loaded.adapter, batch, "fixed", k)
    assert torch.equal(fixed.predictions, got.argmax(-1))


def test_export_several_depths_from_a_run_folder(tmp_path):
    from layertrace.io import write_json

    loaded = saved_vit(tmp_path / "run" / "model")
    write_json(tmp_path / "run" / "preprocess.json", {"modality": "image", "image_size": 16, "channels": 1,
                                                      "image_mean": [0.5], "image_std": [0.5]})
    out = tmp_path / "elastic"
    assert main(["export", "--model", str(tmp_path / "run"), "--layers", "2::2", "--out", str(out)]) == 0
    for k in (2, 4):
        folder = out / f"layers-{k}"
        assert (folder / "model.safetensors").is_file() and (folder / "preprocess.json").is_file()
        exported = transformers.AutoModelForImageClassification.from_pretrained(str(folder)).eval()
        with torch.no_grad():
            torch.testing.assert_close(exported(**image_batch()).logits, loaded.adapter(image_batch(), upto=k),
                                       rtol=1e-5, atol=1e-5)


def test_export_errors(tmp_path, capsys):
    saved_vit(tmp_path / "source")
    assert main(["export", "--model", str(tmp_path / "source"), "--layers", "0", "--out", str(tmp_path / "o")]) == 2
    assert "layer 0" in capsys.readouterr().err
    assert main(["export", "--model", str(tmp_path / "source"), "--layers", "9", "--out", str(tmp_path / "o")]) == 2
    assert "out of range" in capsys.readouterr().err
    assert main(["export", "--model", str(tmp_path / "source"), "--out", str(tmp_path / "o")]) == 2
    assert "--layers" in capsys.readouterr().err
