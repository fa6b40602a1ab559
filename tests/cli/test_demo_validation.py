"""Every run the demo trains logs layer-wise evaluations during training, so its report draws the
validation curve (the paper's Fig. 5b) for each: the MLP pair end to end (a tiny demo), the ViT and
MiniLM recipes of every preset through their resolved training configs."""

from __future__ import annotations

import pytest

from layertrace.cli.main import main

pytestmark = pytest.mark.xdist_group("demo")

TINY = ["--vision.enabled", "false", "--text.enabled", "false", "--mlp.epochs", "1", "--mlp.train_limit", "300",
        "--mlp.test_limit", "100", "--mlp.width", "32"]


def test_tiny_demo_report_shows_validation_during_training_of_every_trained_run(tmp_path):
    from layertrace.report.runs import load_run

    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), *TINY]) == 0
    trained = [d for d in sorted(out.iterdir()) if (d / "train_summary.json").is_file()]
    assert [d.name for d in trained] == ["mnist-mlp-plain", "mnist-mlp-residual"]
    for d in trained:
        evals = load_run(d).evals
        assert len(evals) >= 2 and evals[-1].final and evals[0].step < evals[-1].step
        assert all(0.0 <= a <= 1.0 for e in evals for a in e.accuracy)
    assert "Validation during training" in (out / "report.html").read_text()


@pytest.mark.parametrize("preset", ["quick", "paper"])
def test_every_demo_training_config_evaluates_during_training(preset, tmp_path):
    from layertrace.demo.suite import Demo, _train_steps, resolve_config

    cfg = resolve_config(None, {"out": str(tmp_path), "preset": preset})
    demo = Demo(cfg)
    checked = 0
    for track in (cfg.vision, cfg.text):
        if not track.enabled:
            continue
        for mode in track.modes:
            train = demo.train_config(track, mode)
            assert train.train.eval_every > 0, f"{track.name}-{mode}: no evaluation during training"
            assert _train_steps(train) // train.train.eval_every >= 2, f"{track.name}-{mode}: fewer than 2 evaluations"
            assert train.train.eval_every_limit is not None and train.train.eval_every_limit <= 512  # cheap ones
            checked += 1
    assert checked >= 5
