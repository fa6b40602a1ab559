"""The training loop: exact resume after SIGKILL, 2-process DDP parity, accumulation, schedules."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from layertrace.training.config import TrainSection
from layertrace.training.loop import lr_factor

SCRIPT = Path(__file__).with_name("train_toy_script.py")
sys.path.insert(0, str(SCRIPT.parent))
from train_toy_script import toy_data, train_toy  # noqa: E402
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}


def _weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


def _run(out: Path, *extra: str, timeout: float = 120) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, str(SCRIPT), "--out", str(out), *extra], env=ENV, capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _latest_step(out: Path) -> int:
    pointer = out / "checkpoints" / "latest.json"
    try:
        return json.loads(pointer.read_text())["step"]
    except (FileNotFoundError, json.JSONDecodeError):
        return 0


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_gives_the_uninterrupted_weights(tmp_path):
    # 96 samples / batch 8 = 12 steps per epoch; 30 steps end mid-epoch 3; dropout exercises the RNG state.
    args = ["--steps", "30", "--ckpt-every", "5", "--dropout", "0.1"]
    train_toy(str(tmp_path / "full"), steps=30, ckpt_every=5, dropout=0.1)  # in-process: same code, same numbers

    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, str(SCRIPT), "--out", str(killed), *args, "--sleep", "0.05"],
                            env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 90
    while _latest_step(killed) < 15 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    time.sleep(0.12)  # a couple of steps past the checkpoint: the kill lands mid-epoch, between checkpoints
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    stopped_at = _latest_step(killed)
    assert 15 <= stopped_at < 30 and stopped_at % 12 != 0, stopped_at  # mid-epoch, not finished
    assert not (killed / "final.safetensors").exists()

    resumed = _run(killed, *args)
    assert "resumed at step" in resumed.stdout
    full, again = _weights(tmp_path / "full" / "final.safetensors"), _weights(killed / "final.safetensors")
    assert full.keys() == again.keys()
    for key in full:
        assert torch.equal(full[key], again[key]), key  # bit-identical
    # the log holds every logged step once, in order, as in the uninterrupted run
    steps = [json.loads(line)["step"] for line in (killed / "metrics.jsonl").read_text().splitlines()
             if "eval" not in json.loads(line)]
    assert steps == [5, 10, 15, 20, 25, 30]
    ref = [json.loads(line) for line in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    got = [json.loads(line) for line in (killed / "metrics.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in ref if "loss" in r] == [r["loss"] for r in got if "loss" in r]


def assert_same_toy_model(one: dict[str, torch.Tensor], two: dict[str, torch.Tensor]) -> None:
    """Two toy-model state dicts agree to float tolerance, and so do their logits on the toy data.

    The key bias (middle third of ``qkv.bias``) has an exactly-zero gradient (softmax is shift
    invariant), so AdamW turns float noise of size 1e-9 into lr-sized steps that differ between any
    two summation orders; it cannot change any output, so it is left out of the weight comparison.
    """
    from layertrace.models import ToyTransformerClassifier


    for key in one:
        a, b = one[key], two[key]
        if key.endswith("qkv.bias"):
            d = a.shape[0] // 3
            a, b = torch.cat([a[:d], a[2 * d:]]), torch.cat([b[:d], b[2 * d:]])
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5, msg=key)
    data = toy_data()
    logits = []
    for weights in (one, two):
        model = ToyTransformerClassifier().eval()
        model.load_state_dict(weights)
        logits.append(model(data["input_ids"], data["attention_mask"]).logits)
    torch.testing.assert_close(logits[1], logits[0], rtol=1e-4, atol=1e-5)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_process_gloo_run_matches_one_process_with_the_same_global_batch(tmp_path):
    args = ["--steps", "8", "--batch", "8", "--ckpt-every", "4"]
    train_toy(str(tmp_path / "one"), steps=8, batch=8, ckpt_every=4)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(_free_port()),
           str(SCRIPT), "--out", str(tmp_path / "two"), *args]
    proc = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "x2 proc" in proc.stdout
    one, two = _weights(tmp_path / "one" / "final.safetensors"), _weights(tmp_path / "two" / "final.safetensors")
    assert_same_toy_model(one, two)
    moved = max(float((one[k] - _initial()[k]).abs().max()) for k in one)
    assert moved > 1e-3  # training changed the weights, so the agreement is not trivial
    # each rank saved its own RNG state for an exact distributed resume
    assert {p.name for p in (tmp_path / "two" / "checkpoints" / "step-00000008").glob("rng-*")} == {
        "rng-rank0.safetensors", "rng-rank1.safetensors"}


def _initial() -> dict[str, torch.Tensor]:
    from layertrace.models import ToyConfig, ToyTransformerClassifier

    torch.manual_seed(0)
    return {k: v.detach().clone() for k, v in ToyTransformerClassifier(ToyConfig()).state_dict().items()}


def test_gradient_accumulation_matches_one_big_batch(tmp_path):
    from layertrace.models import ToyTransformerClassifier, adapt
    from layertrace.training.batches import TensorBatches
    from layertrace.training.loop import fit


    finals = []
    for accum in (1, 2):
        torch.manual_seed(0)
        model = ToyTransformerClassifier()
        cfg = TrainSection(mode="aligned", steps=4, batch_size=8, grad_accum=accum, lr=3e-3, progress=False,
                           checkpoint_every=0, device="cpu", clip_grad=None)
        fit(adapt(model).train(), TensorBatches(toy_data(), 8 // accum, seed=0, trim=False), cfg,
            tmp_path / f"acc{accum}")
        finals.append({k: v.detach().clone() for k, v in model.state_dict().items()})
    assert_same_toy_model(finals[0], finals[1])


def test_fit_logs_alternating_loss_kinds_and_layerwise_eval(tmp_path):
    from layertrace.models import ToyTransformerClassifier, adapt
    from layertrace.training.batches import TensorBatches
    from layertrace.training.loop import fit


    torch.manual_seed(0)
    data = toy_data()
    cfg = TrainSection(mode="aligned-alternating", steps=4, batch_size=8, log_every=1, eval_every=2,
                       checkpoint_every=0, progress=False, device="cpu")
    result = fit(adapt(ToyTransformerClassifier()).train(), TensorBatches(data, 8), cfg, tmp_path, eval_batches=[data])
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    kinds = [r["loss_kind"] for r in records if "loss_kind" in r]
    assert kinds == ["last-layer CE", "layerwise", "last-layer CE", "layerwise"]
    assert list(records[1]["per_layer"]) == ["1", "2", "3", "4"]
    evals = [r for r in records if "eval" in r]
    assert [r["step"] for r in evals] == [2, 4] and evals[-1].get("final")
    assert result.final_eval.layers == [0, 1, 2, 3, 4]
    assert all(0.0 <= a <= 1.0 for a in result.final_eval.accuracy)


def test_schedules():
    cfg = TrainSection(schedule="cosine", warmup_steps=4, lr=1.0)
    factors = [lr_factor(s, 20, cfg) for s in range(20)]
    assert factors[:4] == pytest.approx([0.2, 0.4, 0.6, 0.8])
    assert factors[4] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(factors[4:], factors[5:]))
    multi = TrainSection(schedule="multistep", warmup_steps=0, milestones=[0.5, 15], gamma=0.1)
    assert [lr_factor(s, 20, multi) for s in (0, 9, 10, 14, 15, 19)] == pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.01])


def test_layerwise_eval_agrees_with_the_analysis_pass(toy_model, toy_batch):
    """The loop's evaluation and the analysis pass's cheap readout mode compute the same accuracy."""
    from layertrace.analysis.core import layerwise_readout
    from layertrace.models import adapt
    from layertrace.training.evaluate import evaluate_layerwise

    adapter = adapt(toy_model)
    data = toy_data()
    batches = [{k: v[i:i + 32] for k, v in data.items()} for i in range(0, 96, 32)]
    ours = evaluate_layerwise(adapter, batches)
    theirs = layerwise_readout(adapter, batches)
    assert ours.layers == list(theirs["layers"])
    assert ours.accuracy == pytest.approx(list(theirs["accuracy"]), abs=1e-12)
    assert ours.loss == pytest.approx(list(theirs["cross_entropy"]), rel=1e-5)


def test_runs_with_different_precisions_in_one_process(tmp_path):
    """bf16 autocast works on CPU, and a later run in the same process may use another precision."""
    from layertrace.models import ToyTransformerClassifier, adapt
    from layertrace.training.batches import TensorBatches
    from layertrace.training.loop import fit

    losses = {}
    for precision in ("bf16", "no"):
        torch.manual_seed(0)
        cfg = TrainSection(mode="aligned", steps=2, batch_size=8, precision=precision, progress=False,
                           checkpoint_every=0, device="cpu")
        result = fit(adapt(ToyTransformerClassifier()).train(), TensorBatches(toy_data(), 8), cfg,
                     tmp_path / precision, eval_batches=[toy_data()])
        losses[precision] = result.final_eval.loss[-1]
    assert losses["bf16"] == pytest.approx(losses["no"], rel=0.02)  # same run up to bf16 rounding
