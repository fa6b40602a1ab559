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

:func:`run_early_exit_stream` serves many batches: the running samples of ``window`` batches form one
pool whose blocks run in full chunks, so the stragglers every batch leaves in the deep layers share
block calls (throughput; a straggler's latency grows). Per sample it gives run_early_exit's results.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch
from torch import Tensor

from ..errors import LayertraceError
from ..models.base import Adapter, State
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


@dataclass
class _Plan:
    """What one threshold's run needs, resolved once: the policy, the readout, which layers read and
    decide (``skip[l]``: block only), the first layer a decision can fire (``first``) and, for runs
    with nothing to decide, the one layer everyone exits at (``fixed``)."""

    policy: ExitPolicy
    read: LayerReadout
    skip: list[bool] | None
    first: int
    fixed: int | None


def _plan(adapter: Adapter, policy: str | ExitPolicy, threshold: float, readout: Readout | None,
          layers: Sequence[int] | None) -> _Plan:
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
    fixed = None
    if isinstance(policy, FixedLayerPolicy):  # elastic depth: nothing to decide, no readout before k
        requested = int(policy.check_thresholds([threshold], n_layers)[0])
        fixed = requested if candidates is None else next(l for l in candidates if l >= requested)
    first = policy.earliest_exit(float(threshold), n_layers)
    if fixed is None and first >= n_layers:  # nobody can leave before L (e.g. confidence > 1): the full model
        fixed = n_layers
    return _Plan(policy, read, skip, first, fixed)


def _run_fixed(adapter: Adapter, state: State, plan: _Plan) -> ExitResult:
    """Every sample exits at ``plan.fixed``: blocks 1..k and one readout, nothing decided."""
    k = plan.fixed
    for layer in range(1, k + 1):
        state = adapter.block(layer, state)
    logits = plan.read(k, adapter.features(state))
    return ExitResult(logits, logits.argmax(-1),
                      torch.full((state.batch_size,), k, dtype=torch.long, device=state.hidden.device))


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
    plan = _plan(adapter, policy, threshold, readout, layers)
    state = adapter.embed(batch)
    if plan.fixed is not None:
        return _run_fixed(adapter, state, plan)
    policy, read, skip, first = plan.policy, plan.read, plan.skip, plan.first
    n_layers = adapter.n_layers
    n_samples = state.batch_size
    device = state.hidden.device
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
        leaving = exit_now.nonzero().squeeze(1)  # the one host sync of the layer
        leaving_count = int(leaving.shape[0])
        if leaving_count == 0:  # the common case: nothing else to do
            continue
        if leaving_count == running:  # all remaining samples stop here
            pieces.append((active, logits, layer))
            break
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


def run_early_exit_stream(adapter: Adapter, batches: Iterable[Mapping[str, Any]],
                          policy: str | ExitPolicy = "confidence", threshold: float = 0.9,
                          readout: Readout | None = None, layers: Sequence[int] | None = None,
                          window: int = 8, chunk: int | None = None) -> ExitResult:
    """Early exit over a stream of batches, pooling the samples still running across batches.

    The batches are taken ``window`` at a time. Within a window every batch is embedded, and then
    layer by layer all still-running samples of the window run their block in chunks of at most
    ``chunk`` rows (default: the window's largest batch), so the few samples left in deep layers by
    each batch are regrouped into full chunks instead of running as many tiny batches (continuous
    batching in depth). The readout and the decision run once per layer on all running samples of
    the window (one host sync per layer). Samples whose states cannot share a batch (different padded token counts, other
    recorded model arguments: :meth:`State.poolable`) are pooled in separate groups; nothing is
    padded.

    Per sample the result is what :func:`run_early_exit` gives batch by batch: the same exit layer
    and prediction, and the logits up to float rounding (a block or readout over other rows may round
    differently in the last bit). What it measures is throughput over the stream: a sample that runs
    deep waits for its window, so its latency grows (docs/exits.md).

    Args:
        adapter, policy, threshold, readout, layers: as in :func:`run_early_exit`.
        batches: dicts the model takes (``labels`` ignored), in order.
        window: batches pooled together (1 = :func:`run_early_exit` batch by batch).
        chunk: the most rows a block call runs on; default the largest batch of the window.
    Returns:
        :class:`ExitResult` over all samples in input order: (N, K) logits, (N,) predictions and
        (N,) 1-based exit layers.
    """
    if torch.is_grad_enabled():
        with torch.no_grad():
            return run_early_exit_stream(adapter, batches, policy, threshold, readout, layers, window, chunk)
    if window < 1 or (chunk is not None and chunk < 1):
        raise LayertraceError(f"run_early_exit_stream: window={window} and chunk={chunk} must be at least 1")
    plan = _plan(adapter, policy, threshold, readout, layers)
    batches = list(batches)
    if not batches:
        raise LayertraceError("no batches to run; check the data split and --limit")
    results: list[ExitResult] = []
    for start in range(0, len(batches), window):
        states = [adapter.embed(b) for b in batches[start:start + window]]
        if plan.fixed is not None:  # nothing to decide: no stragglers to pool
            results.extend(_run_fixed(adapter, state, plan) for state in states)
            continue
        size = chunk or max(state.batch_size for state in states)
        offsets = [0]
        for state in states:
            offsets.append(offsets[-1] + state.batch_size)
        groups: list[list[int]] = []  # indices of states that can share a batch
        for i, state in enumerate(states):
            home = next((g for g in groups if states[g[0]].poolable(state)), None)
            if home is None:
                groups.append([i])
            else:
                home.append(i)
        device = states[0].hidden.device
        pieces: list[tuple[Tensor | None, Tensor, int]] = []
        for group in groups:
            positions = torch.cat([torch.arange(offsets[i], offsets[i + 1], device=device) for i in group])
            pieces.extend(_pool(adapter, [states[i] for i in group], positions, plan, float(threshold), size))
        results.append(_assemble(pieces, offsets[-1], device))
    return ExitResult.cat(results)


def _pool(adapter: Adapter, states: list[State], positions: Tensor, plan: _Plan, threshold: float,
          size: int) -> list[tuple[Tensor, Tensor, int]]:
    """Run poolable states layer by layer as one pool of running samples (:func:`run_early_exit_stream`).

    The pool is a list of chunks of at most ``size`` rows; each block runs once per chunk, the
    readout and decision see the features of the whole pool (one small concatenation), and when
    samples leave, the survivors of every chunk are gathered straight into one new buffer and cut
    into full chunks again. The pool's hidden states are never concatenated as a whole: every row
    is copied once per exit layer it survives, not twice (a concatenation, then a selection).

    Args:
        states: states of at most ``size`` rows each, in output order.
        positions: (N,) position of each pooled row in the window's output.
    Returns:
        ``(positions, logits, exit layer)`` per exit group, as :func:`_assemble` takes them.
    """
    policy, read, skip, first = plan.policy, plan.read, plan.skip, plan.first
    n_layers = adapter.n_layers
    device = positions.device
    threshold_t = _threshold_tensor(threshold, device)
    carry = policy.start(int(positions.shape[0]), device)
    stateful = bool(carry)
    if all(state.batch_size == size for state in states[:-1]):  # full batches (the usual stream): as they are
        chunks = [part for state in states for part in state.split(size)]
    else:  # uneven batches: the fewest full chunks
        chunks = State.cat(states, check=False).split(size)  # the caller grouped poolable states
    pieces: list[tuple[Tensor, Tensor, int]] = []
    for layer in range(1, n_layers + 1):
        chunks = [adapter.block(layer, chunk) for chunk in chunks]
        if (skip is not None and skip[layer]) or (layer < first and not stateful):
            continue
        feats = (adapter.features(chunks[0]) if len(chunks) == 1
                 else torch.cat([adapter.features(chunk) for chunk in chunks]))
        logits = read(layer, feats)
        if layer == n_layers:
            pieces.append((positions, logits, layer))
            break
        exit_now, carry = policy.decide(layer, logits, threshold_t, carry)
        if layer < first:
            continue
        running = int(exit_now.shape[0])
        leaving = exit_now.nonzero().squeeze(1)  # the one host sync of the layer
        leaving_count = int(leaving.shape[0])
        if leaving_count == 0:
            continue
        if leaving_count == running:
            pieces.append((positions, logits, layer))
            break
        keep = (~exit_now).nonzero().squeeze(1)
        pieces.append((positions[leaving], logits[leaving], layer))
        positions = positions[keep]
        chunks = _gather(chunks, keep, size)
        if stateful:
            carry = {name: value[keep] for name, value in carry.items()}
    return pieces


def _gather(chunks: list[State], keep: Tensor, size: int) -> list[State]:
    """The rows ``keep`` (sorted positions in the concatenated chunks) as chunks of at most ``size``
    rows: each kept row copied once, from its chunk into one new buffer (``index_select(out=...)``),
    which is then cut into views."""
    if len(chunks) == 1:
        return chunks[0].select(keep).split(size)
    first = chunks[0]
    ends = list(itertools.accumulate(c.batch_size for c in chunks))
    cuts = torch.searchsorted(keep, torch.tensor(ends, device=keep.device)).tolist()  # kept rows per chunk end
    n = int(keep.shape[0])

    def gathered(get) -> Tensor:
        ref = get(first)
        out = torch.empty((n, *ref.shape[1:]), dtype=ref.dtype, device=ref.device)
        lo, start = 0, 0
        for chunk, end, cut in zip(chunks, ends, cuts):
            if cut > lo:
                torch.index_select(get(chunk), 0, keep[lo:cut] - start, out=out[lo:cut])
            lo, start = cut, end
        return out

    pool = State(hidden=gathered(lambda c: c.hidden),
                 per_sample={k: gathered(lambda c, k=k: c.per_sample[k]) for k in first.per_sample},
                 shared=first.shared)
    return pool.split(size)


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
