"""export_first_k: the first k blocks + shared head load with plain transformers and predict layer k's readout."""

from __future__ import annotations

import json

import pytest
import torch
from torch.testing import assert_close

from layertrace.errors import LayertraceError
from layertrace.models import adapt, export_first_k, load_model


def auto_class(family: str):
    import transformers

    if family in ("vit", "deit", "deit_teacher"):
        return transformers.AutoModelForImageClassification
    return transformers.AutoModelForSequenceClassification


@pytest.mark.parametrize("family", ["vit", "deit_teacher", "bert", "distilbert"])
@pytest.mark.parametrize("k", [1, 2])
def test_exported_model_predicts_layer_k_readout(tiny, tmp_path, family, k):
    model, batch = tiny.build(family)
    adapter = adapt(model)
    out = export_first_k(adapter, k, tmp_path / "export")
    exported = auto_class(family).from_pretrained(str(out)).eval()
    assert type(exported) is type(model)
    assert exported.config.num_hidden_layers == k
    assert sum(p.numel() for p in exported.parameters()) < sum(p.numel() for p in model.parameters())
    inputs = {key: v for key, v in batch.items() if key != "labels"}
    with torch.no_grad():
        assert_close(exported(**inputs).logits, adapter(batch, upto=k))
        assert_close(exported(**inputs).logits, adapter.trace(batch).logits[k])
    info = json.loads((out / "layertrace_export.json").read_text())
    assert (info["k"], info["n_layers"]) == (k, 3)
    # the source model is untouched
    assert len(adapter.layers) == 3 and model.config.num_hidden_layers == 3


def test_export_keeps_tokenizer_and_preprocess(tmp_path):
    loaded = load_model("vit-demo", seed=0)
    loaded.save_pretrained(tmp_path / "run" / "model")
    (tmp_path / "run" / "preprocess.json").write_text(json.dumps({"modality": "image", "image_size": 28,
                                                                  "channels": 1, "image_mean": [0.3],
                                                                  "image_std": [0.4]}))
    from_run = load_model(tmp_path / "run")
    out = export_first_k(from_run, 4, tmp_path / "elastic")
    assert json.loads((out / "preprocess.json").read_text())["image_mean"] == [0.3]
    back = load_model(out)
    assert back.adapter.n_layers == 4 and back.preprocess["image_std"] == [0.4]
    x = {"pixel_values": torch.randn(2, 1, 28, 28)}
    with torch.no_grad():
        assert_close(back.adapter(x), from_run.adapter(x, upto=4))


def test_export_errors(tiny, tmp_path):
    model, _ = tiny.build("vit")
    with pytest.raises(LayertraceError, match="1..3"):
        export_first_k(adapt(model), 4, tmp_path / "x")
    with pytest.raises(LayertraceError, match="1..3"):
        export_first_k(adapt(model), 0, tmp_path / "x")
    with pytest.raises(LayertraceError, match="final_norm"):
        export_first_k(adapt(model, final_norm=False), 2, tmp_path / "x")
    bert, _ = tiny.build("bert")
    export_first_k(adapt(bert, final_norm=False), 2, tmp_path / "bert")  # no final norm: fine


@pytest.mark.parametrize("preset", ["gpt2-tiny", "llama-tiny"])
def test_export_causal_lm_presets(tmp_path, preset):
    import transformers

    loaded = load_model(preset, num_classes=97, seed=0)
    out = export_first_k(loaded, 2, tmp_path / preset)
    exported = transformers.AutoModelForCausalLM.from_pretrained(str(out)).eval()
    assert exported.config.num_hidden_layers == 2
    ids = torch.randint(0, 97, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert_close(exported(input_ids=ids).logits, loaded.adapter({"input_ids": ids}, upto=2))
