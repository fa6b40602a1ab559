"""The report from fixture runs: self-contained HTML, decodable images, summary numbers == JSON."""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
from pathlib import Path

import pytest

from layertrace.errors import LayertraceError

from .fixtures import write_demo_like, write_run

pytestmark = pytest.mark.xdist_group("report")


@pytest.fixture(scope="module")
def demo_report(tmp_path_factory):
    """A report built once from demo-shaped runs (7 runs, 3 comparison groups)."""
    from layertrace.report import build_report

    root = tmp_path_factory.mktemp("demo")
    write_demo_like(root)
    paths = build_report([root], root / "report.html", title="fixture report")
    return root, paths


def _images(html: str) -> list[bytes]:
    return [base64.b64decode(m) for m in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)]


def test_page_is_self_contained_and_every_image_decodes(demo_report):
    from PIL import Image

    root, paths = demo_report
    html = paths.html.read_text()
    assert html.startswith("<!DOCTYPE html>")
    # No reference leaves the page: every src / href is a data URI or an in-page anchor.
    refs = re.findall(r'(?:src|href)="([^"]*)"', html)
    assert refs, "page has no images or links"
    outside = [r for r in refs if not (r.startswith("data:") or r.startswith("#"))]
    assert outside == []
    assert "<script" not in html and "@import" not in html and "url(" not in html
    images = _images(html)
    assert len(images) >= 15  # every section drew its figures
    for png in images:
        with Image.open(io.BytesIO(png)) as im:
            im.load()
            assert im.format == "PNG" and im.size[0] > 100 and im.size[1] > 100
    # Every figure has a caption saying what to look for.
    captions = re.findall(r"<figcaption>(.*?)</figcaption>", html, flags=re.S)
    assert len(captions) == len(images)
    assert all("Look for" in c for c in captions)


def test_images_also_decode_with_matplotlib(demo_report):
    import matplotlib.image as mpimg

    _, paths = demo_report
    for png in _images(paths.html.read_text())[:5]:
        arr = mpimg.imread(io.BytesIO(png), format="png")
        assert arr.ndim == 3 and arr.shape[0] > 100


def _md_table(md: str, heading: str) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the Markdown table in section ``## heading``."""
    part = md.split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0]
    lines = [ln for ln in part.splitlines() if ln.startswith("|") and not ln.startswith("| ---")]
    rows = [[c.strip() for c in re.split(r"(?<!\\)\|", ln.strip())[1:-1]] for ln in lines]
    return rows[0], rows[1:]


def test_summary_per_layer_numbers_equal_the_json(demo_report):
    root, paths = demo_report
    md = paths.summary.read_text()
    header, rows = _md_table(md, "Layer-wise accuracy (%) through the shared head")
    assert header[0] == "run"
    seen = set()
    for row in rows:
        run = row[0]
        if run.endswith(" (own per-layer heads)"):  # the multi-head run read by its own heads: exit.json
            ex = json.loads((root / run.split(" ")[0] / "exit.json").read_text())
            by_layer = dict(zip(ex["exit_layers"], ex["layer_accuracy"]))
        else:
            analysis = json.loads((root / run / "analysis.json").read_text())
            by_layer = dict(zip(analysis["layers"], analysis["accuracy"]))
        for col, cell in zip(header[1:], row[1:]):
            layer = int(col.split("=")[1])
            if cell == "–":
                assert layer not in by_layer
                continue
            assert float(cell) == pytest.approx(100 * by_layer[layer], abs=0.00501)
        seen.add(run)
    assert len(seen) == 8  # 7 runs + the multi-head run through its own heads
    header, rows = _md_table(md, "COS(l, L) to the last layer")
    for row in rows:
        analysis = json.loads((root / row[0] / "analysis.json").read_text())
        by_layer = dict(zip(analysis["layers"], analysis["cos_to_last"]))
        for col, cell in zip(header[1:], row[1:]):
            if cell != "–":
                assert float(cell) == pytest.approx(by_layer[int(col.split("=")[1])], abs=5e-4 + 1e-9)


def test_summary_comparison_numbers_equal_the_json(demo_report):
    from layertrace.exits import ExitRecord
    from layertrace.report.tables import operating_point

    root, paths = demo_report
    header, rows = _md_table(paths.summary.read_text(), "Early-exit comparison")
    col = {h: i for i, h in enumerate(header)}
    assert {"parameters", "full accuracy %", "speed-up (layers)", "speed-up measured, batch 64",
            "FLOPs/sample"} <= set(col)
    assert len(rows) == 5  # every run with an exit.json
    for row in rows:
        ex = json.loads((root / row[col["run"]] / "exit.json").read_text())
        point = operating_point(ExitRecord.from_dict(ex), 0.01).to_dict()  # the typed reader, back to the JSON keys
        # the chosen point is the fastest within one point of full accuracy (checked by a naive loop)
        ok = [p for p in ex["points"] if p["accuracy"] >= ex["full_accuracy"] - 0.01]
        assert ok, "the fixture sweep includes the full-depth point"
        assert point["speedup"] == max(p["speedup"] for p in ok)
        assert float(row[col["full accuracy %"]]) == pytest.approx(100 * ex["full_accuracy"], abs=0.00501)
        assert float(row[col["exit accuracy %"]]) == pytest.approx(100 * point["accuracy"], abs=0.00501)
        assert float(row[col["speed-up (layers)"]].rstrip("x")) == pytest.approx(point["speedup"], abs=0.00501)
        assert float(row[col["speed-up measured, batch 64"]].rstrip("x")) == pytest.approx(
            point["measured_speedup"], abs=0.00501)
        key = "per_layer_heads" if row[col["mode"]] == "multi-head" else "shared_head"
        assert int(row[col["parameters"]].replace(",", "")) == ex["params"][key]


def test_findings_say_plainly_where_the_paper_does_not_hold(tmp_path):
    """Aligned below standard at layer 2 and a final-layer drop of 5 points must be reported as such."""
    from layertrace.report import all_findings, build_report, load_runs

    L = 4
    write_run(tmp_path, "toy-vit-standard", L, [0.1, 0.5, 0.7, 0.8, 0.9], [0.2, 0.3, 0.5, 0.7, 1.0],
              [0.3, 0.4, 0.6, 0.8, 1.0], "standard")
    write_run(tmp_path, "toy-vit-aligned", L, [0.1, 0.7, 0.6, 0.8, 0.85], [0.3, 0.5, 0.4, 0.8, 1.0],
              [0.3, 0.5, 0.6, 0.8, 1.0], "aligned")
    findings = {f.claim.split(":")[0]: f for f in all_findings(load_runs([tmp_path])) if not f.per_run}
    readable = findings["Aligned training makes intermediate layers readable"]
    assert readable.status == "does not hold"
    assert "l=2: 60.00% vs 70.00%" in readable.evidence
    final = findings["The last layer keeps its accuracy"]
    assert final.status == "does not hold" and "-5.00 pt" in final.evidence
    cos = findings["Aligned training raises similarity to the last layer"]
    assert cos.status == "does not hold" and "l=2: 0.400 vs 0.500" in cos.evidence
    paths = build_report([tmp_path], tmp_path / "r.html")
    md = paths.summary.read_text()
    assert "**does not hold** — Aligned training makes intermediate layers readable" in md
    assert "do not hold on these runs" in paths.html.read_text()


def test_findings_hold_on_the_demo_shaped_runs(demo_report):
    from layertrace.report import all_findings, load_runs

    root, _ = demo_report
    findings = all_findings(load_runs([root]))
    mlp = [f for f in findings if f.scope.startswith("mnist-mlp")]
    assert {f.status for f in mlp} == {"holds"}
    vit = [f for f in findings if f.scope.startswith("fmnist-vit: fmnist-vit-aligned vs fmnist-vit-standard")]
    assert any(f.claim.startswith("Aligned training makes") and f.status == "holds" for f in vit)


def test_minilm_is_called_a_sentence_embedding_model(demo_report):
    _, paths = demo_report
    for text in (paths.html.read_text(), paths.summary.read_text()):
        assert "sentence-embedding model" in text and "not vanilla BERT" in text


def test_missing_optional_files_and_user_errors(tmp_path):
    from layertrace.report import build_report, load_run

    d = tmp_path / "only-analysis-standard"
    write_run(tmp_path, d.name, 3, [0.1, 0.5, 0.6, 0.7], [0.2, 0.4, 0.6, 1.0], [0.3, 0.5, 0.7, 1.0], "standard",
              with_exit=False)
    (d / "metrics.jsonl").unlink()
    paths = build_report([d], tmp_path / "out" / "report.html")
    html = paths.html.read_text()
    assert "No exit.json in these runs" in html and "No metrics.jsonl in these runs" in html
    with pytest.raises(LayertraceError, match="not found"):
        load_run(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(LayertraceError, match="holds no analysis.json"):
        build_report([tmp_path / "empty"], tmp_path / "r.html")
    bad = tmp_path / "bad-standard"
    bad.mkdir()
    (bad / "analysis.json").write_text('{"n_layers": 3}')
    with pytest.raises(LayertraceError, match="missing key"):
        load_run(bad)
    (bad / "analysis.json").write_text("{not json")
    with pytest.raises(LayertraceError, match="not valid JSON"):
        load_run(bad)


def test_torn_metrics_line_is_skipped(tmp_path):
    from layertrace.report import load_run

    d = write_run(tmp_path, "x-vit-standard", 2, [0.1, 0.5, 0.6], [0.2, 0.5, 1.0], [0.3, 0.6, 1.0], "standard")
    run = load_run(d)
    assert run.metrics and all("step" in r for r in run.metrics)
    assert run.metrics[-1]["step"] == 60  # the torn last line written by the fixture is dropped


CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]

# Injected into a copy of the page for the test only (the report itself has no script): records
# failed resource loads, console errors, broken images and every non-data resource the page fetched.
PROBE = """<script>
window.__probe = {errors: [], console: []};
window.addEventListener('error', function (e) {
  var t = e.target || {};
  window.__probe.errors.push((t.tagName || 'script') + ' ' + (t.src || t.href || e.message || ''));
}, true);
var _ce = console.error;
console.error = function () { window.__probe.console.push([].join.call(arguments, ' ')); _ce.apply(console, arguments); };
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var broken = imgs.filter(function (i) { return !(i.complete && i.naturalWidth > 0); })
                   .map(function (i) { return (i.src || '').slice(0, 60); });
  var res = performance.getEntriesByType('resource').map(function (r) { return r.name; })
                       .filter(function (n) { return n.indexOf('data:') !== 0; });
  var out = document.createElement('pre'); out.id = 'layertrace-probe';
  out.textContent = JSON.stringify({images: imgs.length, broken: broken, errors: window.__probe.errors,
                                    console: window.__probe.console, resources: res});
  document.body.appendChild(out);
});
</script>"""


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.mark.skipif(_chromium() is None, reason="headless Chromium not installed (scripts/setup.sh --with-browser)")
def test_page_renders_in_headless_chromium(demo_report, tmp_path):
    import subprocess

    from PIL import Image

    _, paths = demo_report
    browser = _chromium()
    html = paths.html.read_text()
    n_images = len(_images(html))
    probed = tmp_path / "probed.html"
    probed.write_text(html.replace("<head>", "<head>" + PROBE, 1))
    base = [browser, *CHROMIUM_FLAGS, "--virtual-time-budget=10000"]
    dom = subprocess.run([*base, f"--user-data-dir={tmp_path / 'profile1'}", "--dump-dom", probed.as_uri()],
                         capture_output=True, text=True, timeout=120)
    match = re.search(r'<pre id="layertrace-probe">(.*?)</pre>', dom.stdout, flags=re.S)
    assert match, f"the page did not finish loading in Chromium: {dom.stderr[-2000:]}"
    probe = json.loads(match.group(1).replace("&quot;", '"').replace("&amp;", "&"))
    assert probe["images"] == n_images
    assert probe["broken"] == [] and probe["errors"] == [] and probe["console"] == []
    assert probe["resources"] == []  # nothing fetched: the page is self-contained

    # Screenshot of the real page (no probe), kept as a test artifact; console errors from the log.
    shot = tmp_path / "report.png"
    res = subprocess.run([*base, f"--user-data-dir={tmp_path / 'profile2'}", "--enable-logging=stderr", "--v=0",
                          "--window-size=1280,4000", f"--screenshot={shot}", paths.html.as_uri()],
                         capture_output=True, text=True, timeout=120)
    console_errors = [ln for ln in res.stderr.splitlines() if "CONSOLE" in ln]
    assert console_errors == []
    with Image.open(shot) as im:
        assert im.size == (1280, 4000)
        # not blank: the rendered page has text and figures
        assert len(set(im.convert("L").resize((64, 200)).getdata())) > 20
    artifacts = Path(__file__).resolve().parents[2] / "artifacts" / "report"
    artifacts.mkdir(parents=True, exist_ok=True)
    shutil.copy(shot, artifacts / "report-screenshot.png")
    shutil.copy(paths.html, artifacts / "report.html")


def test_report_from_real_analysis_and_exit_of_the_toy_model(tmp_path, toy_model):
    """The real pieces on the toy model: analyze() and the exit evaluation write the files the report
    reads; the page's tables carry their numbers."""
    import torch

    import layertrace
    from layertrace.exits.run import evaluate_exits
    from layertrace.io import write_json
    from layertrace.models import adapt
    from layertrace.report import build_report

    g = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(4):
        ids = torch.randint(2, 64, (16, 10), generator=g)
        ids[:, 0] = 1
        batches.append({"input_ids": ids, "attention_mask": torch.ones_like(ids),
                        "labels": torch.randint(0, 3, (16,), generator=g)})
    run = tmp_path / "toy-toy-standard"
    result = layertrace.analyze(toy_model, batches)
    result.save(run)
    adapter = adapt(toy_model).eval()
    body = evaluate_exits(adapter, batches, "confidence", [0.4, 0.5, 0.7, 1.01], measure=True, measure_samples=32,
                          batch1_batches=[{k: v[i:i + 1] for k, v in batches[0].items()} for i in range(4)],
                          repeats=1, executor="both").to_dict()  # both: the figure draws the per-batch series too
    assert all(p["measured_speedup_per_batch"] > 0 for p in body["points"])
    write_json(run / "exit.json", body)
    paths = build_report([run], tmp_path / "report.html")
    md = paths.summary.read_text()
    header, rows = _md_table(md, "Layer-wise accuracy (%) through the shared head")
    assert [float(c) for c in rows[0][1:]] == pytest.approx([100 * a for a in result.accuracy], abs=0.00501)
    header, rows = _md_table(md, "Early-exit comparison")
    col = {h: i for i, h in enumerate(header)}
    assert float(rows[0][col["full accuracy %"]]) == pytest.approx(100 * body["full_accuracy"], abs=0.00501)
    assert int(rows[0][col["parameters"]].replace(",", "")) == body["params"]["this_run"]
    assert "measured ms/sample, batch 64" in col and "measured ms/sample, batch 1" in col
    assert len(_images(paths.html.read_text())) >= 8


def test_lm_section_from_an_lm_json(tmp_path):
    """A folder holding only lm.json (the demo's LM track) becomes the LM section, not a table row.
    data/lm_smoke.json is the real output of `run_lm_track(out, preset="smoke")` (2 layers, 2 steps)."""
    from layertrace.report import build_report

    lm_dir = tmp_path / "lm"
    lm_dir.mkdir()
    shutil.copy(Path(__file__).parent / "data" / "lm_smoke.json", lm_dir / "lm.json")
    write_run(tmp_path, "toy-vit-standard", 2, [0.1, 0.5, 0.6], [0.2, 0.5, 1.0], [0.3, 0.6, 1.0], "standard")
    paths = build_report([tmp_path], tmp_path / "report.html")
    html = paths.html.read_text()
    assert "Causal language model track" in html
    assert "Figure" in html.split("Causal language model track", 1)[1]
    assert "| lm |" not in paths.summary.read_text()


def test_measured_exit_curve_is_drawn_from_every_timed_point(demo_report):
    """The figure of measured vs layer-count speed-up is present when exit.json points carry measured_speedup."""
    root, paths = demo_report
    html = paths.html.read_text()
    assert "Early exit: measured vs layer-count speed-up" in html
    figure = html.split("Early exit: measured vs layer-count speed-up")[0].rsplit("<figure", 1)[1]
    assert "data:image/png;base64," in figure


def test_measured_curve_compares_with_the_layer_speedup_of_the_timed_samples():
    """exit.json points carry the layer speed-up of the samples timed; older ones fall back to the split's."""
    from layertrace.exits import ExitPoint
    from layertrace.report.figures import timed_layer_speedup

    def point(**keys):  # an exit.json point as the report reads it (the rest of the point is irrelevant here)
        return ExitPoint.from_dict({"threshold": 0.9, "accuracy": 0.8, "exit_hist": [3, 1], **keys}, "confidence")

    assert timed_layer_speedup(point(speedup=4.65, timed_layer_speedup=4.99)) == 4.99
    assert timed_layer_speedup(point(speedup=4.65, timed_layer_speedup=None)) == 4.65
    assert timed_layer_speedup(point(speedup=1.5)) == 1.5
