"""Re-readings of trained runs in the report (``<run>/variants/<name>/``: the demo's shifted test set and its
[CLS] counter-example), and the depth checks (monotone accuracy, minimal depth).

Fixture runs: synthetic analysis.json files (tests/report/fixtures.py) with accuracy curves chosen so each
claim holds or fails on purpose; plus one real re-reading: a tiny BERT classifier run folder trained with
mean pooling, re-analysed with pooling=cls, which must match the adapter's own [CLS] logits.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from layertrace.report import build_report
from layertrace.report.findings import (all_findings, check_accuracy_monotone, check_minimal_depth, check_trained_pooling,
                                        check_variants)
from layertrace.report.runs import load_runs
from layertrace.report.variants import variant_rows

from .fixtures import analysis_dict

STD = [0.10, 0.30, 0.50, 0.70, 0.85, 0.86, 0.87]
ALI = [0.10, 0.70, 0.80, 0.84, 0.86, 0.87, 0.87]


def _analysis(acc):
    L = len(acc) - 1
    cos = [0.2 + 0.8 * l / L for l in range(L + 1)]
    return analysis_dict(L, acc, cos, cos)


def _run(root: Path, name: str, acc, variants: dict | None = None, pooling: str | None = None) -> Path:
    d = root / name
    d.mkdir(parents=True)
    cfg = {"model": {"spec": "minilm-cls", **({"pooling": pooling} if pooling else {})},
           "data": {"name": "rotten-tomatoes"}, "train": {"mode": name.rsplit("-", 1)[-1]}}
    (d / "config.yaml").write_text(yaml.safe_dump(cfg))
    (d / "analysis.json").write_text(json.dumps(_analysis(acc)))
    for vname, (vacc, vcfg) in (variants or {}).items():
        v = d / "variants" / vname
        v.mkdir(parents=True)
        (v / "analysis.json").write_text(json.dumps(_analysis(vacc)))
        (v / "analyze-config.yaml").write_text(yaml.safe_dump(vcfg))
    return d


def test_variant_is_read_and_checked_like_its_own_comparison(tmp_path):
    shift = {"shift": "rotate:15+noise:0.2", "shift_seed": 0}
    s = _run(tmp_path, "fmnist-vit-standard", STD, {"shift": ([0.1, 0.2, 0.3, 0.5, 0.6, 0.62, 0.63], shift)})
    # aligned keeps its advantage at every layer but 2 under the shift
    a = _run(tmp_path, "fmnist-vit-aligned", ALI, {"shift": ([0.1, 0.5, 0.25, 0.6, 0.62, 0.63, 0.64], shift)})
    runs = load_runs([s, a])
    assert set(runs[0].variants) == {"shift"} and runs[0].variants["shift"].config["shift"] == shift["shift"]
    found = {f.claim.split(":")[0]: f for f in check_variants(runs)}
    layerwise = found["Aligned training makes intermediate layers readable"]
    assert layerwise.scope == "fmnist-vit [shift]: fmnist-vit-aligned [shift] vs fmnist-vit-standard [shift]"
    assert layerwise.status == "does not hold" and "l=2: 25.00% vs 30.00%" in layerwise.evidence
    # shallow half 1..3: mean gain (0.4 - 0.05 + 0.1) / 3 = +15 pt
    assert found["Aligned training lifts the shallow half"].status == "holds"
    assert "+11.67 pt" in found["Aligned training lifts the shallow half"].evidence
    header, rows = variant_rows(runs, "shift")
    assert header[:3] == ["run", "reading", "l=0"]
    assert [r[:2] for r in rows] == [["fmnist-vit-standard", "own"], ["fmnist-vit-standard", "shift"],
                                     ["fmnist-vit-aligned", "own"], ["fmnist-vit-aligned", "shift"]]
    assert rows[3][4] == "25.00"
    html = build_report([s, a], tmp_path / "report.html").html.read_text()
    assert "Distribution shift: every layer on a shifted test set" in html and "rotate:15+noise:0.2" in html
    summary = (tmp_path / "summary.md").read_text()
    assert "| fmnist-vit-aligned | shift | 10.00 | 50.00 | 25.00 |" in summary


@pytest.mark.parametrize("cls_std, expected", [([0.1, 0.45, 0.45, 0.45, 0.6, 0.8, 0.85], "holds"),
                                               ([0.1, 0.6, 0.6, 0.6, 0.8, 0.85, 0.86], "does not hold")])
def test_trained_pooling_check(tmp_path, cls_std, expected):
    cfg = {"pooling": "cls"}
    s = _run(tmp_path, "rt-minilm-standard", STD, {"pooling-cls": (cls_std, cfg)}, pooling="mean")
    a = _run(tmp_path, "rt-minilm-aligned", ALI, {"pooling-cls": ([0.1, 0.54, 0.55, 0.6, 0.8, 0.85, 0.86], cfg)},
             pooling="mean")
    runs = load_runs([s, a])
    (f,) = check_trained_pooling("rt-minilm", runs, "pooling-cls")
    # layers 1..3 (L = 6): standard own 50.00%, aligned own 78.00%, aligned cls 56.33%; the standard cls reading
    # decides: 45.00% (own higher in every mode: holds) or 60.00% (not in the standard run: does not hold)
    own_s, cls_s = sum(STD[1:4]) / 3, sum(cls_std[1:4]) / 3
    own_a, cls_a = sum(ALI[1:4]) / 3, (0.54 + 0.55 + 0.6) / 3
    assert (own_s > cls_s and own_a > cls_a) == (expected == "holds")
    assert f.status == expected
    assert f"standard: mean {100 * own_s:.2f}% vs cls {100 * cls_s:.2f}%" in f.evidence
    assert "Reading the pooling the model was trained with matters" in f.claim
    assert any(x.claim == f.claim for x in all_findings(runs))
    html = build_report([s, a], tmp_path / "report.html").html.read_text()
    assert "The same trained runs read through pooling=cls (counter-example)" in html


def test_monotone_accuracy_and_minimal_depth(tmp_path):
    s = _run(tmp_path, "fmnist-vit-standard", STD)
    a = _run(tmp_path, "fmnist-vit-aligned", [0.10, 0.70, 0.80, 0.78, 0.86, 0.87, 0.87])
    runs = load_runs([s, a])
    mono = {r.name: check_accuracy_monotone(r) for r in runs}
    assert mono["fmnist-vit-standard"].status == "holds"
    assert mono["fmnist-vit-aligned"].status == "does not hold" and "2->3: 80.00%->78.00%" in mono[
        "fmnist-vit-aligned"].evidence
    (depth,) = check_minimal_depth("fmnist-vit", runs)
    # relative effective depth at eps 0.025: smallest l with acc >= 0.975 * acc[L]; aligned 4 (0.86 >= 0.848), standard 4
    assert depth.status == "does not hold" and "aligned 4, standard 4, of L = 6" in depth.evidence
    b = tmp_path / "b"
    # aligned reaches 0.85 >= 0.975 * 0.87 = 0.848 at l=3, the standard run at l=4
    runs = load_runs([_run(b, "fmnist-vit-standard", STD),
                      _run(b, "fmnist-vit-aligned", [0.10, 0.70, 0.80, 0.85, 0.86, 0.87, 0.87])])
    (depth,) = check_minimal_depth("fmnist-vit", runs)
    assert depth.status == "holds" and "aligned 3, standard 4" in depth.evidence


def test_cls_rereading_of_a_mean_pooled_run_reads_the_cls_token(tmp_path):
    """A real re-reading: a tiny BERT run folder saved with pooling=mean, analysed with pooling=cls, gives
    the accuracy of the head applied to each layer's [CLS] token (recomputed here from hidden states)."""
    import torch
    import transformers

    from layertrace.analysis import analyze_from_config
    from layertrace.analysis.config import AnalyzeConfig
    from layertrace.data import load_dataset
    from layertrace.models.loading import load_model

    torch.manual_seed(0)
    tok_dir = Path(__import__("layertrace.models.presets", fromlist=["minilm_dir"]).minilm_dir())
    cfg = transformers.BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=64, num_labels=2, max_position_embeddings=64)
    model = transformers.BertForSequenceClassification(cfg).eval()
    with torch.no_grad():  # a sharp head, so predictions depend on the token read (random init: near-constant)
        model.classifier.weight.mul_(50.0)
    run = tmp_path / "rt-tiny-standard"
    model.save_pretrained(run / "model")
    transformers.AutoTokenizer.from_pretrained(tok_dir).save_pretrained(run / "model")
    (run / "model" / "preprocess.json").write_text(json.dumps({"modality": "text", "max_length": 24, "pooling": "mean"}))
    out = run / "variants" / "pooling-cls"
    analyze_from_config(AnalyzeConfig(model=str(run / "model"), data="rotten-tomatoes", limit=64, max_length=24,
                                      pooling="cls", out=str(out), progress=False, per_sample=False))
    got = json.loads((out / "analysis.json").read_text())["accuracy"]
    loaded = load_model(str(run / "model"), pooling="cls")
    assert loaded.adapter.pooling == "cls" and load_model(str(run / "model")).adapter.pooling == "mean"
    ds = load_dataset("rotten-tomatoes", "test", limit=64)
    enc = loaded.tokenizer(list(ds.texts), truncation=True, max_length=24, padding=True, return_tensors="pt")
    with torch.no_grad():
        hs = model(**enc, output_hidden_states=True).hidden_states
        labels = torch.as_tensor(ds.labels)
        want = [float((model.classifier(model.bert.pooler(h)).argmax(-1) == labels).double().mean()) for h in hs]
        m = enc["attention_mask"].unsqueeze(-1).to(hs[0].dtype)
        mean = [((h * m).sum(1) / m.sum(1)) for h in hs]
        by_mean = [model.classifier(model.bert.pooler.activation(model.bert.pooler.dense(x))).argmax(-1) for x in mean]
        by_cls = [model.classifier(model.bert.pooler(h)).argmax(-1) for h in hs]
    assert got == pytest.approx(want, abs=1e-9)
    assert any(bool((a != b).any()) for a, b in zip(by_mean, by_cls))  # the two readings do differ here
