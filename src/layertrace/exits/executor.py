"""The runtime early-exit executor: batched, per-sample exit that really skips computation.

At every layer the executor reads out only the samples still running, asks the policy which of
them may stop, stores their logits, and drops them from the batch with ``State.select`` (hidden
states, attention masks and positions are sliced together), so the next block runs on fewer
samples. No per-sample Python loop runs on the hot path: all bookkeeping is tensor indexing.

A *readout* is a :class:`~layertrace.models.layer_readout.LayerReadout` ``(layer, h) -> logits``
with ``h = adapter.features(state)``: :func:`shared_readout` (the model's own head at every layer,
the paper's single classifier) or per-layer heads (``PerLayerHeads``); any ``fn(layer, h)`` is
accepted and wrapped (:meth:`LayerReadout.of`).
The simulation (:mod:`.simulate`) over logits from :func:`layer_logits` with the same readout and
policy gives the same exit layers and predictions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch
from torch import Tensor

from ..errors import LayertraceError
from ..models.base import Adapter
from ..models.layer_readout import LayerReadout
from .policies import ExitPolicy, FixedLayerPolicy, get_policy

Readout = Callable[[int, Tensor], Tensor]


def shared_readout(adapter: Adapter) -> LayerReadout:
    """The model's own head at every layer (one shared classifier), as a :class:`LayerReadout`."""
    return LayerReadout.shared(adapter)


def resolve_readout(adapter: Adapter, readout: Readout | None) -> LayerReadout:
    """``readout`` as a :class:`LayerReadout` (the shared head when ``None``; see :meth:`LayerReadout.of`)."""
    return LayerReadout.of(adapter, readout)


def readout_layers(adapter: Adapter, readout: Readout | None = None) -> list[int]:
    """The candidate exit layers of a readout: every layer 1..L for the shared head (or a bare
    callable); for per-layer heads the layers that have a head, plus L (:attr:`LayerReadout.exit_layers`)."""
    return LayerReadout.of(adapter, readout).exit_layers


@dataclass
class ExitResult:
    """What the executor returns for B samples.

    Attributes:
        logits: (B, K) readout logits at each sample's exit layer.
        predictions: (B,) argmax of ``logits``.
        exit_layers: (B,) long, 1-based exit layer of each sample.
    """

    logits: Tensor
    predictions: Tensor
    exit_layers: Tensor

    @staticmethod
    def cat(results: list["ExitResult"]) -> "ExitResult":
        return ExitResult(torch.cat([r.logits for r in results]), torch.cat([r.predictions for r in results]),
                          torch.cat([r.exit_layers for r in results]))


def _check_classifier(adapter: Adapter) -> None:
    if adapter.kind != "classifier":
        raise LayertraceError(f"the early-exit executor serves classifiers; this adapter is {adapter.kind!r} "
                              f"(causal-LM early exit lives in layertrace.lm)")


def run_early_exit(adapter: Adapter, batch: Mapping[str, Any], policy: str | ExitPolicy = "confidence",
                   threshold: float = 0.9, readout: Readout | None = None,
                   layers: Sequence[int] | None = None) -> ExitResult:
    """Run one batch with per-sample early exit.

    Args:
        adapter: a classifier adapter (ViT / DeiT / BERT-family / toy / generic).
        batch: the dict the model takes (``labels`` ignored).
        policy: a causal policy name or instance (not the oracle).
        threshold: the policy's threshold (see :mod:`.policies`).
        readout: ``readout(layer, h) -> logits``; default the shared head.
        layers: candidate exit layers (last = L); default :func:`readout_layers`. Other layers run
            their block only (no readout, no decision).
    Returns:
        :class:`ExitResult` with (B, K) logits, (B,) predictions and (B,) 1-based exit layers.
    """
    if torch.is_grad_enabled():  # entering no_grad costs a little; skip it when the caller already did
        with torch.no_grad():
            return run_early_exit(adapter, batch, policy, threshold, readout, layers)
    _check_classifier(adapter)
    policy = get_policy(policy)
    if not policy.causal:
        raise LayertraceError(f"policy {policy.name!r} is not causal (it needs later layers or labels); "
                              f"simulate it with layertrace.exits.sweep instead")
    n_layers = adapter.n_layers
    if readout is None and layers is None:  # the shared head reads every layer
        read, candidates, skip = shared_readout(adapter), None, None
    else:
        read = resolve_readout(adapter, readout)
        candidates = readout_layers(adapter, readout) if layers is None else [int(l) for l in layers]
        skip = [l not in candidates for l in range(n_layers + 1)]
        skip[n_layers] = False
    state = adapter.embed(batch)
    n_samples = state.batch_size
    device = state.hidden.device

    if isinstance(policy, FixedLayerPolicy):  # elastic depth: nothing to decide, no readout before k
        requested = int(policy.check_thresholds([threshold], n_layers)[0])
        k = requested if candidates is None else next(l for l in candidates if l >= requested)
        for layer in range(1, k + 1):
            state = adapter.block(layer, state)
        logits = read(k, adapter.features(state))
        return ExitResult(logits, logits.argmax(-1), torch.full((n_samples,), k, dtype=torch.long, device=device))

    first = policy.earliest_exit(float(threshold), n_layers)
    if first >= n_layers:  # nobody can leave before L (e.g. confidence > 1): the plain full model
        for layer in range(1, n_layers + 1):
            state = adapter.block(layer, state)
        logits = read(n_layers, adapter.features(state))
        return ExitResult(logits, logits.argmax(-1), torch.full((n_samples,), n_layers, dtype=torch.long, device=device))

    threshold_t = _threshold_tensor(float(threshold), device)  # 0-d: decide gives (b,)
    carry = policy.start(n_samples, device)
    stateful = bool(carry)  # a stateful rule (patience) reads every layer; a stateless one only from `first`
    active: Tensor | None = None   # positions of running samples in the batch; None = all of them
    pieces: list[tuple[Tensor | None, Tensor, int]] = []  # (positions or None = all, their logits, exit layer)
    for layer in range(1, n_layers + 1):
        state = adapter.block(layer, state)
        if (skip is not None and skip[layer]) or (layer < first and not stateful):
            continue
        logits = read(layer, adapter.features(state))
        if layer == n_layers:  # everyone still running exits at the last layer
            pieces.append((active, logits, layer))
            break
        exit_now, carry = policy.decide(layer, logits, threshold_t, carry)
        if layer < first:  # the carry is updated; no exit is possible yet, so no host sync
            continue
        running = exit_now.shape[0]
        if running == 1:  # batch 1 (or the last sample): one check, no indexing
            if bool(exit_now):
                pieces.append((active, logits, layer))
                break
            continue
        leaving_count = int(exit_now.sum())  # the one host sync of the layer
        if leaving_count == 0:  # the common case: nothing else to do
            continue
        if leaving_count == running:  # all remaining samples stop here
            pieces.append((active, logits, layer))
            break
        leaving = exit_now.nonzero().squeeze(1)
        keep = (~exit_now).nonzero().squeeze(1)
        pieces.append((leaving if active is None else active[leaving], logits[leaving], layer))
        active = keep if active is None else active[keep]
        state = state.select(keep)
        if stateful:
            carry = {name: value[keep] for name, value in carry.items()}
    return _assemble(pieces, n_samples, device)


_THRESHOLDS: dict[tuple[float, str], Tensor] = {}


def _threshold_tensor(value: float, device: torch.device) -> Tensor:
    """A cached 0-d float32 threshold on ``device`` (same dtype as the simulation compares with)."""
    key = (value, str(device))
    t = _THRESHOLDS.get(key)
    if t is None:
        if len(_THRESHOLDS) > 256:
            _THRESHOLDS.clear()
        t = _THRESHOLDS[key] = torch.tensor(value, dtype=torch.float32, device=device)
    return t


def _assemble(pieces: list[tuple[Tensor | None, Tensor, int]], n_samples: int, device: torch.device) -> ExitResult:
    """Scatter the logits of each exit group back to batch order (at most L groups)."""
    if len(pieces) == 1 and pieces[0][0] is None:  # the whole batch left together
        _, logits, layer = pieces[0]
        return ExitResult(logits, logits.argmax(-1), torch.full((n_samples,), layer, dtype=torch.long, device=device))
    first = pieces[0][1]
    out_logits = first.new_empty((n_samples, first.shape[-1]))
    exit_layers = torch.empty(n_samples, dtype=torch.long, device=device)
    for positions, logits, layer in pieces:
        out_logits[positions] = logits
        exit_layers[positions] = layer
    return ExitResult(out_logits, out_logits.argmax(-1), exit_layers)


def run_early_exit_batches(adapter: Adapter, batches: Iterable[Mapping[str, Any]],
                           policy: str | ExitPolicy = "confidence", threshold: float = 0.9,
                           readout: Readout | None = None, layers: Sequence[int] | None = None) -> ExitResult:
    """:func:`run_early_exit` over many batches, concatenated in order."""
    results = [run_early_exit(adapter, b, policy, threshold, readout, layers) for b in batches]
    if not results:
        raise LayertraceError("no batches to run; check the data split and --limit")
    return ExitResult.cat(results)


@torch.no_grad()
def layer_logits(adapter: Adapter, batches: Iterable[Mapping[str, Any]], readout: Readout | None = None,
                 layers: Sequence[int] | None = None) -> tuple[Tensor, Tensor | None]:
    """Readout logits of every sample at every candidate exit layer (the cache simulations sweep over).

    Args:
        adapter: a classifier adapter.
        batches: dicts the model takes, optionally with ``labels`` (B,).
        readout: ``readout(layer, h)`` (a :class:`LayerReadout`, per-layer heads or a callable);
            default the shared head (read in one stacked call per batch).
        layers: candidate exit layers; default :func:`readout_layers` (1..L for the shared head).
    Returns:
        ``logits`` (C, N, K) float32 on CPU for the C candidate layers, and ``labels`` (N,) long or
        ``None`` if the batches have none.
    """
    _check_classifier(adapter)
    read = resolve_readout(adapter, readout)
    candidates = read.exit_layers if layers is None else [int(l) for l in layers]
    chunks: list[Tensor] = []
    labels: list[Tensor] = []
    for batch in batches:
        feats, _ = adapter.layer_features(batch, candidates)
        chunks.append(read.stacked(candidates, feats).float().cpu())
        if "labels" in batch:
            labels.append(torch.as_tensor(batch["labels"]).long().cpu())
    if not chunks:
        raise LayertraceError("no batches to trace; check the data split and --limit")
    return torch.cat(chunks, dim=1), (torch.cat(labels) if labels else None)
