"""``layertrace demo`` in-process on a tiny budget (only the MLP experiment: seconds), its reuse of
finished stages, its progress display, and the 9-layer MLP experiment itself."""

from __future__ import annotations

import json
import re

import pytest
import torch

from layertrace.cli.main import main

pytestmark = pytest.mark.xdist_group("demo")

TINY = ["--vision.enabled", "false", "--text.enabled", "false", "--mlp.epochs", "1", "--mlp.train_limit", "300",
        "--mlp.test_limit", "100", "--mlp.width", "32"]


def test_demo_end_to_end_and_reuse(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), *TINY]) == 0
    err = capsys.readouterr().err
    assert re.search(r"stage 1/3: MLP with residuals \(mnist-mlp-residual\) \(estimate \d+s; about .* left\)", err)
    assert "stage 3/3: report.html + summary.md" in err and "finished in" in err
    for name in ("mnist-mlp-residual", "mnist-mlp-plain"):
        run = out / name
        for f in ("config.yaml", "analysis.json", "model/model.safetensors", "metrics.jsonl", "train_summary.json"):
            assert (run / f).is_file(), f"{name}/{f}"
    assert (out / "report.html").is_file() and (out / "summary.md").is_file()
    saved = (out / "config.yaml").read_text()
    assert "preset: quick" in saved and "train_limit: 300" in saved
    timings = json.loads((out / "demo_timings.json").read_text())
    assert timings["rates"]["train:mlp"] > 0 and set(timings["stages_s"]) == {
        "MLP with residuals (mnist-mlp-residual)", "MLP without residuals (mnist-mlp-plain)", "report.html + summary.md"}
    html = (out / "report.html").read_text()
    assert "where CKA misleads" in html
    # A second call reuses both trained models and only rebuilds the report.
    before = (out / "mnist-mlp-plain" / "analysis.json").stat().st_mtime_ns
    assert main(["demo", "--out", str(out), *TINY]) == 0
    err = capsys.readouterr().err
    assert err.count("already done, reused") == 2
    assert (out / "mnist-mlp-plain" / "analysis.json").stat().st_mtime_ns == before
    # Changing a setting of the experiment retrains it.
    assert main(["demo", "--out", str(out), *TINY, "--mlp.seed", "1"]) == 0
    assert "already done, reused" not in capsys.readouterr().err


def test_demo_with_nothing_enabled_is_a_user_error(tmp_path, capsys):
    rc = main(["demo", "--out", str(tmp_path / "d"), "--vision.enabled", "false", "--text.enabled", "false",
               "--mlp.enabled", "false"])
    assert rc == 2
    assert "nothing to report" in capsys.readouterr().err


def test_demo_plan_names_every_run_folder(tmp_path):
    """The quick plan: three ViT modes plus the uniform-lambda ablation run, the MLP pair, three MiniLM modes;
    per mode analysis + exit + its re-reading (ViT: shifted test set; MiniLM: [CLS]) + probe; report."""
    from layertrace.demo.suite import Demo, resolve_config

    cfg = resolve_config(None, {"out": str(tmp_path)})
    demo = Demo(cfg)
    stages = demo.stages()
    labels = [s.label for s in stages]
    assert labels[:4] == [f"train fmnist-vit-{m} (468 steps)" for m in ("standard", "aligned", "multi-head",
                                                                         "uniform-aligned")]
    assert labels[4:6] == ["MLP with residuals (mnist-mlp-residual)", "MLP without residuals (mnist-mlp-plain)"]
    assert labels[6:9] == [f"train rt-minilm-{m} (96 steps)" for m in ("standard", "aligned", "multi-head")]
    assert stages[0].units == 468  # 2 epochs of the 234 full batches of 64 among 15,000 images
    assert sum(lab.startswith("analyze ") for lab in labels) == 7  # 6 modes + the ablation run
    assert sum(lab.startswith("early-exit sweep ") for lab in labels) == 6
    assert [lab for lab in labels if lab.startswith("re-analyze ")] == (
        [f"re-analyze fmnist-vit-{m} (shift rotate:15+noise:0.2, 2000 samples)" for m in ("standard", "aligned", "multi-head")]
        + [f"re-analyze rt-minilm-{m} (pooling=cls, 1267 samples)" for m in ("standard", "aligned", "multi-head")])
    probes = [lab for lab in labels if lab.startswith("probe ")]
    assert probes[:3] == [f"probe fmnist-vit-{m} on mnist-5k (4500 samples)" for m in ("standard", "aligned", "multi-head")]
    assert probes[3:] == [f"probe rt-minilm-{m} on bbc-news (800 samples)" for m in ("standard", "aligned", "multi-head")]
    assert labels[-1] == "report.html + summary.md"
    assert [d.name for d in demo.run_dirs()] == [
        "fmnist-vit-standard", "fmnist-vit-aligned", "fmnist-vit-multi-head", "fmnist-vit-uniform-aligned",
        "rt-minilm-standard", "rt-minilm-aligned", "rt-minilm-multi-head", "mnist-mlp-residual", "mnist-mlp-plain"]
    # every training config is the recipe with the mode set; the ablation run differs only in its weights
    assert demo.train_config(cfg.vision, "aligned").train.mode == "aligned"
    assert demo.train_config(cfg.text, "standard").model.spec == "minilm-cls"
    assert demo.train_config(cfg.text, "standard").model.pooling == "mean"
    assert demo.train_config(cfg.vision, "aligned").model.spec == "vit-demo-12s"
    uni = demo.train_config_of(cfg.vision, demo.ablation_dir(cfg.vision, "uniform"))
    lin = demo.train_config(cfg.vision, "aligned")
    assert (uni.train.layer_weights, lin.train.layer_weights) == ("uniform", "linear")
    uni.train.layer_weights = "linear"
    assert uni == lin
    # the re-readings change only what they name, and read no more than they need
    run = demo.run_dir(cfg.text, "aligned")
    base, cls = demo.analyze_settings(cfg.text, run), demo.variant_settings(cfg.text, run, "pooling-cls")
    assert cls["pooling"] == "cls" and base["collapse"] is True and cls["null_permutations"] == 0
    assert {k for k in base if base[k] != cls.get(k)} == {"null_permutations", "layer_removal",
                                                          "layer_removal_samples", "collapse"}
    shift = demo.variant_settings(cfg.vision, demo.run_dir(cfg.vision, "standard"), "shift")
    assert shift["shift"] == "rotate:15+noise:0.2" and shift["limit"] == 2000 and "pooling" not in shift


def test_demo_report_equals_the_report_of_its_folder(tmp_path):
    """`layertrace report OUT` on a demo folder writes the summary the demo wrote (same runs, same order)."""
    from layertrace.demo.suite import Demo, resolve_config
    from layertrace.report import build_report

    from ..report.fixtures import write_run

    cfg = resolve_config(None, {"out": str(tmp_path / "demo")})
    demo = Demo(cfg)
    modes = {"standard": [0.1, 0.3, 0.6, 0.8], "aligned": [0.1, 0.6, 0.75, 0.8]}
    for d in demo.run_dirs():  # vision, MLP and text groups: more than one comparison group
        mode = "aligned" if d.name.endswith("aligned") else "standard"
        write_run(d.parent, d.name, 3, modes[mode], [0.2, 0.5, 0.8, 1.0], [0.3, 0.5, 0.8, 1.0], mode)
    demo.report()
    mine = build_report([cfg.out], tmp_path / "mine" / "report.html",
                        title=f"layertrace demo ({cfg.preset})", exit_tolerance=cfg.exits.tolerance)

    def runs_in_order(text: str) -> list[str]:
        names = sorted({d.name for d in demo.run_dirs()}, key=len, reverse=True)
        return re.findall("|".join(map(re.escape, names)), text)

    theirs = (tmp_path / "demo" / "summary.md").read_text()
    assert runs_in_order(mine.summary.read_text()) == runs_in_order(theirs) and len(runs_in_order(theirs)) > 0


def test_progress_rescales_estimates_by_measured_speed():
    import io

    from layertrace.demo.suite import Progress, Stage

    ran = []
    stages = [Stage("a", "first", lambda: ran.append(1)), Stage("b", "second", lambda: ran.append(2)),
              Stage("b", "skipped", lambda: ran.append(3), done=lambda: True)]
    stream = io.StringIO()
    p = Progress(stages, {"a": 100.0, "b": 50.0}, stream=stream)
    assert p.left(0) == 150.0  # the finished stage does not count
    p.run_all()
    assert ran == [1, 2]
    assert p.spent_est == 150.0 and p.spent_real < 5
    assert p._scale() == pytest.approx(0.33)  # far faster than estimated: clipped at a third
    text = stream.getvalue()
    assert "stage 3/3: skipped: already done, reused" in text


def test_mlp_adapter_reads_the_model_and_skips_change_the_picture():
    """The MLP's generic adapter: readout at L equals the model's logits; without skips a block's
    output does not contain its input."""
    from layertrace.experiments import DeepMLP, mlp_adapter

    torch.manual_seed(0)
    x = torch.randn(5, 1, 28, 28)
    for residual in (True, False):
        model = DeepMLP(784, 10, width=16, n_layers=3, residual=residual).eval()
        adapter = mlp_adapter(model)
        trace = adapter.trace({"pixel_values": x})
        assert trace.features.shape == (4, 5, 16)
        torch.testing.assert_close(trace.logits[-1], model(x).logits)
        h0 = trace.features[0]
        h1 = trace.features[1]
        update = torch.relu(model.blocks[0].fc(h0))
        torch.testing.assert_close(h1, h0 + update if residual else update)


def test_demo_names_an_unknown_model_before_any_work(tmp_path, capsys):
    rc = main(["demo", "--out", str(tmp_path / "d"), "--text.enabled", "false", "--mlp.enabled", "false",
               "--vision.overrides", "{model.spec: vit-dmeo}"])
    assert rc == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "fmnist-vit: unknown model preset 'vit-dmeo'" in err
    assert "did you mean 'vit-demo'" in err
    assert not (tmp_path / "d").exists()


@pytest.mark.parametrize("preset", ["quick", "paper"])
def test_every_demo_preset_names_existing_models_and_modes(tmp_path, preset):
    """Both presets pass the demo's own pre-flight check: every track's model is a known preset and
    every mode a known training mode (the paper preset once named a model that did not exist)."""
    from layertrace.demo.suite import Demo, resolve_config

    cfg = resolve_config(None, {"out": str(tmp_path), "preset": preset})
    demo = Demo(cfg)
    demo.check_models()
    for track in (cfg.vision, cfg.text):
        for mode in track.modes:
            assert demo.train_config(track, mode).train.mode == mode
    if preset == "paper":
        assert demo.train_config(cfg.vision, "aligned").model.spec == "deit-s-fmnist"


VISION_TINY = ["--text.enabled", "false", "--mlp.enabled", "false", "--vision.modes", "[standard, aligned]",
               "--vision.overrides", "{train.steps: 2, data.train_limit: 128, data.eval_limit: 32}",
               "--vision.analyze_limit", "64", "--vision.exit_limit", "32", "--vision.variant_limit", "48",
               "--vision.probe_limit_train", "60", "--vision.probe_limit_test", "30",
               "--analysis.null_permutations", "0", "--analysis.layer_removal", "false", "--exits.measure", "false"]


def test_demo_vision_track_runs_ablation_shift_probe_and_collapse(tmp_path, capsys):
    """The quick demo's ViT additions on a 2-step budget: the uniform-lambda run, the shifted re-reading, the
    MNIST-5k probe and NC1-3 land in their run folders, and the report shows each with its finding."""
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), *VISION_TINY]) == 0
    err = capsys.readouterr().err
    assert "train fmnist-vit-uniform-aligned (2 steps)" in err
    uni = out / "fmnist-vit-uniform-aligned"
    assert "layer_weights: uniform" in (uni / "config.yaml").read_text() and (uni / "analysis.json").is_file()
    assert not (uni / "exit.json").exists() and not (uni / "variants").exists()  # the ablation reads accuracy only
    for mode in ("standard", "aligned"):
        run = out / f"fmnist-vit-{mode}"
        clean = json.loads((run / "analysis.json").read_text())
        shifted = json.loads((run / "variants" / "shift" / "analysis.json").read_text())
        assert clean["n_samples"] == 64 and shifted["n_samples"] == 48
        assert len(clean["collapse"]["nc1"]) == clean["n_layers"] + 1 and "collapse" not in shifted or not shifted["collapse"]
        assert "rotate:15+noise:0.2" in (run / "variants" / "shift" / "analyze-config.yaml").read_text()
        probe = json.loads((run / "probe.json").read_text())
        assert probe["data"] == "mnist-5k" and len(probe["accuracy"]) == clean["n_layers"] + 1
    summary = (out / "summary.md").read_text()
    for section in ("## Layer-weight ablation (aligned training)", "## Neural collapse per layer",
                    "## Task transfer: linear probes per layer", "## Distribution shift: every layer on a shifted test set"):
        assert section in summary
    for claim in ("Uniform layer weights help shallow layers", "Aligned training brings neural collapse",
                  "Aligned training keeps transferability", "[fmnist-vit [shift]: fmnist-vit-aligned [shift]",
                  "Aligned training reveals a minimal depth", "Layer-wise accuracy rises monotonically"):
        assert claim in summary, claim
    # a second call reuses every stage (the re-readings and probes are stamped like the analyses)
    assert main(["demo", "--out", str(out), *VISION_TINY]) == 0
    err = capsys.readouterr().err
    assert err.count("already done, reused") == 12  # 3 trainings, 3 analyses, 2 exits, 2 shifts, 2 probes
