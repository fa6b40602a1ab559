"""A damaged run never loses its work (issue 18): SIGKILL at random moments, damaged checkpoints,
divergence.

The toy run of ``train_toy_script.py`` (the real loop, 96 synthetic sequences, dropout on so the
RNG state matters) is the reference; interrupted / damaged copies must end bit-identical to it on
CPU, with the same ``metrics.jsonl`` (timings aside).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).with_name("train_toy_script.py")
sys.path.insert(0, str(SCRIPT.parent))
from train_toy_script import train_toy  # noqa: E402

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
TIMING_KEYS = {"samples_per_s", "wall_time_s"}
STEPS, EVERY = 24, 2


def _weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


def _assert_bit_identical(a: Path, b: Path) -> None:
    one, two = _weights(a), _weights(b)
    assert one.keys() == two.keys()
    for key in one:
        assert torch.equal(one[key], two[key]), key


def _records(run: Path) -> list[dict]:
    """metrics.jsonl as strict JSON (a bare NaN would raise), timings dropped."""
    def no_nan(token):
        raise AssertionError(f"bare {token} in metrics.jsonl")

    rows = [json.loads(line, parse_constant=no_nan) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in rows]


def _script(out: Path, *extra: str) -> list[str]:
    return [sys.executable, str(SCRIPT), "--out", str(out), "--steps", str(STEPS), "--ckpt-every", str(EVERY),
            "--dropout", "0.1", *extra]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """The uninterrupted run (in-process: the same code gives the same numbers)."""
    out = tmp_path_factory.mktemp("reference") / "run"
    train_toy(str(out), steps=STEPS, ckpt_every=EVERY, dropout=0.1)
    return out


@pytest.mark.slow
def test_sigkill_at_random_moments_then_resume_is_bit_identical(reference, tmp_path):
    """Three SIGKILLs at random moments of one run (between steps, mid-checkpoint, mid-log line),
    each followed by a resume; the finished run equals the uninterrupted one exactly."""
    rng = random.Random(18)
    run = tmp_path / "killed"
    kills = 0
    for trial in range(3):
        proc = subprocess.Popen(_script(run, "--sleep", "0.08"), env=ENV, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        for line in proc.stdout:  # this session has set up (and resumed): it trains from now on
            if line.startswith("[train] mode="):
                break
        time.sleep(rng.uniform(0.0, 1.5))  # a random moment of training, logging or checkpointing
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            kills += 1
        proc.wait(timeout=60)
        proc.stdout.close()
        errors = proc.stderr.read()
        proc.stderr.close()
        assert proc.returncode in (0, -signal.SIGKILL), errors[-2000:]  # a resume never fails
        if (run / "final.safetensors").is_file():
            break
    assert kills >= 2, f"the run finished after {kills} kill(s); raise --sleep"
    done = subprocess.run(_script(run), env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "resumed at step" in done.stdout or (run / "final.safetensors").is_file(), done.stdout[-2000:]
    _assert_bit_identical(reference / "final.safetensors", run / "final.safetensors")
    assert _records(run) == _records(reference)  # no partial window, no duplicate, no torn line
    steps = sorted(p.name for p in (run / "checkpoints").glob("step-*"))
    assert steps == [f"step-{STEPS - EVERY:08d}", f"step-{STEPS:08d}"]  # the last two good ones kept


@pytest.mark.slow
def test_damaged_latest_checkpoint_falls_back_to_the_previous_one(reference, tmp_path, capsys):
    """The newest checkpoint damaged after it was written (same size, one byte changed): resume
    says so, uses the one before, and still ends bit-identical to the uninterrupted run."""
    import shutil

    run = tmp_path / "damaged"
    shutil.copytree(reference, run)
    (run / "final.safetensors").unlink()
    newest = run / "checkpoints" / f"step-{STEPS:08d}" / "model.safetensors"
    data = bytearray(newest.read_bytes())
    data[len(data) // 2] ^= 0xFF
    newest.write_bytes(bytes(data))
    capsys.readouterr()
    train_toy(str(run), steps=STEPS, ckpt_every=EVERY, dropout=0.1)
    out = capsys.readouterr().out
    assert f"resuming from step-{STEPS - EVERY:08d}" in out and "does not match its checksum" in out
    _assert_bit_identical(reference / "final.safetensors", run / "final.safetensors")
    assert _records(run) == _records(reference)


def test_a_damaged_pointer_and_a_half_written_folder_are_skipped(reference, tmp_path, capsys):
    """latest.json cut mid-write and a newer step folder without its manifest (a kill while
    writing it): the newest sealed folder is used."""
    import shutil

    from layertrace.training.checkpoint import latest_checkpoint

    root = tmp_path / "checkpoints"
    shutil.copytree(reference / "checkpoints", root)
    (root / "latest.json").write_text('{"dir": "step-000')
    half = root / f"step-{STEPS + EVERY:08d}"
    half.mkdir()
    (half / "model.safetensors").write_bytes(b"partial")
    assert latest_checkpoint(root) == root / f"step-{STEPS:08d}"


def test_a_kill_while_writing_the_first_checkpoint_starts_over(tmp_path, capsys):
    """Only an unsealed first folder (no manifest.json): nothing to resume, the run starts at step 0
    and ends as the uninterrupted run does."""
    run = tmp_path / "first"
    half = run / "checkpoints" / f"step-{EVERY:08d}"
    half.mkdir(parents=True)
    (half / "model.safetensors").write_bytes(b"partial")
    result = train_toy(str(run), steps=4, ckpt_every=EVERY, dropout=0.1)
    assert result.state.resumed_from is None and "starting from step 0" in capsys.readouterr().out
    assert (run / "checkpoints" / f"step-{EVERY:08d}" / "manifest.json").is_file()


def test_no_checkpoint_that_loads_is_one_line_error(reference, tmp_path):
    import shutil

    from layertrace.errors import LayertraceError

    run = tmp_path / "all-bad"
    shutil.copytree(reference, run)
    (run / "final.safetensors").unlink()
    for folder in (run / "checkpoints").glob("step-*"):
        (folder / "optimizer.safetensors").write_bytes(b"")
    with pytest.raises(LayertraceError, match="no checkpoint in .* loads") as info:
        train_toy(str(run), steps=STEPS, ckpt_every=EVERY, dropout=0.1)
    assert "\n" not in str(info.value)


# ------------------------------------------------------------------------------ divergence
def _toy_source():
    """The toy data and its training batches (8 a step)."""
    from train_toy_script import toy_data

    from layertrace.training.batches import TensorBatches

    data = toy_data()
    return data, TensorBatches(data, 8, seed=1)


def _toy_fit(out: Path, poison_step: int | None, on_nonfinite: str = "stop", steps: int = 8, lr: float = 3e-3):
    """Fit the toy model; at optimizer step ``poison_step`` the loss is made NaN (a hook on the head)."""
    from layertrace.models import ToyConfig, ToyTransformerClassifier, adapt
    from layertrace.training.config import TrainSection
    from layertrace.training.loop import fit

    torch.manual_seed(0)
    model = ToyTransformerClassifier(ToyConfig())
    adapter = adapt(model).train()
    calls = {"n": 0}
    _, source = _toy_source()

    def poison(module, args, output):
        calls["n"] += 1
        return output * float("nan") if poison_step is not None and calls["n"] == poison_step else output

    # the final norm runs once per training forward pass in standard mode (and in evaluation, after)
    handle = model.norm.register_forward_hook(poison)
    cfg = TrainSection(mode="standard", steps=steps, batch_size=8, lr=lr, warmup_steps=0, log_every=2,
                       checkpoint_every=2, progress=False, seed=1, device="cpu", on_nonfinite=on_nonfinite)
    try:
        return fit(adapter, source, cfg, out), model
    finally:
        handle.remove()


def test_a_diverging_step_stops_the_run_naming_it_and_keeps_the_last_good_checkpoint(tmp_path):
    from layertrace.errors import LayertraceError
    from layertrace.models import ToyConfig, ToyTransformerClassifier
    from layertrace.training.checkpoint import load_module

    with pytest.raises(LayertraceError, match=r"diverged at step 5: the loss is nan") as info:
        _toy_fit(tmp_path / "run", poison_step=5)
    message = str(info.value)
    assert "\n" not in message and "step-00000004" in message and "--train.on_nonfinite skip" in message
    good = tmp_path / "run" / "checkpoints" / "step-00000004" / "model.safetensors"
    fresh = ToyTransformerClassifier(ToyConfig())
    load_module(fresh, good)
    assert all(torch.isfinite(p).all() for p in fresh.parameters())
    assert not (tmp_path / "run" / "checkpoints" / "step-00000006").exists()
    _records(tmp_path / "run")  # still strict JSON


def test_skip_drops_the_bad_update_and_goes_on(tmp_path):
    result, model = _toy_fit(tmp_path / "run", poison_step=3, on_nonfinite="skip")
    assert result.state.step == 8 and result.state.skipped_steps == 1
    assert all(torch.isfinite(p).all() for p in model.parameters())
    rows = _records(tmp_path / "run")
    assert rows[-1]["skipped_steps"] == 1


@pytest.mark.slow
def test_cli_diverging_run_exits_2_naming_the_step(tmp_path, capsys):
    """Through the CLI: a learning rate of 1e30 overflows at step 2; exit 2, one line, and the
    step-1 checkpoint it names loads into the model."""
    import numpy as np

    from layertrace.cli.main import main
    from layertrace.models import load_model
    from layertrace.training.checkpoint import load_module

    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (32, 1, 28, 28), dtype=np.uint8)
    np.savez(tmp_path / "d.npz", train_images=images, train_labels=np.arange(32) % 2,
             test_images=images[:8], test_labels=np.arange(8) % 2)
    run = tmp_path / "run"
    rc = main(["train", "--model.spec", "vit-demo", "--data.name", "npz", "--data.root", str(tmp_path / "d.npz"),
               "--train.steps", "4", "--train.batch_size", "16", "--train.lr", "1e30", "--train.warmup_steps", "0",
               "--train.clip_grad", "none", "--train.checkpoint_every", "1", "--train.progress", "false",
               "--train.device", "cpu", "--out", str(run)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert "training diverged at step 2" in err and "step-00000001" in err
    model = load_model("vit-demo", num_classes=2).model
    load_module(model, run / "checkpoints" / "step-00000001" / "model.safetensors")
    assert not (run / "train_summary.json").exists()
