"""Presets built from config, and load_model from presets, folders, run folders and (offline) the hub."""

from __future__ import annotations

import json

import pytest
import torch
from torch.testing import assert_close

from layertrace.errors import LayertraceError
from layertrace.models import LoadedModel, build_preset, load_model, preset_names
from layertrace.models.presets import PRESETS


def vit_param_count(d: int, layers: int, mlp: int, patch: int, channels: int, tokens: int, k: int) -> int:
    """ViT parameters written out by hand: embeddings, L pre-LN blocks, final LN, classifier."""
    embed = channels * patch * patch * d + d + d + tokens * d           # patch conv (+bias), [CLS], positions
    block = 4 * (d * d + d) + (d * mlp + mlp) + (mlp * d + d) + 2 * 2 * d  # q,k,v,o; fc1; fc2; two LNs
    return embed + layers * block + 2 * d + (d * k + k)


def test_vit_demo_is_demo_sized():
    model = build_preset("vit-demo")
    n = sum(p.numel() for p in model.parameters())
    assert n == vit_param_count(d=128, layers=6, mlp=512, patch=7, channels=1, tokens=17, k=10) == 1_199_882
    cfg = model.config
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.image_size, cfg.patch_size, cfg.num_channels) == (6, 128, 28, 7, 1)
    assert not model.training


def test_vit_demo_12_and_cifar_sizes():
    deep = build_preset("vit-demo-12", device="meta")
    assert (deep.config.num_hidden_layers, deep.config.hidden_size) == (12, 96)
    assert sum(p.numel() for p in deep.parameters()) == vit_param_count(96, 12, 384, 7, 1, 17, 10)
    cifar = build_preset("vit-cifar-demo", device="meta")
    assert (cifar.config.image_size, cifar.config.patch_size, cifar.config.num_channels) == (32, 4, 3)
    assert sum(p.numel() for p in cifar.parameters()) == vit_param_count(128, 6, 512, 4, 3, 65, 10)


@pytest.mark.parametrize("name", [n for n in PRESETS if n != "minilm-cls"])
def test_every_config_preset_builds_and_adapts(name):
    from layertrace.models import adapt

    model = build_preset(name, device="meta")
    assert type(model).__name__ == PRESETS[name].model_class
    adapter = adapt(model)
    assert adapter.kind == PRESETS[name].kind
    assert adapter.num_outputs == PRESETS[name].num_classes


def test_deit_s_sizes():
    model = build_preset("deit-s", device="meta")
    cfg = model.config
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads, cfg.intermediate_size) == (12, 384, 6, 1536)
    cifar = build_preset("deit-s-cifar", num_classes=100, device="meta")
    assert (cifar.config.image_size, cifar.config.patch_size, cifar.config.num_labels) == (32, 4, 100)
    fmnist = build_preset("deit-s-fmnist", device="meta")
    fc = fmnist.config
    assert (fc.num_hidden_layers, fc.hidden_size, fc.num_attention_heads, fc.intermediate_size) == (12, 384, 6, 1536)
    assert (fc.image_size, fc.patch_size, fc.num_channels, fc.num_labels) == (28, 4, 1, 10)


def test_load_preset_fields_and_trace():
    loaded = load_model("vit-demo", num_classes=7, seed=3)
    assert isinstance(loaded, LoadedModel)
    assert (loaded.name, loaded.source, loaded.path, loaded.tokenizer) == ("vit-demo", "preset", None, None)
    assert loaded.preprocess == {"modality": "image", "image_size": 28, "channels": 1,
                                 "image_mean": [0.2860], "image_std": [0.3530]}
    assert loaded.adapter.num_outputs == 7 and loaded.adapter.n_layers == 6
    with torch.no_grad():
        trace = loaded.adapter.trace({"pixel_values": torch.randn(2, 1, 28, 28)})
    assert trace.features.shape == (7, 2, 128) and trace.logits.shape == (7, 2, 7)
    again = load_model("vit-demo", num_classes=7, seed=3)
    for a, b in zip(loaded.model.parameters(), again.model.parameters()):
        assert torch.equal(a, b)


def test_load_preset_dtype_and_final_norm():
    loaded = load_model("deit-demo", dtype="bfloat16", final_norm=False)
    assert loaded.adapter.dtype == torch.bfloat16 and loaded.adapter.final_norm is False
    with pytest.raises(LayertraceError, match="dtype"):
        load_model("vit-demo", dtype="float7")


def test_unknown_preset_suggests():
    with pytest.raises(LayertraceError, match=r"did you mean 'vit-demo'") as exc:
        load_model("vit-dmeo")
    assert "\n" not in str(exc.value)


def test_missing_folder_and_hub_offline_errors(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(LayertraceError, match="not found"):
        load_model(str(tmp_path / "nope") + "/")
    (tmp_path / "empty").mkdir()
    with pytest.raises(LayertraceError, match="config.json"):
        load_model(tmp_path / "empty")
    with pytest.raises(LayertraceError, match="hub") as exc:
        load_model("hf:some-org/some-model-that-is-not-cached")
    assert "\n" not in str(exc.value)


def test_folder_and_run_roundtrip(tmp_path):
    loaded = load_model("vit-demo", seed=0)
    loaded.save_pretrained(tmp_path / "saved")
    batch = {"pixel_values": torch.randn(3, 1, 28, 28)}
    with torch.no_grad():
        expected = loaded.adapter.trace(batch).logits
    back = load_model(tmp_path / "saved")
    assert (back.source, back.name, back.path) == ("directory", "saved", str(tmp_path / "saved"))
    assert back.preprocess == loaded.preprocess
    with torch.no_grad():
        assert_close(back.adapter.trace(batch).logits, expected)
    # a run folder: RUN/model in save_pretrained layout + RUN/preprocess.json
    run = tmp_path / "fmnist-vit-aligned"
    loaded.model.save_pretrained(str(run / "model"))
    (run / "preprocess.json").write_text(json.dumps({"modality": "image", "image_size": 28, "channels": 1,
                                                     "image_mean": [0.1], "image_std": [0.2]}))
    from_run = load_model(run)
    assert (from_run.source, from_run.name) == ("run", "fmnist-vit-aligned")
    assert from_run.preprocess["image_mean"] == [0.1]
    with torch.no_grad():
        assert_close(from_run.adapter.trace(batch).logits, expected)


def test_folder_with_new_head_and_bare_encoder(tmp_path, tiny):
    model, batch = tiny.build("bert")
    model.save_pretrained(str(tmp_path / "cls"))
    relabelled = load_model(tmp_path / "cls", num_classes=5)
    assert relabelled.adapter.num_outputs == 5
    # the encoder weights are kept, only the head is new
    assert_close(relabelled.model.bert.encoder.layer[0].output.dense.weight,
                 model.bert.encoder.layer[0].output.dense.weight)
    model.bert.save_pretrained(str(tmp_path / "bare"))  # a BertModel, like the MiniLM checkpoint
    with pytest.raises(LayertraceError, match="num_classes"):
        load_model(tmp_path / "bare")
    headed = load_model(tmp_path / "bare", num_classes=4)
    assert type(headed.model).__name__ == "BertForSequenceClassification" and headed.adapter.num_outputs == 4
    assert headed.preprocess == {"modality": "text", "max_length": 64}


def test_folder_of_unsupported_architecture_points_to_generic_adapter(tmp_path):
    import transformers

    cfg = transformers.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                  intermediate_size=32, max_position_embeddings=16)
    transformers.BertForMaskedLM(cfg).save_pretrained(str(tmp_path / "mlm"))
    with pytest.raises(LayertraceError, match="BertForMaskedLM.*GenericAdapter") as exc:
        load_model(tmp_path / "mlm")
    assert "\n" not in str(exc.value)


def test_preset_names_listed():
    names = preset_names()
    for name in ("vit-demo", "vit-demo-12", "vit-cifar-demo", "deit-demo", "deit-s", "deit-s-cifar", "deit-s-fmnist", "deit-b",
                 "minilm-cls", "bert-base-cfg", "gpt2-tiny", "gpt2-small", "llama-tiny"):
        assert name in names
