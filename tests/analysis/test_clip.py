"""CLIP within- and cross-modal similarity (layertrace.analysis.clip) on a tiny config-built CLIP."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch.testing import assert_close

from layertrace.analysis.clip import ClipSimilarityResult, clip_similarity, clip_towers, projected_features
from layertrace.analysis.clip_run import ClipConfig, ClipPairs, captions, clip_from_config, load_clip
from layertrace.errors import LayertraceError

from .clip_helpers import tiny_clip, tiny_clip_folder, tiny_tokenizer

CLASSES = ["T-shirt/top", "Trouser", "Sandal", "Ankle boot"]


def _pairs(n=12, seed=0, batch_size=5):
    g = np.random.default_rng(seed)
    labels = g.integers(0, len(CLASSES), n)
    images = g.integers(0, 256, (n, 1, 28, 28), dtype=np.uint8)
    tok = tiny_tokenizer()
    pre = {"image_size": 28, "channels": 1, "image_mean": [0.5], "image_std": [0.25]}
    return images, captions(CLASSES, labels, "a photo of a {}"), tok, pre, batch_size


@pytest.fixture(scope="module")
def model():
    return tiny_clip(len(tiny_tokenizer()))


def _own(out):  # transformers 5 returns a ModelOutput whose pooler_output is the projected feature
    return out if isinstance(out, torch.Tensor) else out.pooler_output


def test_captions_use_the_class_name():
    assert captions(CLASSES, np.array([2, 0]), "a photo of a {}") == ["a photo of a sandal", "a photo of a t-shirt/top"]
    with pytest.raises(LayertraceError, match="no {}"):
        captions(CLASSES, np.array([0]), "a photo")


def test_last_layer_equals_the_models_own_features(model):
    images, texts, tok, pre, bs = _pairs()
    batch = next(iter(ClipPairs(images, texts, tok, pre, 12, 16)))
    v, t = projected_features(model, [batch])
    assert v.shape == (3, 12, 16) and t.shape == (4, 12, 16)
    with torch.no_grad():
        assert_close(v[-1], _own(model.get_image_features(pixel_values=batch["pixel_values"])))
        assert_close(t[-1], _own(model.get_text_features(input_ids=batch["input_ids"],
                                                         attention_mask=batch["attention_mask"])))
    # Eq. 23 at a shallow layer: the same post-norm + projection applied to the layer's [CLS] / [EOS] token
    with torch.no_grad():
        hv = model.vision_model(pixel_values=batch["pixel_values"], output_hidden_states=True).hidden_states
        ref_v = model.visual_projection(model.vision_model.post_layernorm(hv[1][:, 0]))
        ht = model.text_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                              output_hidden_states=True).hidden_states
        eos = (batch["input_ids"] == 3).int().argmax(-1)
        ref_t = model.text_projection(model.text_model.final_layer_norm(ht[1][torch.arange(12), eos]))
    assert_close(v[1], ref_v)
    assert_close(t[1], ref_t)
    # the towers share the CLIP model's weights (no copy)
    vision, text = clip_towers(model)
    assert vision.model.vision_model is model.vision_model and text.model.text_projection is model.text_projection


def _naive_cos(a, b, center):
    """COS(a, b) = mean over pairs i of cos(a_i - mean(a), b_i - mean(b)), one pair at a time
    (a layer constant over the samples has no direction: 0, as in layertrace.metrics)."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    if center == "mean":
        if any(np.abs(x - x.mean(0)).max() <= 1e-5 * np.linalg.norm(x.mean(0)) for x in (a, b)):
            return 0.0
        a = a - a.mean(0)
        b = b - b.mean(0)
    return float(np.mean([x @ y / np.linalg.norm(x) / np.linalg.norm(y) for x, y in zip(a, b)]))


@pytest.mark.parametrize("center", ["mean", "none"])
def test_cross_modal_cos_against_a_naive_loop(model, center):
    images, texts, tok, pre, bs = _pairs()
    pairs = ClipPairs(images, texts, tok, pre, bs, 16)
    r = clip_similarity(model, pairs, center)
    v, t = projected_features(model, pairs)
    assert r.cross_matrix.shape == (3, 4) and r.n_pairs == 12
    for lv in range(3):
        if center == "mean" and lv == 0:  # constant: 1 with itself only
            assert r.vision_cos_to_last[0] == 0.0 and r.vision_cos_matrix[0, 0] == 1.0
        for lt in range(4):
            assert r.cross_matrix[lv, lt] == pytest.approx(_naive_cos(v[lv], t[lt], center), abs=1e-9)
        if lv or center == "none":
            assert r.vision_cos_to_last[lv] == pytest.approx(_naive_cos(v[lv], v[-1], center), abs=1e-9)
        assert r.vision_to_text_last[lv] == pytest.approx(_naive_cos(v[lv], t[-1], center), abs=1e-9)
    for lt in range(4):
        assert r.text_cos_to_last[lt] == pytest.approx(_naive_cos(t[lt], t[-1], center), abs=1e-9)
        assert r.text_to_vision_last[lt] == pytest.approx(_naive_cos(t[lt], v[-1], center), abs=1e-9)
    assert r.vision_cos_to_last[-1] == pytest.approx(1.0) and r.text_cos_to_last[-1] == pytest.approx(1.0)
    assert r.vision_to_text_last[-1] == r.text_to_vision_last[-1] == r.cross_matrix[-1, -1]


def test_pairing_is_per_sample(model):
    images, texts, tok, pre, bs = _pairs(n=16, seed=1)
    base = clip_similarity(model, ClipPairs(images, texts, tok, pre, bs, 16))
    perm = np.random.default_rng(3).permutation(16)
    # the same pairs in another order and other batches: the same numbers
    same = clip_similarity(model, ClipPairs(images[perm], [texts[i] for i in perm], tok, pre, 7, 16))
    np.testing.assert_allclose(same.cross_matrix, base.cross_matrix, atol=1e-6)
    np.testing.assert_allclose(same.vision_cos_matrix, base.vision_cos_matrix, atol=1e-6)
    # captions moved to other images: cross-modal COS changes, within-tower COS does not
    moved = clip_similarity(model, ClipPairs(images, [texts[i] for i in perm], tok, pre, bs, 16))
    assert np.abs(moved.cross_matrix - base.cross_matrix).max() > 1e-3
    np.testing.assert_allclose(moved.vision_cos_matrix, base.vision_cos_matrix, atol=1e-6)
    # the vision [CLS] at layer 0 does not depend on the image: no direction once centred, whatever the batches
    assert base.constant_layers == same.constant_layers == {"vision": [0], "text": []}
    assert np.all(base.cross_matrix[0] == 0.0) and base.vision_cos_matrix[0, 0] == 1.0


def test_mismatched_batches_and_non_clip_models_are_one_line_errors(model):
    with pytest.raises(LayertraceError, match="pairs images with captions"):
        projected_features(model, [{"pixel_values": torch.zeros(2, 1, 28, 28), "input_ids": torch.ones(3, 4).long()}])
    with pytest.raises(LayertraceError, match="not a CLIP dual encoder"):
        clip_towers(torch.nn.Linear(2, 2))
    with pytest.raises(LayertraceError, match="no batches"):
        projected_features(model, [])


def test_cli_on_fashion_mnist_writes_clip_json_and_the_report_draws_it(tmp_path, capsys):
    from layertrace.cli.main import main
    from layertrace.report import build_report

    folder = tmp_path / "tiny-clip"
    tiny_clip_folder(folder)
    out = tmp_path / "clip-run"
    code = main(["analyze-clip", "--model", str(folder), "--data", "fashion-mnist", "--limit", "20",
                 "--batch_size", "8", "--out", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "COS(v_l, t_L)" in printed and "a photo of a" in printed
    data = json.loads((out / "clip.json").read_text())
    assert data["n_pairs"] == 20 and len(data["cross_matrix"]) == 3 and len(data["cross_matrix"][0]) == 4
    assert (out / "clip-config.yaml").is_file()
    r = ClipSimilarityResult.from_json(out)
    again = clip_from_config(ClipConfig(model=str(folder), data="fashion-mnist", limit=20, batch_size=5), write=False)
    np.testing.assert_allclose(again.cross_matrix, r.cross_matrix, atol=1e-6)
    paths = build_report([out], tmp_path / "report.html")
    html = paths.html.read_text()
    assert "CLIP" in html and html.count("<img") >= 2
    assert "COS(v_l, t_L)" in paths.summary.read_text()


def test_load_clip_errors(tmp_path):
    with pytest.raises(LayertraceError, match="cannot load a CLIPModel"):
        load_clip(str(tmp_path))
    with pytest.raises(LayertraceError, match="'limit'"):
        ClipConfig  # noqa: B018 (the range check runs at parse time)
        from layertrace.config import load_config

        load_config(ClipConfig, None, {"limit": 1})


def test_paper_config_loads_and_names_its_command():
    from pathlib import Path

    from layertrace.config import load_config

    path = Path(__file__).resolve().parents[2] / "configs" / "paper" / "clip-vit-b32.yaml"
    cfg = load_config(ClipConfig, str(path))
    assert (cfg.model, cfg.data, cfg.limit, cfg.center) == ("hf:openai/clip-vit-base-patch32", "hf:cifar10", 1000, "mean")
    assert path.read_text().startswith("# layertrace analyze-clip --config configs/paper/clip-vit-b32.yaml")
