"""CLI-wide checks, in-process through ``main([...])``: every subcommand's --help, and the error paths
a person hits (missing file, bad YAML, unknown key with a suggestion, unknown model family), each a
one-line message without a traceback and exit code 2."""

from __future__ import annotations

from pathlib import Path

import pytest

from layertrace.cli.main import SUBCOMMANDS, main

REPO = Path(__file__).resolve().parents[2]


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    assert len(err.splitlines()) == 1, err
    return err


def test_overview_and_unknown_command(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in SUBCOMMANDS:
        assert name in out
    assert main([]) == 2
    capsys.readouterr()
    assert main(["reprot"]) == 2
    assert "did you mean 'report'" in _one_line_error(capsys)


@pytest.mark.parametrize("name", list(SUBCOMMANDS))
def test_every_subcommand_has_help(name, capsys):
    assert main([name, "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: layertrace {name}")
    assert "--help" in out


@pytest.mark.parametrize("name", [n for n in SUBCOMMANDS if n not in ("env",)])
def test_config_driven_subcommands_take_config_and_generated_options(name, capsys):
    """Options come from the typed config: --config plus one --key per field, help text and default."""
    main([name, "--help"])
    out = capsys.readouterr().out
    assert "--config FILE.yaml" in out
    assert "(default:" in out


def test_every_subcommand_has_a_commented_example_config():
    """configs/ holds a commented example per command, each beginning with the command that runs it."""
    examples = {
        "demo": ["demo-quick.yaml", "demo-paper.yaml"], "train": ["demo/vit-fmnist.yaml"],
        "analyze": ["analyze.yaml"], "exit": ["exit.yaml"], "report": ["report.yaml"], "export": ["export.yaml"],
        "params": ["params.yaml"],
    }
    for name, files in examples.items():
        for f in files:
            path = REPO / "configs" / f
            assert path.is_file(), f"example config configs/{f} is missing"
            first = path.read_text().splitlines()[0]
            assert first.startswith(f"# layertrace {name}"), f"{f} must begin with the command: {first!r}"


# ------------------------------------------------------------------------------ error paths
def test_missing_config_file(capsys, tmp_path):
    assert main(["report", str(tmp_path), "--config", str(tmp_path / "nope.yaml")]) == 2
    err = _one_line_error(capsys)
    assert "nope.yaml not found" in err


def test_bad_yaml(capsys, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("title: [unclosed\nout: x.html\n")
    assert main(["report", str(tmp_path), "--config", str(bad)]) == 2
    err = _one_line_error(capsys)
    assert "not valid YAML" in err and "line" in err


def test_unknown_key_gets_a_suggestion(capsys, tmp_path):
    cfg = tmp_path / "r.yaml"
    cfg.write_text("titel: my report\n")
    assert main(["report", str(tmp_path), "--config", str(cfg)]) == 2
    err = _one_line_error(capsys)
    assert "unknown config key 'titel'" in err and "did you mean 'title'" in err


def test_unknown_key_in_a_nested_demo_section(capsys, tmp_path):
    cfg = tmp_path / "d.yaml"
    cfg.write_text("vision:\n  modse: [standard]\n")
    assert main(["demo", "--config", str(cfg), "--out", str(tmp_path / "o")]) == 2
    assert "did you mean 'vision.modes'" in _one_line_error(capsys)


def test_bad_value_type(capsys, tmp_path):
    assert main(["report", str(tmp_path), "--exit_tolerance", "lots"]) == 2
    assert "not a valid float" in _one_line_error(capsys)


def test_unknown_model_family(capsys, tmp_path):
    rc = main(["analyze", "--model", "vit-dem0", "--data", "fashion-mnist", "--out", str(tmp_path / "a")])
    assert rc == 2
    err = _one_line_error(capsys)
    assert "vit-dem0" in err and "did you mean 'vit-demo'" in err


def test_unknown_demo_preset(capsys, tmp_path):
    assert main(["demo", "--preset", "qiuck", "--out", str(tmp_path / "o")]) == 2
    assert "did you mean 'quick'" in _one_line_error(capsys)


def test_report_errors(capsys, tmp_path):
    assert main(["report", str(tmp_path / "missing")]) == 2
    assert "not found" in _one_line_error(capsys)
    assert main(["report"]) == 2
    assert "no run folders" in _one_line_error(capsys)
    (tmp_path / "empty").mkdir()
    assert main(["report", str(tmp_path / "empty")]) == 2
    assert "holds no analysis.json" in _one_line_error(capsys)
    assert main(["report", str(tmp_path), "--out", str(tmp_path / "r.pdf")]) == 2
    assert "must end in .html" in _one_line_error(capsys)


def test_report_command_end_to_end(capsys, tmp_path, toy_model, toy_batch):
    """``layertrace report`` on a real analysis of the toy model writes the page, summary.md and its
    resolved config beside them."""
    import layertrace

    run = tmp_path / "toy-toy-standard"
    layertrace.analyze(toy_model, [toy_batch]).save(run)
    out = tmp_path / "site" / "report.html"
    assert main(["report", str(run), "--out", str(out), "--title", "toy"]) == 0
    assert out.is_file() and (out.parent / "summary.md").is_file()
    saved = (out.parent / "report-config.yaml").read_text()
    assert "title: toy" in saved and str(run) in saved


def test_demo_help_says_paper_is_for_a_gpu(capsys):
    assert main(["demo", "--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "--preset" in out and "--with-lm" in out and "--out" in out
    assert "GPU" in out and "15 minutes" in out  # the quick preset's size (issue 14: under 15 minutes on 2 cores)
