"""The report's raw-vs-calibrated heatmaps and layer-removal section, from analysis.json files written by
a real analysis pass (null_permutations=K, layer_removal=True) and from the demo-shaped fixture runs."""

from __future__ import annotations

import base64
import io
import json
import re

import numpy as np
import pytest
import torch

from layertrace.analysis import analyze
from layertrace.models import ToyAdapter, ToyTransformerClassifier
from layertrace.report import build_report

from .fixtures import write_demo_like

pytestmark = [pytest.mark.xdist_group("report"),
              pytest.mark.filterwarnings("ignore::layertrace.metrics.DegenerateLayerWarning")]


def _batches(seed):
    g = torch.Generator().manual_seed(seed)
    return [{"input_ids": torch.randint(1, 64, (8, 6), generator=g), "attention_mask": torch.ones(8, 6, dtype=torch.long),
             "labels": torch.arange(8) % 3} for _ in range(3)]


def _md_rows(md: str, heading: str) -> list[list[str]]:
    part = md.split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0]
    lines = [ln for ln in part.splitlines() if ln.startswith("|")]
    return [[c.strip() for c in ln.strip().strip("|").split("|")] for ln in lines[2:]]


def _section_images(html: str, title: str) -> list[bytes]:
    section = html.split(f". {title}</h2>", 1)[1].split("<h2", 1)[0]
    return [base64.b64decode(m) for m in re.findall(r'src="data:image/png;base64,([^"]+)"', section)]


def test_sections_print_the_json_values_and_images_decode(tmp_path):
    import matplotlib.image as mpimg

    results = {}
    for seed, mode in enumerate(("standard", "aligned")):
        torch.manual_seed(seed)
        res = analyze(ToyAdapter(ToyTransformerClassifier().eval()), _batches(seed), null_permutations=19,
                      layer_removal=True)
        res.save(tmp_path / f"toy-tiny-{mode}")
        results[mode] = res
    paths = build_report([tmp_path], tmp_path / "report.html")
    html, md = paths.html.read_text(), paths.summary.read_text()
    removal = {row[0]: row for row in _md_rows(md, "Layer removal vs similarity")}
    for mode, res in results.items():
        lr = res.layer_removal
        row = removal[f"toy-tiny-{mode}"]
        assert row[1] == f"{100 * lr['baseline_accuracy']:.2f}"
        worst = int(np.argmax(lr["delta_cross_entropy"]))
        assert row[2] == f"{worst + 1} ({lr['delta_cross_entropy'][worst]:+.3f})"
        rho = lr["spearman"]["block_influence_vs_delta_cross_entropy"]
        assert row[4] == ("–" if not np.isfinite(rho) else f"{rho:.2f}")
    calibrated = _md_rows(md, "Raw vs permutation-calibrated similarity")
    assert {(r[0], r[1].split()[0]) for r in calibrated} == {(f"toy-tiny-{m}", k) for m in results for k in ("COS", "CKA")}
    for r in calibrated:
        entry = results[r[0].rsplit("-", 1)[1]].calibration[r[1].split()[0].lower()]
        iu = np.triu_indices(len(entry["score"]), k=1)
        assert r[4] == f"{int((entry['p_value'][iu] <= 0.05).sum())} / {len(iu[0])}"
        assert r[6] == f"{entry['calibrated'][iu].mean():.3f}"
    images = _section_images(html, "Layer removal vs similarity")
    assert len(images) == 2
    for png in images + _section_images(html, "Layer-wise similarity: COS and CKA"):
        assert mpimg.imread(io.BytesIO(png), format="png").ndim == 3
    assert "Raw vs calibrated similarity: toy-tiny-standard" in html and "Raw vs calibrated similarity: toy-tiny-aligned" in html


def test_demo_shaped_runs_get_the_sections_only_where_measured(tmp_path):
    runs = write_demo_like(tmp_path)[:3]  # ViT standard / aligned / multi-head: two get the entries
    # give two of the demo-shaped runs the entries a real pass writes (from the metrics functions)
    from layertrace import metrics

    feats = np.random.default_rng(0).normal(size=(7, 60, 8)).cumsum(axis=0)
    cal = {"n_permutations": 19, "alpha": 0.05, "seed": 0,
           "cos": {"n_samples": 60, **{k: v.tolist() for k, v in metrics.calibrated_similarity(
               feats, "cos", n_permutations=19).items() if k in ("score", "calibrated", "tau", "p_value")}}}
    removal = {"blocks": list(range(1, 7)), "n_predictions": 60, "baseline_accuracy": 0.8,
               "baseline_cross_entropy": 0.5, "delta_accuracy": [-0.3, -0.1, 0, 0, -0.02, -0.2],
               "delta_cross_entropy": [1.0, 0.2, 0.01, 0.02, 0.1, 0.6], "block_influence": [0.5, 0.2, 0.05, 0.04, 0.1, 0.3],
               "adjacent_cos": [0.4, 0.7, 0.9, 0.92, 0.85, 0.6],
               "spearman": {"block_influence_vs_delta_cross_entropy": 1.0,
                            "one_minus_adjacent_cos_vs_delta_cross_entropy": 1.0,
                            "block_influence_vs_accuracy_drop": 0.9}}
    for run in runs[:2]:
        data = json.loads((run / "analysis.json").read_text())
        data.update(calibration=cal, layer_removal=removal)
        (run / "analysis.json").write_text(json.dumps(data))
    after = build_report(runs, tmp_path / "after.html")
    html = after.html.read_text()
    assert len(_section_images(html, "Layer removal vs similarity")) == 2
    assert f"Raw vs calibrated similarity: {runs[2].name}" not in html
    rows = _md_rows(after.summary.read_text(), "Layer removal vs similarity")
    assert [r[0] for r in rows] == [runs[0].name, runs[1].name]  # not the run without the entry
    assert [r[0] for r in _md_rows(after.summary.read_text(), "Raw vs permutation-calibrated similarity")] == \
        [runs[0].name, runs[1].name]
    assert rows[0][2] == "1 (+1.000)" and rows[0][3] == "3 (+0.010)" and rows[0][4] == "1.00"
