"""The LM-track demo end to end on the 'smoke' preset (seconds), and its figures."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from layertrace.io import read_json


def _letters(sentences):
    """A cheap deterministic sentence encoder (letter counts) instead of MiniLM."""
    return np.array([[s.lower().count(c) + 1e-3 for c in "etaoinshr"] for s in sentences], dtype=float)


@pytest.fixture(scope="module")
def smoke_track(tmp_path_factory):
    from layertrace.demo.lm_track import run_lm_track

    out = tmp_path_factory.mktemp("lm-track")
    lm = run_lm_track(out, "smoke", progress=False, encoder=_letters)
    return out, lm


def test_run_lm_track_writes_runs_and_lm_json(smoke_track):
    out, lm = smoke_track
    assert read_json(out / "lm.json") == read_json(out / "lm.json")  # valid JSON on disk
    assert lm["schema"] == "layertrace.lm/1" and lm["layers"] == [0, 1, 2]
    for mode in ("standard", "aligned"):
        run = out / f"corpus-{lm['model']['family']}-{mode}"
        for name in ("config.yaml", "train_summary.json", "analysis.json", "lm_eval.json", "model/config.json"):
            assert (run / name).is_file(), name
        r = lm["runs"][mode]
        assert len(r["accuracy"]) == len(r["perplexity"]) == 3
        assert r["generation"]["layers"] == [1, 2] and len(r["generation"]["coherence"]) == 2
        assert all(-1 <= c <= 1 for c in r["generation"]["coherence"])
        sweep = lm["early_exit"][mode]
        assert [p["tau"] for p in sweep["points"]] == [0.0, 2.0]
        assert sweep["points"][1]["avg_exit_layer"] == 2 and sweep["points"][1]["perplexity_ratio"] == 1.0
    dec = lm["decoding"]  # greedy decoders side by side on the aligned run
    assert set(dec["batches"]) == {"1", "2"} and dec["n_prompts"] == 2
    for table in dec["batches"].values():
        assert table["self-speculative"]["identical"] == table["self-speculative"]["rows"] == 2
    comp = lm["paper_comparison"]
    assert comp["shallow_layers"] == [1] and len(comp["accuracy_gain_per_layer"]) == 3
    assert (out / "lm-tokenizer" / "tokenizer.json").is_file()


def test_run_lm_track_reuses_finished_stages(smoke_track):
    from layertrace.demo.lm_track import run_lm_track

    out, lm = smoke_track
    again = run_lm_track(out, "smoke", progress=False, encoder=_letters)
    assert all(again["runs"][m]["reused"] for m in ("standard", "aligned"))
    assert again["runs"]["aligned"]["accuracy"] == lm["runs"]["aligned"]["accuracy"]


def test_parallel_training_equals_sequential(smoke_track, tmp_path):
    """train_parallel (two spawned 1-thread processes) trains the same weights as one 1-thread process
    training the modes one after the other, and records each mode's CPU time."""
    from dataclasses import replace

    from safetensors.torch import load_file

    from layertrace.demo.lm_track import get_preset, run_name, train_modes

    out, lm = smoke_track
    base, corpus = Path(lm["model"]["base_dir"]), out / "lm-corpus"
    weights = {}
    for parallel in (True, False):
        p = replace(get_preset("smoke"), train_parallel=parallel)
        seconds: dict = {}
        train_modes(base, corpus, tmp_path / str(parallel), p, 2 if parallel else 1, "cpu", lambda m: None, seconds)
        assert all(seconds[f"train_{m}_cpu"] > 0 for m in ("standard", "aligned"))
        weights[parallel] = {m: load_file(str(tmp_path / str(parallel) / run_name(p, m) / "model" / "model.safetensors"))
                             for m in ("standard", "aligned")}
    for mode in ("standard", "aligned"):
        a, b = weights[True][mode], weights[False][mode]
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_lm_figures(smoke_track):
    from layertrace.lm.plots import lm_figures

    out, _ = smoke_track
    # the captions are checked against the file they are drawn from: an earlier test reruns the track
    # into the same folder, and the decoding comparison's draft choice depends on measured timings
    lm = read_json(out / "lm.json")
    figures = lm_figures(out)
    assert [t for t, _, _ in figures] == [
        "LM: next-token accuracy per layer", "LM: perplexity per layer",
        "LM: quality of text generated from each layer", "LM: early-exit decoding", "LM: decoding comparison"]
    for _, fig, caption in figures:
        assert fig.axes and caption
    caption = figures[-1][2]  # the decoding comparison names what each batch size ran
    for batch, table in lm["decoding"]["batches"].items():
        own = table["self-speculative"]
        ran = ("none (full decoding" if own["decoder"] == "full" else f"{own['draft_layer']}, {own['gamma']}")
        assert f"{ran}" in caption and f"at batch {batch}" in caption
    # a batch size whose best draft was expected to lose decodes fully, and the caption says so
    import copy

    fell_back = copy.deepcopy(lm)
    own = fell_back["decoding"]["batches"]["1"]["self-speculative"]
    own.update(decoder="full", draft_layer=None, gamma=0)
    own["choice"]["expected_speedup"] = 0.9
    caption = lm_figures(fell_back)[-1][2]
    assert "none (full decoding: the best draft expected at 0.90x) at batch 1" in caption
    import matplotlib.pyplot as plt

    plt.close("all")


def test_unknown_preset_is_a_one_line_error(tmp_path):
    from layertrace.errors import LayertraceError
    from layertrace.demo.lm_track import run_lm_track

    with pytest.raises(LayertraceError, match="quick"):
        run_lm_track(tmp_path, "quik")


@pytest.mark.parametrize("name", ["quick", "quick-draft", "draft"])
def test_config_file_matches_the_preset(name):
    from dataclasses import asdict
    from pathlib import Path

    from layertrace.demo.lm_track import PRESETS, get_preset

    path = Path(__file__).parents[2] / "configs" / f"lm-{name}.yaml"
    from_file = asdict(get_preset(str(path)))
    preset = asdict(PRESETS[name])
    preset["taus"] = list(preset["taus"])
    preset["decode_batch_sizes"] = list(preset["decode_batch_sizes"])
    assert from_file == preset


def test_aligned_run_takes_the_presets_loss_settings(tmp_path):
    """layer_weights and distill reach the aligned run's config only; the standard run keeps the
    plain last-layer loss (the weights and distill are inert there, recorded as the defaults)."""
    from dataclasses import replace

    from layertrace.demo.lm_track import get_preset, train_config

    p = replace(get_preset("smoke"), layer_weights="uniform", distill=0.3)
    aligned = train_config(tmp_path / "base", tmp_path / "corpus", "aligned", p, 1)
    standard = train_config(tmp_path / "base", tmp_path / "corpus", "standard", p, 1)
    assert (aligned.train.layer_weights, aligned.train.distill) == ("uniform", 0.3)
    assert (standard.train.layer_weights, standard.train.distill) == ("linear", 0.0)


@pytest.mark.parametrize("field, value, named", [
    ("layer_weights", "quadratic", "layer_weights='quadratic'"),
    ("layer_weights", [1.0, 2.0, 3.0], "layer_weights=[1.0, 2.0, 3.0]"),
    ("distill", 1.0, "distill=1.0"),
])
def test_bad_loss_settings_fail_before_any_work(tmp_path, field, value, named):
    from layertrace.errors import LayertraceError
    from layertrace.demo.lm_track import run_lm_track

    with pytest.raises(LayertraceError) as err:
        run_lm_track(tmp_path / "out", "smoke", progress=False, encoder=None, **{field: value})
    assert named in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "out").exists()  # nothing was prepared


def test_quick_draft_changes_only_the_aligned_loss():
    """quick-draft's standard run is quick's (configs/lm-quick-draft.yaml and docs/lm.md say so): the
    presets differ in the aligned run's loss settings only."""
    from dataclasses import asdict

    from layertrace.demo.lm_track import PRESETS

    quick, draft = asdict(PRESETS["quick"]), asdict(PRESETS["quick-draft"])
    assert {k for k in quick if quick[k] != draft[k]} == {"name", "layer_weights", "distill"}


def test_draft_is_quick_draft_deeper_and_longer():
    """draft is quick-draft's uniform-weight training on a 12 x 96 model, 2500 steps, distill 0.15
    (configs/lm-draft.yaml and docs/lm.md say so): the presets differ in these fields only."""
    from dataclasses import asdict

    from layertrace.demo.lm_track import PRESETS

    quick_draft, draft = asdict(PRESETS["quick-draft"]), asdict(PRESETS["draft"])
    assert {k for k in draft if draft[k] != quick_draft[k]} == {"name", "n_layers", "hidden", "steps", "distill"}
    assert (draft["n_layers"], draft["hidden"], draft["steps"], draft["distill"]) == (12, 96, 2500, 0.15)
    assert draft["layer_weights"] == "uniform"
