"""Task transfer: a linear probe per layer on frozen features (App. B.4; ``layertrace probe``).

    from layertrace.analysis.probe import probe, ProbeResult
    result = probe(adapter, train_batches, test_batches)       # batches: dicts with "labels"
    result.save("out/probe")                                   # probe.json
    print(result.accuracy)                                     # (S,) test accuracy per layer

Which feature: at every traced layer the per-sample feature the similarity metrics use,
``adapter.pool(adapter.features(state))`` (the prediction token: [CLS] for ViT / BERT, the mean of
DeiT's two tokens), **before** the shared head's final norm / pooler: a probe asks what a layer
holds, not what the head makes of it. The probe of each layer is fitted on the train split and
scored on the test split by :func:`layertrace.readout.probe.fit_linear_probe` (standardised
features, multinomial logistic regression with a documented L2 penalty, full-batch L-BFGS in
float64). The model's own head and classes play no part, so any model can be probed on any data
set the data layer loads (a FMNIST ViT on MNIST-5k, a Rotten-Tomatoes MiniLM on BBC News).

Memory: the features of both splits are held as float32, (S, n, d) each.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import torch

from ..errors import LayertraceError
from ..io import read_json, write_json
from ..layers import LayerSpec, resolve_layers
from ..run_folder import PROBE
from ..readout.probe import DEFAULT_L2, DEFAULT_MAX_ITER, DEFAULT_TOL, fit_linear_probe
from ..trace import trace_batch

PROBE_NAME = PROBE
FEATURE_RULE = ("per-sample prediction-token feature of each layer (adapter.pool(adapter.features(state)), "
                "before the head's final norm), standardised with the train split's mean and std")


@dataclass
class ProbeResult:
    """Per-layer linear-probe accuracy (the ``probe.json`` keys). Per-layer lists run over ``layers``."""

    n_layers: int
    layers: list[int]
    model: str | None = None
    data: str | None = None
    num_classes: int = 0
    n_train: int = 0
    n_test: int = 0
    accuracy: list[float] = field(default_factory=list)
    train_accuracy: list[float] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    converged: list[bool] = field(default_factory=list)
    iterations: list[int] = field(default_factory=list)
    majority_accuracy: float = float("nan")
    l2: float = DEFAULT_L2
    feature: str = FEATURE_RULE
    fitter: str = ("multinomial logistic regression, mean cross-entropy + l2/2 ||W||^2 (bias unpenalised), "
                   "torch.optim.LBFGS strong-Wolfe, full batch, float64, from zero")
    config: dict[str, Any] = field(default_factory=dict)
    timing: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ProbeResult":
        missing = [k for k in ("n_layers", "layers", "accuracy") if k not in data]
        if missing:
            raise LayertraceError(f"probe result is missing {missing}; re-run 'layertrace probe'")
        known = cls.__dataclass_fields__
        return cls(**{k: v for k, v in data.items() if k in known})

    def save(self, out_dir: str | Path) -> Path:
        """Write ``probe.json`` into ``out_dir`` (atomically)."""
        path = Path(out_dir) / PROBE_NAME
        write_json(path, self.to_dict())
        return path

    @classmethod
    def from_json(cls, path: str | Path) -> "ProbeResult":
        """Read ``probe.json`` (or the one in a folder)."""
        path = Path(path)
        return cls.from_dict(read_json(path / PROBE_NAME if path.is_dir() else path))


def layer_features(adapter: Any, batches: Iterable[Mapping[str, Any]], layers: list[int],
                   precision: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(features (S, n, d) float32, labels (n,) int64)`` of every batch at ``layers`` (no readout)."""
    feats, labels = [], []
    with torch.no_grad():
        for b, batch in enumerate(batches):
            if "labels" not in batch:
                raise LayertraceError(f"batch {b} has no 'labels' entry (keys {sorted(batch)}); a probe needs them")
            trace = trace_batch(adapter, batch, layers, with_logits=False, precision=precision, batch_index=b)
            feats.append(trace.features.detach().to("cpu", torch.float32).numpy())
            labels.append(torch.as_tensor(batch["labels"]).reshape(-1).long().numpy())
    if not feats:
        raise LayertraceError("the data gave no batch to probe (empty split?); check --data, --limit")
    return np.concatenate(feats, axis=1), np.concatenate(labels)


def probe(model_or_adapter: Any, train_batches: Iterable[Mapping[str, Any]],
          test_batches: Iterable[Mapping[str, Any]], *, layers: LayerSpec = None, num_classes: int | None = None,
          l2: float = DEFAULT_L2, max_iter: int = DEFAULT_MAX_ITER, tol: float = DEFAULT_TOL,
          precision: str | None = None, model_name: str | None = None, data_name: str | None = None,
          final_norm: bool = True, threads: int | None = 1) -> ProbeResult:
    """Fit a linear probe per layer on the train batches' frozen features, score it on the test batches.

    Args:
        model_or_adapter: an adapter or a model ``layertrace.models.adapt`` knows (classifiers; the
            head is not used). Put in eval mode for the pass; its modes are restored afterwards.
        train_batches / test_batches: iterables of the dicts the model takes, with ``labels`` (B,)
            ints in 0..K-1 of the *probe's* task (any K).
        layers: :func:`~layertrace.layers.resolve_layers` spec (default every layer 0..L).
        num_classes: K of the probe (default: 1 + the largest label seen).
        l2, max_iter, tol, threads: the fitter's settings (:mod:`layertrace.readout.probe`).

    Returns:
        :class:`ProbeResult` with per-layer test / train accuracy, final loss, convergence flags.
    """
    from ..models import adapt

    if l2 < 0:
        raise LayertraceError(f"l2={l2} must be >= 0 (the probe's ridge penalty)")
    adapter = adapt(model_or_adapter, final_norm=final_norm)
    if adapter.kind != "classifier":
        raise LayertraceError("probe: use a classifier-style model (causal LMs have no per-sample feature here)")
    selected = resolve_layers(adapter.n_layers, layers)
    modes = [(m, m.training) for m in adapter.modules()]
    adapter.eval()
    start = time.perf_counter()
    try:
        x_train, y_train = layer_features(adapter, train_batches, selected, precision)
        x_test, y_test = layer_features(adapter, test_batches, selected, precision)
    finally:
        for module, mode in modes:
            module.training = mode
    features_s = time.perf_counter() - start
    k = int(num_classes) if num_classes is not None else int(max(y_train.max(), y_test.max())) + 1
    for name, y in (("train", y_train), ("test", y_test)):
        if y.min() < 0 or y.max() >= k:
            raise LayertraceError(f"{name} labels must lie in 0..{k - 1}; got {int(y.min())}..{int(y.max())}")
    if len(np.unique(y_train)) < 2:
        raise LayertraceError("the train split has a single class; a probe needs at least two")
    result = ProbeResult(n_layers=int(adapter.n_layers), layers=list(selected), model=model_name, data=data_name,
                         num_classes=k, n_train=len(y_train), n_test=len(y_test), l2=float(l2))
    result.majority_accuracy = float((y_test == np.bincount(y_train, minlength=k).argmax()).mean())
    for i in range(len(selected)):
        fit = fit_linear_probe(x_train[i], y_train, x_test[i], y_test, k, l2=l2, max_iter=max_iter, tol=tol,
                               threads=threads)
        result.accuracy.append(fit.test_accuracy)
        result.train_accuracy.append(fit.train_accuracy)
        result.loss.append(fit.loss)
        result.converged.append(bool(fit.converged))
        result.iterations.append(fit.iterations)
    result.config = {"max_iter": int(max_iter), "tol": float(tol), "threads": threads, "precision": precision,
                     "adapter_family": getattr(adapter, "family", "custom"), "dim": int(x_train.shape[-1])}
    result.timing = {"features_s": features_s, "fit_s": time.perf_counter() - start - features_s}
    return result


def comparison_rows(results: Sequence[tuple[str, ProbeResult]]) -> tuple[list[str], list[list[str]]]:
    """Header and cells of one table comparing runs: a row per run, a column per layer (test accuracy, %).

    Layers are the union of the runs' layers; a run without a layer shows "-".
    """
    layers = sorted({layer for _, r in results for layer in r.layers})
    header = ["run", "data", "majority %"] + [f"l={layer}" for layer in layers]
    rows = []
    for name, r in results:
        acc = dict(zip(r.layers, r.accuracy))
        rows.append([name, str(r.data), _pct(r.majority_accuracy)] + [_pct(acc.get(layer)) for layer in layers])
    return header, rows


def comparison_markdown(results: Sequence[tuple[str, ProbeResult]]) -> str:
    """The comparison table as Markdown (what ``layertrace probe --compare`` prints and writes)."""
    header, rows = comparison_rows(results)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _pct(x: Any) -> str:
    if x is None or (isinstance(x, float) and not np.isfinite(x)):
        return "-"
    return f"{100 * float(x):.2f}"
