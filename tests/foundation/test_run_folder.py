"""run_folder's one "is this stage finished" check: stage_done / running_stage / mark_done."""

from __future__ import annotations

import pytest

from layertrace import run_folder as rf


def _finish(folder, settings, stage="analyze"):
    with rf.running_stage(folder, stage, settings):
        (folder / "analysis.json").write_text("{}")


def test_same_settings_and_outputs_are_done(tmp_path):
    settings = {"limit": 64, "data": "fashion-mnist", "nested": {"a": [1, 2]}}
    assert not rf.stage_done(tmp_path, "analyze", settings, ["analysis.json"])  # never ran
    _finish(tmp_path, settings)
    assert rf.stage_done(tmp_path, "analyze", settings, ["analysis.json"])
    # key order does not matter; other stages of the same folder are not done by this one
    assert rf.stage_done(tmp_path, "analyze", dict(reversed(list(settings.items()))), ["analysis.json"])
    assert not rf.stage_done(tmp_path, "exit", settings, ["analysis.json"])


def test_changed_settings_are_not_done(tmp_path):
    _finish(tmp_path, {"limit": 64})
    assert not rf.stage_done(tmp_path, "analyze", {"limit": 65}, ["analysis.json"])
    assert not rf.stage_done(tmp_path, "analyze", {"limit": 64, "shift": "rotate:15"}, ["analysis.json"])


def test_missing_output_is_not_done(tmp_path):
    _finish(tmp_path, {"limit": 64})
    assert not rf.stage_done(tmp_path, "analyze", {"limit": 64}, ["analysis.json", "analysis_samples.npz"])
    (tmp_path / "analysis.json").unlink()
    assert not rf.stage_done(tmp_path, "analyze", {"limit": 64}, ["analysis.json"])


def test_interrupted_stage_is_not_done_even_after_an_earlier_finish(tmp_path):
    _finish(tmp_path, {"limit": 64})
    with pytest.raises(KeyboardInterrupt):
        with rf.running_stage(tmp_path, "analyze", {"limit": 64}):
            (tmp_path / "analysis.json").write_text("{half")  # the re-run overwrote part of its output
            raise KeyboardInterrupt
    assert not rf.done_marker(tmp_path, "analyze").exists()
    assert not rf.stage_done(tmp_path, "analyze", {"limit": 64}, ["analysis.json"])


def test_torn_marker_is_not_done(tmp_path):
    _finish(tmp_path, {"limit": 64})
    rf.done_marker(tmp_path, "analyze").write_text('{"settings_sha1": "')
    assert not rf.stage_done(tmp_path, "analyze", {"limit": 64}, ["analysis.json"])


def test_train_summary_round_trip_and_errors(tmp_path):
    from layertrace.errors import LayertraceError

    s = rf.TrainSummary(run_dir=str(tmp_path), mode="aligned", model="vit-demo", data="fashion-mnist",
                        task="image-classification", steps=3, samples_seen=96, wall_time_s=1.5,
                        final_eval={"layers": [0, 1], "accuracy": [0.1, 0.5], "loss": [2.0, 1.0], "n": 8},
                        layers=[1], layer_weights=[1.0], params={"model": 10})
    s.to_json(tmp_path / rf.TRAIN_SUMMARY)
    assert rf.read_train_summary(tmp_path) == s
    assert rf.read_train_summary(tmp_path / "nowhere") is None
    (tmp_path / rf.TRAIN_SUMMARY).write_text('{"mode": "aligned"}')
    with pytest.raises(LayertraceError, match=r"train_summary.json: missing key\(s\) steps, wall_time_s"):
        rf.read_train_summary(tmp_path)
    # the MLP experiment's summary before it wrote this record (docs/demo.md's example outputs)
    (tmp_path / rf.TRAIN_SUMMARY).write_text('{"mode": "plain", "steps": 4, "train_seconds": 2.5, "n_params": 7}')
    old = rf.read_train_summary(tmp_path)
    assert (old.mode, old.steps, old.wall_time_s, old.params) == ("plain", 4, 2.5, {"model": 7})
