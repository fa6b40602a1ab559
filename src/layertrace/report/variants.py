"""Re-readings of the same trained runs, beside each run's own reading (``<run>/variants/<name>/``).

A variant is one more ``analysis.json`` of a run's trained model, read differently (written by
``layertrace demo``; any ``layertrace analyze --out RUN/variants/NAME`` works too):

- ``shift``: the test split under a seeded distribution shift (``analyze --shift``,
  :mod:`layertrace.data.shift`): the paper's App. B.4 transferability under distribution shift
  (the protocol is ours);
- ``pooling-<p>``: the prediction feature read through token(s) ``p`` (``analyze --pooling``) instead
  of the pooling the model was trained with: the text track's [CLS] counter-example of a checkpoint
  trained with mean pooling.

For each variant name and comparison group the report shows one figure (own reading solid, variant
dashed), one table (per-layer accuracy of both readings of every run); the findings are
:func:`layertrace.report.findings.check_variants` (the aligned-vs-standard checks on the variant's
analyses, and for a ``pooling-*`` variant :func:`~layertrace.report.findings.check_trained_pooling`).
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict

from .figures import FigureItem, Figures
from .runs import RunResults
from .series import layer_series

CAPTION = ("Layer-wise accuracy through the shared head: each run's own reading (solid) and a re-reading of the "
           "same trained model (dashed; no retraining). Look for: whether aligned training's shallow-layer gain "
           "survives the re-reading.")


def variant_names(runs: list[RunResults]) -> list[str]:
    """Variant folder names present in any run, in first-seen order."""
    return list(OrderedDict.fromkeys(v for r in runs for v in r.variants))


def describe(runs: list[RunResults], name: str) -> str:
    """What the variant changed, from its analyze-config.yaml (e.g. ``shift rotate:15+noise:0.2``)."""
    cfg = next((r.variants[name].config for r in runs if name in r.variants), {})
    if cfg.get("shift"):
        return f"test set under shift {cfg['shift']} (seed {cfg.get('shift_seed', 0)})"
    if cfg.get("pooling"):
        return f"read through pooling={cfg['pooling']} instead of the trained pooling"
    return name


def trained_pooling(r: RunResults) -> str:
    """The pooling the run was trained with (``model.pooling`` of its config; ``auto`` if unset)."""
    model = r.config.get("model") if isinstance(r.config.get("model"), dict) else {}
    return str(model.get("pooling") or "auto")


def as_variant(r: RunResults, name: str) -> RunResults:
    """The run seen through its variant: same mode, the variant's analysis, tagged name and group."""
    return dataclasses.replace(r, name=f"{r.name} [{name}]", group=f"{r.group} [{name}]",
                               analysis=r.variants[name].analysis, exits={}, probe=None, clip=None,
                               variants={}, metrics=[])


def variant_figures(figs: Figures, name: str, caption: str = CAPTION) -> list[FigureItem]:
    """Per group: each run's own accuracy (solid) with the variant's (dashed)."""
    sub = Figures([r for r in figs.runs if name in r.variants])
    return sub._layer_curve_figure(
        f"Re-reading '{name}': layer-wise accuracy", caption, "accuracy through the shared head",
        lambda r: layer_series(r.analysis, "accuracy"), ylim=(0, 1),
        extra=lambda r: layer_series(r.variants[name].analysis, "accuracy"), extra_label=name)


def variant_rows(runs: list[RunResults], name: str) -> tuple[list[str], list[list[str]]]:
    """Header and rows: per run, its own per-layer accuracy (%) and the variant's."""
    with_v = [r for r in runs if name in r.variants and r.analysis]
    series = [(r.name, "own", layer_series(r.analysis, "accuracy")) for r in with_v]
    series += [(r.name, name, layer_series(r.variants[name].analysis, "accuracy")) for r in with_v]
    series.sort(key=lambda t: [r.name for r in with_v].index(t[0]))
    layers = sorted({l for _, _, s in series for l in s})
    rows = [[run, reading] + [f"{100 * s[l]:.2f}" if l in s else "–" for l in layers] for run, reading, s in series]
    return ["run", "reading"] + [f"l={l}" for l in layers], rows


def variant_title(runs: list[RunResults], name: str) -> str:
    """Section title of one variant."""
    if name == "shift":
        return "Distribution shift: every layer on a shifted test set (" + describe(runs, name) + ")"
    if name.startswith("pooling-"):
        return f"The same trained runs read through pooling={name.split('-', 1)[1]} (counter-example)"
    return f"Re-reading '{name}' of the trained runs"
