"""Bad input never gets a traceback or a wrong answer (issue 18).

Every case drives the CLI in-process (``main([...])``) with one mistake a careful new user makes:
a value out of its range, a damaged model / heads / config / result file, an output path that
cannot be written, a folder owned by another kind of result, data that does not fit the model.
Each must end with exit code 2 and ONE line on stderr (no traceback) that names the input; the
expected fragment of that line is given per case. The run folder they use is a 2-step ViT run on
a small synthetic ``.npz`` dataset (3 classes), built once, so nothing depends on a download.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from layertrace.cli.main import main


# ------------------------------------------------------------------------------ fixtures
def _npz(path: Path, classes: int, seed: int = 0) -> Path:
    """Per-split images (N, 1, 28, 28) whose label is the brightest quadrant-ish stripe."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, n in (("train", 48), ("test", 24)):
        labels = np.arange(n) % classes
        images = rng.integers(0, 60, (n, 1, 28, 28), dtype=np.uint8)
        for i, y in enumerate(labels):
            images[i, 0, 7 * y:7 * y + 7] += 150
        arrays[f"{split}_images"], arrays[f"{split}_labels"] = images, labels
    np.savez(path, **arrays)
    return path


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A finished multi-head run folder, an export of it, an analysis folder and data files."""
    from layertrace.config import load_config
    from layertrace.training.config import TrainConfig
    from layertrace.training.run import train_from_config

    root = tmp_path_factory.mktemp("bad-inputs")
    data3 = _npz(root / "three.npz", 3)
    data4 = _npz(root / "four.npz", 4)
    texts = root / "texts.csv"
    texts.write_text("text,label\n" + "".join(f"sentence number {i},{i % 3}\n" for i in range(30)))
    run = root / "run"
    cfg = load_config(TrainConfig, None, {
        "model.spec": "vit-demo", "data.name": "npz", "data.root": str(data3), "train.mode": "multi-head",
        "train.steps": 2, "train.batch_size": 16, "train.checkpoint_every": 1, "train.progress": False,
        "train.device": "cpu", "train.eval_batch_size": 24})
    train_from_config(cfg, run)
    assert main(["export", "--model", str(run), "--layers", "2", "--out", str(root / "export")]) == 0
    analysis = root / "analysis"
    assert main(["analyze", "--model", str(run), "--data", "npz", "--data_root", str(data3), "--out", str(analysis),
                 "--similarity", "false", "--theory", "false", "--progress", "false"]) == 0
    (root / "a-file").write_text("not a folder\n")
    (root / "site.html").mkdir()
    return {"root": root, "run": run, "data3": data3, "data4": data4, "texts": texts,
            "export": root / "export", "analysis": analysis, "file": root / "a-file"}


def damaged(world, name: str, how: str, source: str = "run") -> Path:
    """A copy of the run (or another fixture folder) with file ``name`` truncated / emptied / garbled."""
    copy = world["root"] / f"damaged-{source}-{name.replace('/', '_')}-{how}"
    if not copy.exists():
        shutil.copytree(world[source], copy)
        target = copy / name
        data = target.read_bytes()
        target.write_bytes({"truncated": data[: len(data) // 2], "empty": b"",
                            "garbage": b"\x00\xffnot what you think" * 40}[how])
    return copy


class Damaged:
    """A damaged copy of a fixture folder, made when a case runs (see :func:`damaged`)."""

    def __init__(self, name: str, how: str, source: str = "run"):
        self.args = (name, how, source)


def expect_error(capsys, argv: list[str], *fragments: str) -> str:
    """``main(argv)`` exits 2 with one stderr line, no traceback, containing every fragment."""
    rc = main([str(a) for a in argv])
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err, err
    assert rc == 2, (rc, err)
    assert len(err.splitlines()) == 1, err
    for fragment in fragments:
        assert fragment in err, (fragment, err)
    return err


# ------------------------------------------------------------------------------ cases
def _cases(w) -> list[tuple[str, list, tuple[str, ...]]]:
    run, d3, out = w["run"], w["data3"], w["root"] / "out-never-written"
    npz3 = ["--data", "npz", "--data_root", d3]
    train = ["train", "--model.spec", "vit-demo", "--data.name", "npz", "--data.root", d3, "--train.steps", "1",
             "--train.progress", "false", "--train.device", "cpu"]
    return [
        # -- train: numeric options, validated where parsed
        ("train lr < 0", train + ["--out", out, "--train.lr", "-1"], ("train.lr", "> 0")),
        ("train lr 0", train + ["--out", out, "--train.lr", "0"], ("train.lr",)),
        ("train beta = 1", train + ["--out", out, "--train.adam_betas", "0.9,1.0"], ("adam_betas", "[0, 1)")),
        ("train one beta", train + ["--out", out, "--train.adam_betas", "0.9"], ("adam_betas", "2 values")),
        ("train epochs < 0", train + ["--out", out, "--train.epochs", "-1"], ("train.epochs",)),
        ("train steps 0", train + ["--out", out, "--train.steps", "0"], ("train.steps", ">= 1")),
        ("train batch 0", train + ["--out", out, "--train.batch_size", "0"], ("train.batch_size",)),
        ("train eval batch 0", train + ["--out", out, "--train.eval_batch_size", "0"], ("eval_batch_size",)),
        ("train threads -1", train + ["--out", out, "--train.threads", "-1"], ("train.threads",)),
        ("train accum 0", train + ["--out", out, "--train.grad_accum", "0"], ("grad_accum",)),
        ("train keep 0", train + ["--out", out, "--train.keep_checkpoints", "0"], ("keep_checkpoints",)),
        ("train warmup 1.5", train + ["--out", out, "--train.warmup_ratio", "1.5"], ("warmup_ratio",)),
        ("train distill 1", train + ["--out", out, "--train.mode", "aligned", "--train.distill", "1"],
         ("train.distill", "[0, 1)")),
        ("train distill standard", train + ["--out", out, "--train.distill", "0.5"],
         ("distill=0.5 applies to the aligned and multi-head losses", "mode 'standard'")),
        ("train schedule typo", train + ["--out", out, "--train.schedule", "cosin"], ("did you mean 'cosine'",)),
        ("train on_nonfinite", train + ["--out", out, "--train.on_nonfinite", "ignore"], ("stop, skip",)),
        ("train bool maybe", train + ["--out", out, "--data.augment", "maybe"], ("not a boolean",)),
        ("train unknown option", train + ["--out", out, "--train.learning_rate", "1"], ("unrecognized arguments",)),
        ("train layer weights", train + ["--out", out, "--train.mode", "aligned", "--train.layer_weights", "1,1"],
         ("layer weights list has 2 entries",)),
        # -- train: where results go, checked before any work
        ("train out is a file", train + ["--out", w["file"]], ("existing file",)),
        ("train out under a file", train + ["--out", w["file"] / "run"], ("is a file",)),
        ("train out not writable", train + ["--out", "/proc/layertrace-out"], ("not writable",)),
        ("train into an export", train + ["--out", w["export"]], ("holds a model folder",)),
        ("train into results of another model", train + ["--out", w["analysis"]], ("--force",)),
        # -- train: damaged inputs, data that does not fit
        ("train from a cut model", train[:2] + [Damaged("model/model.safetensors", "truncated")] + train[3:]
         + ["--out", w["root"] / "ft1"], ("model.safetensors", "weights file cannot be read")),
        ("train from a bad config.json", train[:2] + [Damaged("model/config.json", "garbage")] + train[3:]
         + ["--out", w["root"] / "ft2"], ("config.json", "train_summary.json")),
        ("finetune 3 -> 4 classes", ["train", "--model.spec", run, "--data.name", "npz", "--data.root", w["data4"],
                                     "--train.steps", "1", "--out", w["root"] / "ft3"],
         ("3 classes", "--model.num_classes 4")),
        ("finetune images -> text", ["train", "--model.spec", run, "--data.name", "csv",
                                     "--data.loader_kwargs", f"{{path: {w['texts']}}}", "--train.steps", "1",
                                     "--out", w["root"] / "ft4"], ("image inputs",)),
        ("train --resume without a run", train + ["--out", w["root"] / "fresh", "--resume"], ("no checkpoint",)),
        ("train missing config", ["train", "--config", w["root"] / "nope.yaml", "--out", out], ("not found",)),
        # -- analyze
        ("analyze save_logits maybe", ["analyze", "--model", run, *npz3, "--out", out, "--save_logits", "maybe"],
         ("save_logits", "auto, true, false")),
        ("analyze batch 0", ["analyze", "--model", run, *npz3, "--out", out, "--batch_size", "0"], ("batch_size",)),
        ("analyze epsilon 2", ["analyze", "--model", run, *npz3, "--out", out, "--epsilons", "0.1,2"], ("epsilons",)),
        ("analyze cka typo", ["analyze", "--model", run, *npz3, "--out", out, "--cka", "exactt"], ("did you mean",)),
        ("analyze cut model", ["analyze", "--model", Damaged("model/model.safetensors", "empty"), *npz3,
                               "--out", out], ("model.safetensors", "train_summary.json")),
        ("analyze bad config.json", ["analyze", "--model", Damaged("model/config.json", "truncated"), *npz3,
                                     "--out", out], ("config.json", "not valid JSON")),
        ("analyze out is a file", ["analyze", "--model", run, *npz3, "--out", w["file"]], ("existing file",)),
        ("analyze into another run", ["analyze", "--model", "vit-demo", *npz3, "--out", run], ("--force",)),
        ("analyze 4-class data", ["analyze", "--model", run, "--data", "npz", "--data_root", w["data4"],
                                  "--out", out], ("--num_classes 4",)),
        ("analyze loader kwargs", ["analyze", "--model", run, *npz3, "--out", out, "--data.loader_kwargs", "[1]"],
         ("expected a mapping",)),
        ("analyze no validation split", ["analyze", "--model", "vit-demo", "--data", "npz", "--data_root", d3,
                                         "--split", "valid", "--out", out], ("split",)),
        # -- exit
        ("exit repeats 0", ["exit", "--model", run, *npz3, "--out", out, "--repeats", "0"], ("repeats",)),
        ("exit threads -1", ["exit", "--model", run, *npz3, "--out", out, "--threads", "-1"], ("threads",)),
        ("exit heads typo", ["exit", "--model", run, *npz3, "--out", out, "--heads", "perlayer"],
         ("did you mean 'per-layer'",)),
        ("exit damaged heads", ["exit", "--model", Damaged("heads.safetensors", "garbage"), *npz3, "--out", out,
                                "--measure", "false"], ("heads.safetensors", "--heads shared")),
        ("exit fixed layer 99", ["exit", "--model", run, *npz3, "--out", out, "--policy", "fixed",
                                 "--thresholds", "2,99", "--measure", "false"], ("1..6",)),
        ("exit patience 1.5", ["exit", "--model", run, *npz3, "--out", out, "--policy", "patience",
                               "--thresholds", "1.5", "--measure", "false"], ("integer",)),
        ("exit accuracy drop 2", ["exit", "--compare", run, *npz3, "--out", out, "--target_accuracy_drop", "2"],
         ("target_accuracy_drop",)),
        ("exit out is a file", ["exit", "--model", run, *npz3, "--out", w["file"]], ("existing file",)),
        # -- export
        ("export into the run", ["export", "--model", run, "--layers", "2", "--out", run],
         ("training run folder", "replace the run's model")),
        ("export cut model", ["export", "--model", Damaged("model/model.safetensors", "garbage"), "--layers", "2",
                              "--out", out], ("model.safetensors",)),
        ("export layer 0", ["export", "--model", run, "--layers", "0", "--out", out], ("layer 0",)),
        ("export num_classes 0", ["export", "--model", "vit-demo", "--layers", "1", "--num_classes", "0",
                                  "--out", out], ("num_classes",)),
        ("export out is a file", ["export", "--model", run, "--layers", "2", "--out", w["file"]], ("existing file",)),
        ("export over a foreign model", ["export", "--model", run, "--layers", "2", "--out", w["run"] / "model"],
         ("not a layertrace export", "--force")),
        # -- report
        ("report out is a folder", ["report", w["analysis"], "--out", w["root"]], ("must end in .html",)),
        ("report out.html is a folder", ["report", w["analysis"], "--out", w["root"] / "site.html"],
         ("existing folder",)),
        ("report tolerance 1.5", ["report", w["analysis"], "--exit_tolerance", "1.5"], ("exit_tolerance",)),
        ("report damaged analysis", ["report", Damaged("analysis.json", "truncated", "analysis"),
                                     "--out", w["root"] / "r" / "r.html"], ("analysis.json", "layertrace analyze")),
        # -- params
        ("params layers 0", ["params", "--hidden-size", "8", "--num-classes", "3", "--layers", "0"], ("layers",)),
        ("params convention typo", ["params", "--convention", "papr"], ("did you mean 'paper'",)),
        ("params cut model", ["params", "--model", Damaged("model/model.safetensors", "truncated")],
         ("model.safetensors",)),
        ("params out is a file", ["params", "--model", "vit-demo", "--out", w["file"]], ("existing file",)),
        # -- probe
        ("probe threads 0", ["probe", "--model", run, *npz3, "--out", out, "--threads", "0"], ("threads",)),
        ("probe l2 < 0", ["probe", "--model", run, *npz3, "--out", out, "--l2", "-1"], ("l2",)),
        ("probe cut model", ["probe", "--model", Damaged("model/model.safetensors", "empty"), *npz3, "--out", out],
         ("model.safetensors",)),
        ("probe out is a file", ["probe", "--model", run, *npz3, "--out", w["file"]], ("existing file",)),
        ("analyze-clip no model", ["analyze-clip", "--out", out], ("no model given",)),
        ("analyze-clip not a CLIP", ["analyze-clip", "--model", run, "--limit", "4", "--out", out], ("CLIPModel",)),
        ("analyze-clip limit 1", ["analyze-clip", "--model", run, "--limit", "1", "--out", out], ("limit",)),
        ("analyze-clip bad center", ["analyze-clip", "--model", run, "--center", "median", "--out", out],
         ("center",)),
        # -- generate
        ("generate temperature 0", ["generate", "--model", "gpt2-tiny", "--prompt", "hi", "--temperature", "0"],
         ("temperature", "> 0")),
        ("generate top_p 1.5", ["generate", "--model", "gpt2-tiny", "--prompt", "hi", "--top_p", "1.5"], ("top_p",)),
        ("generate 0 tokens", ["generate", "--model", "gpt2-tiny", "--prompt", "hi", "--max_new_tokens", "0"],
         ("max_new_tokens",)),
        ("generate strategy typo", ["generate", "--model", "gpt2-tiny", "--prompt", "hi", "--strategy", "greedyy"],
         ("did you mean 'greedy'",)),
        ("generate costs typo", ["generate", "--model", "gpt2-tiny", "--prompt", "hi", "--costs", "measured"],
         ("costs", "default, measure")),
        ("generate from an image model", ["generate", "--model", run, "--prompt", "hi"], ("causal LM",)),
        ("generate out is a file", ["generate", "--model", run, "--prompt", "hi", "--out", w["file"]],
         ("existing file",)),
        # -- env, demo, the command itself
        ("env unknown option", ["env", "--jsn"], ("unrecognized arguments",)),
        ("demo threads 0", ["demo", "--threads", "0", "--out", out], ("threads",)),
        ("demo batch 0", ["demo", "--analysis.batch_size", "0", "--out", out], ("analysis.batch_size",)),
        ("demo repeats 0", ["demo", "--exits.repeats", "0", "--out", out], ("exits.repeats",)),
        ("demo out is a file", ["demo", "--out", w["file"]], ("existing file",)),
        ("demo lm preset typo", ["demo", "--lm_preset", "quik", "--out", out], ("did you mean 'quick'",)),
        ("unknown command", ["trian"], ("did you mean 'train'",)),
    ]


CASE_NAMES = [name for name, _, _ in _cases({k: Path("/x") for k in
                                              ("run", "data3", "data4", "texts", "export", "analysis", "file", "root")})]


def test_there_are_at_least_forty_cases_over_every_subcommand():
    from layertrace.cli.main import SUBCOMMANDS

    cases = _cases({k: Path("/x") for k in ("run", "data3", "data4", "texts", "export", "analysis", "file", "root")})
    assert len(cases) >= 40
    assert {argv[0] for _, argv, _ in cases} >= set(SUBCOMMANDS)


@pytest.mark.slow
@pytest.mark.parametrize("name", CASE_NAMES)
def test_bad_input_is_one_line_exit_2(name, world, capsys):
    (argv, fragments), = [(a, f) for n, a, f in _cases(world) if n == name]
    argv = [damaged(world, *a.args) if isinstance(a, Damaged) else a for a in argv]
    out = world["root"] / "out-never-written"
    try:
        expect_error(capsys, argv, *fragments)
        # no result was written (a few checks need the model: train may have saved its config by then)
        assert not out.exists() or {p.name for p in out.iterdir()} <= {"config.yaml"}
    finally:
        shutil.rmtree(out, ignore_errors=True)


def test_debug_shows_the_traceback(world, capsys, monkeypatch):
    argv = ["analyze", "--model", str(damaged(world, "model/model.safetensors", "empty")), "--data", "npz",
            "--data_root", str(world["data3"]), "--out", str(world["root"] / "dbg")]
    assert main(argv + ["--debug"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and "SafetensorError" in err and err.strip().splitlines()[-1].startswith("layertrace")
    monkeypatch.setenv("LAYERTRACE_DEBUG", "1")
    assert main(argv) == 2
    assert "Traceback" in capsys.readouterr().err


def test_a_bug_is_one_line_asking_for_a_report(monkeypatch, capsys):
    import layertrace.cli.params as params

    monkeypatch.setattr(params, "run", lambda args: 1 / 0)
    assert main(["params"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "internal error (ZeroDivisionError" in err and "--debug" in err


def test_full_disk_fails_before_any_work(world, capsys, monkeypatch):
    import shutil as sh
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(sh, "disk_usage", lambda path: usage(10 << 30, (10 << 30) - (1 << 20), 1 << 20))
    expect_error(capsys, ["analyze", "--model", world["run"], "--data", "npz", "--data_root", world["data3"],
                          "--out", world["root"] / "full"], "1 MiB free")
    assert not (world["root"] / "full").exists()


# ------------------------------------------------------------------------------ one owner, no stale files
def test_rewriting_results_removes_the_commands_own_stale_files(world, capsys):
    analysis = world["root"] / "rewrite"
    base = ["analyze", "--model", str(world["run"]), "--data", "npz", "--data_root", str(world["data3"]),
            "--out", str(analysis), "--similarity", "false", "--theory", "false", "--progress", "false"]
    assert main(base) == 0
    assert (analysis / "analysis_samples.npz").is_file()
    first = json.loads((analysis / "analysis.json").read_text())
    (analysis / "notes.txt").write_text("mine\n")
    assert main(base + ["--per_sample", "false", "--limit", "12"]) == 0
    assert not (analysis / "analysis_samples.npz").exists()  # the old per-sample arrays went with the old json
    second = json.loads((analysis / "analysis.json").read_text())
    assert second["n_samples"] == 12 != first["n_samples"]
    assert (analysis / "notes.txt").read_text() == "mine\n"  # not the command's file: left alone
    assert not list(analysis.glob(".staging-*"))


def test_export_never_replaces_a_run_model_and_reexport_leaves_no_stale_files(world, capsys):
    from safetensors.torch import load_file

    run = world["run"]
    before = load_file(str(run / "model" / "model.safetensors"))
    assert main(["export", "--model", str(run), "--layers", "2", "--out", str(run)]) == 2
    capsys.readouterr()
    after = load_file(str(run / "model" / "model.safetensors"))
    assert before.keys() == after.keys() and all((before[k] == after[k]).all() for k in before)
    assert not (run / "config.json").exists()

    out = world["root"] / "elastic"
    assert main(["export", "--model", str(run), "--layers", "2,4", "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["layers-2", "layers-4"]
    assert main(["export", "--model", str(run), "--layers", "3", "--out", str(out)]) == 0
    names = {p.name for p in out.iterdir()}
    assert "layers-2" not in names and "config.json" in names  # the old set is gone, the new one in place
    assert json.loads((out / "layertrace_export.json").read_text())["k"] == 3


def test_the_troubleshooting_page_is_linked_and_quotes_messages_the_code_gives():
    """docs/troubleshooting.md stays true to the code: each message it quotes is produced in src/."""
    repo = Path(__file__).resolve().parents[2]
    assert "docs/troubleshooting.md" in (repo / "README.md").read_text()
    page = (repo / "docs" / "troubleshooting.md").read_text()
    source = "\n".join(p.read_text() for p in (repo / "src" / "layertrace").rglob("*.py"))
    quoted = ["is out of range; it must be", "is not one of", "is not a boolean; use true or false",
              "is an existing file, not a folder", "is not writable", "MiB free on that disk",
              "is a training run folder; exporting there would replace the run's model",
              "holds a model that is not a layertrace export", "holds results of another model",
              "is the training run folder of another model", "the newest checkpoint", "does not match its checksum", "training diverged at step",
              "the last good checkpoint is", "no checkpoint in", "takes {modality} inputs", "cannot be written",
              "internal error", "--data.loader_kwargs"]
    for fragment in quoted:
        assert fragment in source, fragment
        shown = fragment.replace("{modality}", "image")
        assert shown.split(" {")[0] in page or shown in page, fragment
    # composed by io.reading: "{path}: {what} cannot be read ({cause}); {fix}"
    for what in ("weights file", "heads file"):
        assert f'what="{what}"' in source and f"{what} cannot be read" in page, what
    assert 'f"{path}: {what} cannot be read (' in source
