"""The ``layertrace exit`` pipeline and the comparison of runs under one protocol.

    exit_from_config(ExitConfig(model=RUN_DIR, data="fashion-mnist", thresholds=[0.5, 0.9])) -> dict
    compare_runs([std_dir, aligned_dir, multi_dir], "fashion-mnist", policy="confidence",
                 target={"max_accuracy_drop": 0.01}) -> table dict

One evaluation (:func:`evaluate_exits`):

1. the readout at every candidate exit layer for every sample (shared head, or the run's per-layer
   heads), cached once; FLOPs of each stage measured on the first batch;
2. the threshold sweep simulated over that cache (accuracy, the paper's speed-up, exit histogram,
   expected FLOPs, Pareto flags) plus the oracle;
3. measured wall-clock speed-up of the runtime executor against the unmodified model, at the
   evaluation batch size (64 by default) and at batch 1, interleaved, medians; the executor's exit
   layers and predictions on those samples are compared with the simulation's (``runtime_agreement``).

The JSON written (``exit.json``) is documented in docs/exits.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from .. import run_folder
from ..errors import LayertraceError
from ..io import check_out_dir, result_set
from ..models.base import Adapter
from .executor import Readout, layer_logits, readout_layers
from .policies import default_thresholds, get_policy
from .config import ExitConfig  # noqa: F401  (re-exported: `from layertrace.exits.run import ExitConfig`)
from .simulate import ExitSweep, sweep, sweep_analysis  # noqa: F401  (sweep_analysis re-exported)

EXIT_FILE = run_folder.EXIT
COMPARISON_FILE = "comparison.json"
CONFIG_FILE = run_folder.EXIT_CONFIG  # not config.yaml: a training run folder keeps its own
SCHEMA = "layertrace-exit-1"
COMPARISON_MD = "comparison.md"
OWNED = (EXIT_FILE, COMPARISON_FILE, COMPARISON_MD, CONFIG_FILE)  # what a re-run replaces (stale ones removed)
HEADS_FILE = run_folder.HEADS


# ----------------------------------------------------------------------------- core evaluation
@dataclass
class ExitEvaluation:
    """What :func:`evaluate_exits` computed (``to_dict`` is the ``exit.json`` body)."""

    sweep: ExitSweep
    oracle: ExitSweep | None
    flops: dict
    params: dict
    readout: str
    timing: dict = field(default_factory=dict)
    info: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        body = self.sweep.to_dict()
        body.pop("exit_layers", None)
        return {
            "schema": SCHEMA,
            **self.info,
            "policy": self.sweep.policy,
            "readout": self.readout,
            "n_layers": self.sweep.n_layers,
            "n_samples": self.sweep.n_samples,
            "exit_layers": self.sweep.layers,
            "full_accuracy": self.sweep.full_accuracy,
            "layer_accuracy": self.sweep.layer_accuracy,
            "points": body["points"],
            "oracle": self.oracle.points[0].to_dict() if self.oracle is not None else None,
            "flops": self.flops,
            "params": self.params,
            "timing": self.timing,
        }


def _first_samples(batches: Sequence[Mapping[str, Any]], n: int) -> list[Mapping[str, Any]]:
    """The leading batches covering (at least) the first ``n`` samples, the last one cut to fit."""
    out, have = [], 0
    for b in batches:
        size = int(next(v for v in b.values() if isinstance(v, torch.Tensor)).shape[0])
        if have >= n:
            break
        take = min(size, n - have)
        out.append(b if take == size else {k: (v[:take] if isinstance(v, torch.Tensor) else v) for k, v in b.items()})
        have += take
    return out


def _agreement(measured_results: list, sweep_result: ExitSweep) -> list[float]:
    """Fraction of timed samples whose runtime exit layer and prediction equal the simulation's."""
    fractions = []
    for i, result in enumerate(measured_results):
        n = result.exit_layers.shape[0]
        same = (result.exit_layers.cpu().numpy() == sweep_result.exit_layers[i, :n]) & (
            result.predictions.cpu().numpy() == sweep_result.predictions[i, :n])
        fractions.append(float(same.mean()))
    return fractions


def evaluate_exits(adapter: Adapter, batches: Sequence[Mapping[str, Any]], policy: str = "confidence",
                   thresholds: Sequence[float] | None = None, readout: Readout | None = None, *,
                   oracle: bool = True, measure: bool = True, measure_samples: int = 256,
                   batch1_batches: Sequence[Mapping[str, Any]] | None = None, repeats: int = 3,
                   measure_points: Callable[[ExitSweep], Sequence[int]] | None = None,
                   threads: int | None = None, budget_s: float | None = 20.0,
                   clock: str = "auto", executor: str = "stream", window: int = 8) -> ExitEvaluation:
    """Simulate a sweep over ``batches`` and (optionally) time the runtime executor.

    Args:
        adapter: a classifier adapter in eval mode, on its device.
        batches: labelled batches (a list or re-iterable), in a fixed order.
        policy: causal policy name (the sweep); thresholds default to :func:`default_thresholds`.
        readout: per-layer heads (``readout(layer, h)``) or ``None`` for the shared head.
        oracle: also simulate the oracle.
        measure: time the executor vs the full model at the batches' size on the first
            ``measure_samples`` samples, and at batch 1 on ``batch1_batches`` (the first samples of
            the same data, one per batch; ``None`` skips batch 1).
        repeats: interleaved timing rounds, at most.
        budget_s: seconds the timing rounds of each batch size may take (:func:`~.timing.measure_speedups`).
        clock: ``auto`` / ``wall`` / ``cpu`` (:mod:`.timing`).
        executor: timed at the batches' size: ``"stream"`` (:func:`~.executor.run_early_exit_stream`,
            ``window`` batches pooled), ``"batch"`` (:func:`~.executor.run_early_exit` batch by batch) or
            ``"both"`` (stream in ``measured_speedup``, batch in ``measured_speedup_per_batch``). Batch 1
            always times :func:`~.executor.run_early_exit` one sample at a time.
        measure_points: ``sweep -> indices of the points to time`` (default: every point), e.g. the
            point a target picks.
        threads: torch CPU threads while timing (restored afterwards); ``None`` leaves them.
    Returns:
        :class:`ExitEvaluation`.
    """
    from .costs import param_summary, stage_flops

    policy_obj = get_policy(policy)
    batches = list(batches)
    if not batches:
        raise LayertraceError("no batches to evaluate; check the data split and --limit")
    layers = readout_layers(adapter, readout)
    values = list(thresholds) if thresholds else default_thresholds(policy_obj, adapter.n_layers)
    logits, labels = layer_logits(adapter, batches, readout, layers)
    if labels is None:
        raise LayertraceError("early-exit evaluation needs labelled batches (a 'labels' entry)")
    costs = stage_flops(adapter, batches[0], readout)
    result = sweep(logits, policy_obj, values, labels, costs, layers)
    oracle_result = sweep(logits, "oracle", [], labels, costs, layers) if oracle else None
    timing: dict[str, Any] = {"threads": threads or torch.get_num_threads(), "device": str(adapter.device)}
    if measure and policy_obj.causal:
        saved_threads = torch.get_num_threads()
        if threads:
            torch.set_num_threads(int(threads))
        try:
            _measure(adapter, batches, policy_obj, result, readout, measure_samples, batch1_batches, repeats,
                     measure_points, timing, budget_s, clock, executor, window)
        finally:
            torch.set_num_threads(saved_threads)
        if hasattr(adapter, "embed_path"):  # how layer 0 was built while timing (direct or replayed forward)
            timing["embed"] = adapter.embed_path()
    return ExitEvaluation(sweep=result, oracle=oracle_result, flops=costs.to_dict(),
                          params=param_summary(adapter, readout if readout is not None and hasattr(readout, "heads")
                                               else None),
                          readout="shared" if readout is None else "per-layer heads", timing=timing)


def _measure(adapter: Adapter, batches: list, policy_obj: Any, result: ExitSweep, readout: Readout | None,
             measure_samples: int, batch1_batches: Sequence[Mapping[str, Any]] | None, repeats: int,
             measure_points: Callable[[ExitSweep], Sequence[int]] | None, timing: dict,
             budget_s: float | None = None, clock: str = "auto", executor: str = "stream",
             window: int = 8) -> None:
    """Time the executor (see :func:`evaluate_exits`) and fill the points' measured fields."""
    from .timing import measure_speedups

    index = list(measure_points(result)) if measure_points is not None else list(range(len(result.points)))
    timed = [float(result.points[i].threshold) for i in index]
    subset = _first_samples(batches, measure_samples)
    if executor not in ("stream", "batch", "both"):
        raise LayertraceError(f"executor={executor!r}: use stream, batch or both")
    batched = measure_speedups(adapter, subset, policy_obj, timed, readout, repeats=repeats, return_results=True,
                               budget_s=budget_s, clock=clock, executor="batch" if executor == "batch" else "stream",
                               window=window)
    agree = _agreement(batched.results, _rows(result, index))
    timing["batch"] = batched.to_dict()
    for i, s, layer, a in zip(index, batched.speedups, batched.layer_speedups, agree):
        result.points[i].measured_speedup = s
        result.points[i].timed_layer_speedup = layer
        result.points[i].runtime_agreement = a
    if executor == "both":  # the batch-by-batch executor on the same samples, for comparison
        per_batch = measure_speedups(adapter, subset, policy_obj, timed, readout, repeats=repeats, budget_s=budget_s,
                                     clock=clock, executor="batch")
        timing["batch_per_batch"] = per_batch.to_dict()
        for i, s in zip(index, per_batch.speedups):
            result.points[i].measured_speedup_per_batch = s
    if batch1_batches:
        single = measure_speedups(adapter, list(batch1_batches), policy_obj, timed, readout, repeats=repeats,
                                  budget_s=budget_s, clock=clock)
        timing["batch1"] = single.to_dict()
        for i, s, layer in zip(index, single.speedups, single.layer_speedups):
            result.points[i].measured_speedup_batch1 = s
            result.points[i].timed_layer_speedup_batch1 = layer


def _rows(result: ExitSweep, index: list[int]) -> ExitSweep:
    """``result`` restricted to the sweep points ``index`` (for agreement checks)."""
    return ExitSweep(result.policy, result.n_layers, result.n_samples, result.full_accuracy, result.layer_accuracy,
                     [result.points[i] for i in index], result.exit_layers[index], result.predictions[index],
                     result.layers)


# ----------------------------------------------------------------------------- loading
def _check(cfg: ExitConfig) -> None:
    if cfg.compare and cfg.model:
        raise LayertraceError("give either --model (one sweep) or --compare RUN1,RUN2,... (a comparison), not both")
    if not cfg.model and not cfg.compare:
        raise LayertraceError("no model given: pass --model (a training run folder, a model folder or a preset)")
    if not cfg.data:
        raise LayertraceError("no data given: pass --data (e.g. fashion-mnist, rotten-tomatoes)")
    if cfg.batch_size < 1:
        raise LayertraceError(f"batch_size={cfg.batch_size} must be at least 1")
    if cfg.heads not in ("auto", "shared", "per-layer"):
        raise LayertraceError(f"heads={cfg.heads!r}: use auto, shared or per-layer")
    if cfg.limit is not None and cfg.limit < 1:
        raise LayertraceError(f"limit={cfg.limit} must be at least 1 (omit it to use the whole split)")


@dataclass
class _Loaded:
    loaded: Any
    adapter: Adapter
    batches: list
    batch1: list | None
    readout: Readout | None
    dataset: Any


def _load(cfg: ExitConfig) -> _Loaded:
    """Model (+ per-layer heads), simulation batches and batch-1 timing batches for ``cfg``."""
    from ..analysis.config import AnalyzeConfig
    from ..analysis.run import load_for_analysis, resolve_device
    from ..data import make_batches

    device = resolve_device(cfg.device)
    acfg = AnalyzeConfig(model=cfg.model, data=cfg.data, split=cfg.split, limit=cfg.limit,
                         num_classes=cfg.num_classes, final_norm=cfg.final_norm, pooling=cfg.pooling,
                         batch_size=cfg.batch_size,
                         max_length=cfg.max_length, data_root=cfg.data_root, loader_kwargs=dict(cfg.loader_kwargs),
                         seed=cfg.seed, device=str(device))
    loaded, batches, dataset = load_for_analysis(acfg)
    adapter = loaded.adapter.to(device).eval()
    if adapter.kind != "classifier":
        raise LayertraceError(f"model {cfg.model!r} is a {adapter.kind}; `layertrace exit` serves classifiers "
                              f"(causal-LM early-exit decoding: layertrace.lm)")
    heads_path = Path(cfg.model) / HEADS_FILE
    readout = None
    if cfg.heads == "per-layer" or (cfg.heads == "auto" and heads_path.is_file()):
        from ..training import load_heads

        readout = load_heads(cfg.model, adapter=adapter).to(device).eval()
    batch1 = None
    if cfg.measure and cfg.measure_samples_batch1 > 0 and dataset is not None:
        n1 = min(cfg.measure_samples_batch1, len(dataset))
        sub = dataset.subset(np.arange(n1))
        pre = loaded.preprocess or {}
        if hasattr(dataset, "texts"):
            max_length = int(cfg.max_length or pre.get("max_length") or 128)
            batch1 = list(make_batches(sub, 1, tokenizer=loaded.tokenizer, max_length=max_length))
        else:
            batch1 = list(make_batches(sub, 1, image_mean=pre.get("image_mean"), image_std=pre.get("image_std")))
    return _Loaded(loaded, adapter, list(batches), batch1, readout, dataset)


def _run_info(cfg: ExitConfig, loaded: _Loaded) -> dict:
    return {"model": loaded.loaded.name or cfg.model, "model_spec": cfg.model, "data": cfg.data,
            "split": cfg.split, "num_classes": loaded.adapter.num_outputs, "batch_size": cfg.batch_size,
            "pooling": getattr(loaded.adapter, "pooling", "auto")}


@torch.no_grad()
def exit_from_config(cfg: ExitConfig, write: bool = True) -> dict:
    """Run ``layertrace exit`` in-process: returns the ``exit.json`` dict (and writes it to ``cfg.out``
    with the resolved ``exit-config.yaml`` when ``write`` and ``cfg.out`` are set)."""
    from ..config import config_to_dict, save_config
    from ..io import write_json

    _check(cfg)
    if write:
        check_out_dir(cfg.out)
    get_policy(cfg.policy)
    if cfg.compare:
        return compare_from_config(cfg, write)
    loaded = _load(cfg)
    if cfg.thresholds:  # before the pass over the data: the policy's domain needs only the layer count
        get_policy(cfg.policy).check_thresholds(cfg.thresholds, loaded.adapter.n_layers)
    evaluation = evaluate_exits(loaded.adapter, loaded.batches, cfg.policy, cfg.thresholds, loaded.readout,
                                oracle=cfg.oracle, measure=cfg.measure, measure_samples=cfg.measure_samples,
                                batch1_batches=loaded.batch1, repeats=cfg.repeats, threads=cfg.threads,
                                budget_s=cfg.measure_budget_s, clock=cfg.clock, executor=cfg.executor,
                                window=cfg.stream_window)
    evaluation.info = _run_info(cfg, loaded)
    body = evaluation.to_dict()
    body["config"] = config_to_dict(cfg)
    if write and cfg.out:
        with result_set(cfg.out, OWNED) as staging:  # the new set replaces the old (no stale comparison.json)
            write_json(staging / EXIT_FILE, body)
            save_config(cfg, staging, name=CONFIG_FILE)
    return body


# ----------------------------------------------------------------------------- comparison
def _run_mode(spec: str) -> str:
    """Training mode of a run folder (:func:`layertrace.run_folder.training_mode`), else ``"model"``."""
    return run_folder.training_mode(spec) or "model"


def select_point(points: Sequence[dict], full_accuracy: float, target: Mapping[str, float]) -> int:
    """Index of the point a target picks.

    ``{"max_accuracy_drop": e}``: the fastest point with accuracy >= full - e (ties: more accurate);
    ``{"min_speedup": s}``: the most accurate point with speed-up >= s (ties: faster). Falls back to the
    closest point when none qualifies (the full model for an accuracy target).
    """
    if len(target) != 1 or next(iter(target)) not in ("max_accuracy_drop", "min_speedup"):
        raise LayertraceError(f"target {dict(target)!r}: use {{'max_accuracy_drop': 0.01}} or {{'min_speedup': 1.3}}")
    (key, value), = target.items()
    order = range(len(points))
    if key == "max_accuracy_drop":
        ok = [i for i in order if points[i]["accuracy"] >= full_accuracy - float(value) - 1e-12]
        if not ok:
            return max(order, key=lambda i: (points[i]["accuracy"], -points[i]["speedup"]))
        return max(ok, key=lambda i: (points[i]["speedup"], points[i]["accuracy"]))
    ok = [i for i in order if points[i]["speedup"] >= float(value) - 1e-12]
    if not ok:
        return max(order, key=lambda i: (points[i]["speedup"], points[i]["accuracy"]))
    return max(ok, key=lambda i: (points[i]["accuracy"], points[i]["speedup"]))


@torch.no_grad()
def compare_runs(run_dirs: Sequence[str | Path], data: str, policy: str = "confidence",
                 thresholds: Sequence[float] | None = None, target: Mapping[str, float] | None = None, *,
                 split: str = "test", limit: int | None = None, measure: bool = True,
                 **options: Any) -> dict:
    """Standard vs aligned vs per-layer heads (any runs) under one protocol: the paper's ImageNet table.

    Every run is evaluated on the same data with the same policy and thresholds. Without ``target``
    the table has one row per run and threshold; with ``target`` one row per run at the point the
    target picks (:func:`select_point`). Wall-clock speed-ups (batch 1 and ``batch_size``, default
    64) are measured for the rows only.

    Args:
        run_dirs: training run folders (or model folders / presets).
        data: dataset name; ``split`` / ``limit`` as in ``layertrace exit``.
        policy, thresholds: the common protocol (thresholds default to the policy's sweep).
        target: ``{"max_accuracy_drop": 0.01}`` or ``{"min_speedup": 1.36}``.
        measure: time the executor.
        options: any other :class:`ExitConfig` field (``batch_size``, ``repeats``, ``device``, ...).
    Returns:
        ``{"policy", "data", "split", "thresholds", "target", "columns", "rows": [...], "runs": {name: exit dict}}``;
        each row: run, mode, readout, threshold, full_accuracy, accuracy, speedup,
        measured_speedup_batch1, measured_speedup_batch64 (at ``batch_size``), flops_per_sample,
        flops_speedup, params (this run), params_shared_head, params_per_layer_heads, exit_hist.
    """
    if not run_dirs:
        raise LayertraceError("compare_runs needs at least one run folder")
    rows, runs = [], {}
    used_thresholds = None
    for spec in run_dirs:
        cfg = ExitConfig(model=str(spec), data=data, split=split, limit=limit, policy=policy,
                         thresholds=list(thresholds) if thresholds else None, measure=measure, **options)
        _check(cfg)
        loaded = _load(cfg)
        values = list(cfg.thresholds or default_thresholds(policy, loaded.adapter.n_layers))
        used_thresholds = values

        def pick(result: ExitSweep) -> list[int]:
            if not target:
                return list(range(len(result.points)))
            return [select_point([p.to_dict() for p in result.points], result.full_accuracy, target)]

        evaluation = evaluate_exits(loaded.adapter, loaded.batches, policy, values, loaded.readout,
                                    oracle=cfg.oracle, measure=measure, measure_samples=cfg.measure_samples,
                                    batch1_batches=loaded.batch1, repeats=cfg.repeats, measure_points=pick,
                                    threads=cfg.threads, budget_s=cfg.measure_budget_s, clock=cfg.clock,
                                    executor=cfg.executor, window=cfg.stream_window)
        picked = pick(evaluation.sweep)
        evaluation.info = _run_info(cfg, loaded)
        name = Path(str(spec)).name or str(spec)
        runs[name] = evaluation.to_dict()
        params = evaluation.params
        for i in picked:
            p = evaluation.sweep.points[i]
            rows.append({
                "run": name, "mode": _run_mode(str(spec)), "readout": evaluation.readout, "threshold": p.threshold,
                "full_accuracy": evaluation.sweep.full_accuracy, "accuracy": p.accuracy, "speedup": p.speedup,
                "measured_speedup_batch1": p.measured_speedup_batch1,
                "measured_speedup_batch64": p.measured_speedup, "runtime_agreement": p.runtime_agreement,
                "flops_per_sample": p.flops_per_sample, "flops_speedup": p.flops_speedup,
                "params": params["this_run"], "params_shared_head": params["shared_head"],
                "params_per_layer_heads": params["per_layer_heads"], "exit_hist": p.exit_hist,
            })
    batch_size = int(options.get("batch_size", ExitConfig.batch_size))
    return {"policy": get_policy(policy).name, "data": data, "split": split, "limit": limit,
            "thresholds": used_thresholds, "target": dict(target) if target else None,
            "batch_size": batch_size, "columns": list(rows[0]) if rows else [], "rows": rows, "runs": runs}


def compare_from_config(cfg: ExitConfig, write: bool = True) -> dict:
    """``layertrace exit --compare RUN1,RUN2,...``: :func:`compare_runs` with the config's protocol;
    writes ``comparison.json``, ``comparison.md`` and ``exit-config.yaml`` into ``cfg.out``."""
    from ..config import config_to_dict, save_config
    from ..io import atomic_path, write_json

    if cfg.target_accuracy_drop is not None and cfg.target_speedup is not None:
        raise LayertraceError("give at most one of --target_accuracy_drop and --target_speedup")
    target = ({"max_accuracy_drop": cfg.target_accuracy_drop} if cfg.target_accuracy_drop is not None
              else {"min_speedup": cfg.target_speedup} if cfg.target_speedup is not None else None)
    options = {k: v for k, v in config_to_dict(cfg).items() if k not in (
        "model", "data", "split", "limit", "policy", "thresholds", "measure", "out", "compare",
        "target_accuracy_drop", "target_speedup")}
    table = compare_runs(cfg.compare, cfg.data, cfg.policy, cfg.thresholds, target, split=cfg.split,
                         limit=cfg.limit, measure=cfg.measure, **options)
    table["config"] = config_to_dict(cfg)
    if write and cfg.out:
        with result_set(cfg.out, OWNED) as staging:
            write_json(staging / COMPARISON_FILE, table)
            with atomic_path(staging / COMPARISON_MD) as tmp:
                tmp.write_text(comparison_markdown(table))
            save_config(cfg, staging, name=CONFIG_FILE)
    return table


def comparison_markdown(table: Mapping[str, Any]) -> str:
    """The comparison table as Markdown (the paper's ImageNet table layout, plus measured columns)."""
    def fmt(value: Any, spec: str) -> str:
        return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)

    b = table.get("batch_size", 64)
    lines = [
        f"Policy `{table['policy']}` on {table['data']} ({table['split']})"
        + (f", target {table['target']}" if table.get("target") else ""),
        "",
        f"| run | mode | head | threshold | full acc. | acc. | speed-up (layers) | wall-clock b=1 | wall-clock b={b} "
        f"| GFLOPs/sample | FLOPs speed-up | params |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in table["rows"]:
        lines.append(
            f"| {r['run']} | {r['mode']} | {r['readout']} | {fmt(r['threshold'], '.3g')} | {fmt(r['full_accuracy'], '.4f')} "
            f"| {fmt(r['accuracy'], '.4f')} | {fmt(r['speedup'], '.2f')}x | {fmt(r['measured_speedup_batch1'], '.2f')}x "
            f"| {fmt(r['measured_speedup_batch64'], '.2f')}x | {fmt((r['flops_per_sample'] or 0) / 1e9, '.4f')} "
            f"| {fmt(r['flops_speedup'], '.2f')}x | {r['params'] / 1e6:.2f}M |")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- from an analysis pass
