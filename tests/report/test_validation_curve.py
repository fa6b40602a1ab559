"""The report's "Validation during training" figure (the paper's Fig. 5b) is drawn from the training
loop's real ``eval`` records, read as typed records through layertrace.run_folder."""

from __future__ import annotations

import json

import torch

from layertrace.report.figures import Figures
from layertrace.report.runs import load_run, load_runs
from layertrace.run_folder import eval_records

from .fixtures import write_demo_like


def _train_toy(run_dir, mode: str):
    from layertrace.models import ToyTransformerClassifier, adapt
    from layertrace.training.batches import TensorBatches
    from layertrace.training.config import TrainSection
    from layertrace.training.loop import fit

    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(2, 64, (16, 8), generator=g)
    data = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": torch.randint(0, 3, (16,), generator=g)}
    cfg = TrainSection(mode=mode, steps=6, batch_size=8, log_every=1, eval_every=2, checkpoint_every=0,
                       progress=False, device="cpu")
    return fit(adapt(ToyTransformerClassifier()).train(), TensorBatches(data, 8), cfg, run_dir, eval_batches=[data])


def test_eval_records_of_a_real_run_are_read_typed_and_drawn(tmp_path):
    results = {mode: _train_toy(tmp_path / f"toy-tiny-{mode}", mode) for mode in ("standard", "aligned")}
    for mode, result in results.items():
        run = load_run(tmp_path / f"toy-tiny-{mode}")
        assert run.mode == mode
        # every periodic evaluation and the final one, in order, with the loop's own numbers
        assert [e.step for e in run.evals] == [2, 4, 6] and run.evals[-1].final
        assert run.evals[-1].layers == result.final_eval.layers
        assert run.evals[-1].accuracy == result.final_eval.accuracy
        rows = [json.loads(line) for line in (run.path / "metrics.jsonl").read_text().splitlines()]
        assert len(eval_records(rows)) == sum("eval" in r for r in rows) == 3
    titles = [f.title for f in Figures(load_runs([tmp_path])).training_curves()]
    assert "Validation during training" in titles


def test_no_eval_records_no_validation_figure(tmp_path):
    runs = load_runs(write_demo_like(tmp_path))
    assert all(r.evals for r in runs if r.mode in ("standard", "aligned", "multi-head"))
    assert "Validation during training" in [f.title for f in Figures(runs).training_curves()]
    for r in runs:
        r.evals = []
    assert "Validation during training" not in [f.title for f in Figures(runs).training_curves()]


def test_periodic_evaluations_read_the_smaller_set_and_the_final_one_all(tmp_path):
    from layertrace.models import ToyTransformerClassifier, adapt
    from layertrace.training.batches import TensorBatches
    from layertrace.training.config import TrainSection
    from layertrace.training.loop import fit

    torch.manual_seed(0)
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(2, 64, (24, 8), generator=g)
    data = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": torch.randint(0, 3, (24,), generator=g)}
    small = [{k: v[:8] for k, v in data.items()}]
    cfg = TrainSection(mode="aligned", steps=4, batch_size=8, log_every=1, eval_every=2, checkpoint_every=0,
                       progress=False, device="cpu")
    fit(adapt(ToyTransformerClassifier()).train(), TensorBatches(data, 8), cfg, tmp_path, eval_batches=[data],
        periodic_eval_batches=small)
    evals = load_run(tmp_path).evals
    assert [(e.step, e.n, e.final) for e in evals] == [(2, 8, False), (4, 24, True)]
