"""The report's neural-collapse section, from analysis.json files written by a real collapse=True pass."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from layertrace.analysis import analyze
from layertrace.models import ToyAdapter, ToyTransformerClassifier
from layertrace.report import build_report

pytestmark = [pytest.mark.xdist_group("report"),
              pytest.mark.filterwarnings("ignore::layertrace.metrics.DegenerateLayerWarning")]


def _batches(seed):
    g = torch.Generator().manual_seed(seed)
    return [{"input_ids": torch.randint(1, 64, (8, 6), generator=g), "attention_mask": torch.ones(8, 6, dtype=torch.long),
             "labels": torch.arange(8) % 3} for _ in range(2)]


def test_collapse_section_prints_the_json_values(tmp_path):
    results = {}
    for seed, mode in enumerate(("standard", "aligned")):
        torch.manual_seed(seed)
        res = analyze(ToyAdapter(ToyTransformerClassifier().eval()), _batches(seed), collapse=True)
        res.save(tmp_path / f"toy-tiny-{mode}")
        results[mode] = res
    paths = build_report([tmp_path], tmp_path / "report.html")
    html = paths.html.read_text()
    assert "Neural collapse per layer" in html and "NC3: class means vs the head" in html
    md = paths.summary.read_text()
    part = md.split("## Neural collapse per layer\n", 1)[1]
    nc1 = part.split("NC1:", 1)[1].split("\n\n", 2)[1]
    rows = {cells[0]: cells[1:] for cells in
            ([c.strip() for c in line.strip().strip("|").split("|")] for line in nc1.splitlines()[2:])}
    for mode, res in results.items():
        assert rows[f"toy-tiny-{mode}"] == [f"{v:.4f}" for v in res.collapse["nc1"]]
    section = html.split(". Neural collapse per layer</h2>", 1)[1].split("<h2", 1)[0]
    assert len(re.findall(r"<figcaption>", section)) == 4  # NC1, NC2 (two), NC3


def test_no_collapse_section_without_collapse(tmp_path):
    torch.manual_seed(0)
    analyze(ToyAdapter(ToyTransformerClassifier().eval()), _batches(0)).save(tmp_path / "toy-tiny-standard")
    paths = build_report([tmp_path], tmp_path / "report.html")
    assert "Neural collapse" not in paths.html.read_text() and "Neural collapse" not in paths.summary.read_text()


def test_probe_table_prints_the_probe_json(tmp_path):
    from layertrace.analysis.probe import ProbeResult

    for i, mode in enumerate(("standard", "aligned")):
        ProbeResult(n_layers=2, layers=[0, 1, 2], model="m", data="mnist-5k", num_classes=10, n_train=50,
                    n_test=20, accuracy=[0.1 + i / 10, 0.5, 0.75], majority_accuracy=0.1).save(tmp_path / f"x-vit-{mode}")
    paths = build_report([tmp_path], tmp_path / "report.html")
    assert "Task transfer: linear probes per layer" in paths.html.read_text()
    md = paths.summary.read_text().split("## Task transfer: linear probes per layer\n", 1)[1]
    lines = [ln for ln in md.splitlines() if ln.startswith("| x-vit-")]
    assert lines == ["| x-vit-standard | mnist-5k | 10.00 | 10.00 | 50.00 | 75.00 |",
                     "| x-vit-aligned | mnist-5k | 10.00 | 20.00 | 50.00 | 75.00 |"]


def test_collapse_and_probe_findings_follow_the_json(tmp_path):
    import math

    from layertrace.analysis.probe import ProbeResult
    from layertrace.report.findings import all_findings
    from layertrace.report.runs import load_runs

    nc1 = {}
    for seed, mode in enumerate(("standard", "aligned")):
        torch.manual_seed(seed)
        res = analyze(ToyAdapter(ToyTransformerClassifier().eval()), _batches(seed), collapse=True)
        res.save(tmp_path / f"toy-tiny-{mode}")
        nc1[mode] = res.collapse["nc1"][1:-1]  # layers 1..L-1
        acc = [0.1, 0.5, 0.75] if mode == "standard" else [0.1, 0.49, 0.76]  # within 2 points: holds
        ProbeResult(n_layers=2, layers=[0, 1, 2], data="mnist-5k", accuracy=acc).save(tmp_path / f"toy-tiny-{mode}")
    findings = {f.claim.split(":")[0]: f for f in all_findings(load_runs([tmp_path]))}
    nc = findings["Aligned training brings neural collapse to shallower layers"]
    gm = {m: math.exp(np.mean(np.log(v))) for m, v in nc1.items()}
    assert nc.status == ("holds" if gm["aligned"] < gm["standard"] else "does not hold")
    assert f"aligned {gm['aligned']:.3g}, standard {gm['standard']:.3g}" in nc.evidence
    probe_claim = next(f for k, f in findings.items() if k.startswith("Aligned training keeps transferability"))
    assert probe_claim.status == "holds"
    ProbeResult(n_layers=2, layers=[0, 1, 2], data="mnist-5k", accuracy=[0.1, 0.4, 0.76]).save(tmp_path / "toy-tiny-aligned")
    again = [f for f in all_findings(load_runs([tmp_path])) if f.claim.startswith("Aligned training keeps")]
    assert again[0].status == "does not hold" and "1 of 2 layers" in again[0].evidence
