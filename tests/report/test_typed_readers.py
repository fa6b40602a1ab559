"""The report reads typed records: exit.json as ExitRecord (keeping what it does not declare),
analysis.json as AnalysisResult, and a bad file is one line naming it and the stage to re-run."""

from __future__ import annotations

import json

import pytest

from layertrace.errors import LayertraceError
from layertrace.exits import ExitPoint, ExitRecord
from layertrace.report.runs import load_run

from .fixtures import exit_dict, write_run


def test_exit_record_keeps_unknown_fields_and_writes_back_the_same_json(tmp_path):
    body = exit_dict(3, [0.1, 0.5, 0.7, 0.8])
    body["schema"] = "layertrace-exit-1"
    body["oracle"] = {"policy": "oracle", "speedup": 2.0}
    body["points"][0]["added_by_a_newer_writer"] = {"x": 1}  # e.g. another measurement per point
    record = ExitRecord.from_dict(body)
    assert isinstance(record.points[0], ExitPoint) and record.points[0].extra == {"added_by_a_newer_writer": {"x": 1}}
    assert record.extra["oracle"] == body["oracle"] and record.full_accuracy == 0.8
    again = record.to_dict()
    for key, value in body.items():  # nothing lost: every key of the file comes back with its value
        if key != "points":
            assert again[key] == value, key
    for p_in, p_out in zip(body["points"], again["points"]):
        assert {k: p_out[k] for k in p_in} == p_in


def test_sweep_point_written_by_the_simulation_reads_back_equal():
    from layertrace.exits import sweep
    import torch

    torch.manual_seed(0)
    logits = torch.randn(3, 20, 4)
    s = sweep(logits, "confidence", [0.3, 0.6, 0.9], labels=torch.randint(0, 4, (20,)))
    record = ExitRecord.from_dict(json.loads(json.dumps(s.to_dict())))
    assert record.points == s.points and record.policy == "confidence" and record.n_layers == 3


def test_report_loads_typed_records(tmp_path):
    from layertrace.analysis import AnalysisResult
    from layertrace.run_folder import TrainSummary

    run = load_run(write_run(tmp_path, "fmnist-vit-aligned", 3, [0.1, 0.5, 0.7, 0.8], [0.2, 0.5, 0.8, 1.0],
                             [0.3, 0.5, 0.8, 1.0], "aligned"))
    assert isinstance(run.analysis, AnalysisResult) and run.analysis.layers == [0, 1, 2, 3]
    assert isinstance(run.exits["confidence"], ExitRecord) and isinstance(run.train_summary, TrainSummary)
    assert run.mode == "aligned" and run.n_layers == 3


@pytest.mark.parametrize("name, text, match", [
    ("exit.json", '{"policy": "confidence"}', r"exit.json: no 'points' list; it is not an exit.json, re-run `layertrace exit"),
    ("exit.json", '{"points": [{"threshold": 0.5}]}', r"exit.json: exit point is missing key\(s\) accuracy, speedup, exit_hist"),
    ("analysis.json", '{"n_layers": 3, "layers": [0, 1, 2, 3]}', r"analysis.json: missing key\(s\) n_samples; .*layertrace analyze"),
    ("train_summary.json", '{"steps": 60, "seconds": 12.5}', r"train_summary.json: missing key\(s\) mode, wall_time_s"),
])
def test_a_file_that_is_not_its_record_is_one_line_naming_it(tmp_path, name, text, match):
    d = tmp_path / "r-standard"
    d.mkdir()
    (d / name).write_text(text)
    with pytest.raises(LayertraceError, match=match) as info:
        load_run(d)
    assert "\n" not in str(info.value) and str(d / name) in str(info.value)


@pytest.mark.parametrize("text, match", [("model: [unclosed", r"is not valid YAML at line 1"),
                                         ("- just\n- a list\n", r"must hold a mapping of keys to values, got list")])
def test_a_broken_run_config_is_one_line_naming_it(tmp_path, text, match):
    # the report reads a run's config.yaml with the same reader as the CLI's --config (config.read_yaml)
    d = tmp_path / "r-standard"
    d.mkdir()
    (d / "analysis.json").write_text("{}")
    (d / "config.yaml").write_text(text)
    with pytest.raises(LayertraceError, match=match) as info:
        load_run(d)
    assert "\n" not in str(info.value) and str(d / "config.yaml") in str(info.value)
