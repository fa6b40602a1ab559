"""The discovery adapter's classifier / encoder embedding without replaying the model's forward
(:class:`ClassifierEmbed`).

``HFAutoAdapter.embed`` replays the model's forward with recorders in place of the blocks. For a
classifier that costs the model's wrappers (output capturing, mask creation, the encoder loop over
L recorders) on top of the embedding itself: about a third of a millisecond per batch on the demo
ViT, which the baseline (the model's own forward) pays once and the early-exit executor paid on
top of its own work. This module learns, once per *case* (input keys, trailing shapes, dtypes,
whether the padding mask is all ones, batch of one or not), how to build the same state directly:

* layer 0 (``hidden``): the model's own embedding modules called with the batch's tensors, found in
  one traced replay: the outermost module outside the blocks whose output is the tensor the first
  block receives (ViT / DeiT / BERT / RoBERTa / DistilBERT ``embeddings``), plus the module calls
  feeding it (ELECTRA's ``embeddings_project`` after ``embeddings``); each argument must be a batch
  tensor, the output of an earlier such call, or a constant;
* every per-sample block argument: the batch's 2-D padding mask as the 4-D ``bool`` (SDPA) or
  additive float (eager) mask the model built, or a batch tensor itself;
* the call templates: the replay's own (shared by every state of the case, so
  :meth:`~layertrace.models.base.State.poolable` compares them by identity).

Nothing is assumed per family: the learned case is built once for the batch it was learned on and
compared with the replay's state with ``torch.equal`` (layer 0 and every per-sample tensor); a case
whose structure does not fit (a block argument derived otherwise, a tensor in the templates, a
first-block input computed outside any module) or whose check disagrees keeps the replay, with the
reason in :attr:`ClassifierEmbed.reasons` (a disagreement also warns). Training mode and
Accelerate-dispatched models always replay. ``adapter.fast_embed = False`` turns it off.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Mapping

import torch
from torch import Tensor, nn

from ..errors import LayertraceError
from .base import State
from .recording import _Ref, _hidden_kwarg
from .self_check import dispatched

_CONSTANTS = (type(None), bool, int, float, str, torch.dtype, torch.device)


class _Refuse(Exception):
    """This case cannot be built directly (the message says why)."""


class _Input:
    """Placeholder of a batch tensor (``inputs[key]``) in a learned embedding call."""

    __slots__ = ("key",)

    def __init__(self, key: str):
        self.key = key


class _Output:
    """Placeholder of an earlier learned call's output (``index``: the tuple element, or ``None``)."""

    __slots__ = ("step", "index")

    def __init__(self, step: int, index: int | None):
        self.step = step
        self.index = index


@dataclass
class _Entry:
    """One traced module call outside the blocks during the learning replay."""

    module: nn.Module
    start: int
    args: tuple = ()
    kwargs: dict | None = None
    output: Any = None
    done: bool = False


@dataclass
class _Learned:
    """How one case is built: the embedding calls, the output holding layer 0, per-sample rules, templates."""

    steps: list[tuple[nn.Module, tuple, dict]]
    hidden: _Output
    rules: dict[str, tuple]
    calls: list


class ClassifierEmbed:
    """The embedding step of a discovered classifier or encoder without replaying the forward (module docstring).

    Args:
        adapter: an ``HFAutoAdapter`` of kind ``classifier`` or ``encoder``.
    """

    def __init__(self, adapter: Any):
        self.adapter = adapter
        self.cases: dict[tuple, _Learned | None] = {}
        #: case -> why it keeps the replay
        self.reasons: dict[tuple, str] = {}

    @staticmethod
    def refusal(model: nn.Module) -> str | None:
        """Why a model must keep the replay for every batch (``None``: cases may be learned)."""
        if dispatched(model):
            return "dispatched with Accelerate hooks"
        return None

    # ----------------------------------------------------------------- cases
    def case(self, inputs: Mapping[str, Any], keep: Mapping[str, Tensor]) -> tuple | None:
        """The case key of a batch (``None``: this batch replays: training mode, unusual inputs)."""
        if self.adapter.model.training:
            return None
        parts: list[tuple] = []
        for key, value in inputs.items():
            if isinstance(value, Tensor):
                parts.append((key, tuple(value.shape[1:]), value.dtype, value.device, value.shape[0] == 1))
            elif isinstance(value, _CONSTANTS):
                parts.append((key, value))
            else:
                return None
        mask = keep.get("attention_mask")
        if mask is not None:
            parts.append(("mask all ones", bool(mask.bool().all())))
        return tuple(parts)

    def state(self, inputs: Mapping[str, Any], keep: Mapping[str, Tensor], case: tuple | None = None) -> State | None:
        """The State of ``inputs`` built directly, or ``None`` where the replay must run (an unlearned
        or refused case)."""
        case = self.case(inputs, keep) if case is None else case
        learned = self.cases.get(case) if case is not None else None
        if learned is None:
            return None
        return self._build(learned, inputs, keep)

    def _build(self, learned: _Learned, inputs: Mapping[str, Any], keep: Mapping[str, Tensor]) -> State:
        outputs: list[Any] = []

        def fill(v: Any) -> Any:
            if isinstance(v, _Input):
                return inputs[v.key]
            if isinstance(v, _Output):
                out = outputs[v.step]
                return out if v.index is None else out[v.index]
            if type(v) is tuple:
                return tuple(fill(x) for x in v)
            if type(v) is list:
                return [fill(x) for x in v]
            if type(v) is dict:
                return {k: fill(x) for k, x in v.items()}
            return v

        for module, args, kwargs in learned.steps:
            outputs.append(module(*(fill(a) for a in args), **{k: fill(v) for k, v in kwargs.items()}))
        hidden = fill(learned.hidden)
        per_sample: dict[str, Tensor] = dict(keep)
        mask = keep.get("attention_mask")
        for key, rule in learned.rules.items():
            per_sample[key] = _derive(rule, inputs, mask)
        per_sample["pool_index"] = self.adapter._pool_index(inputs, hidden)
        return State(hidden=hidden, per_sample=per_sample, shared={"calls": learned.calls, "cache": None})

    # ----------------------------------------------------------------- learning
    def learn(self, inputs: Mapping[str, Any], keep: Mapping[str, Tensor], state: State,
              case: tuple | None = None) -> None:
        """Learn the case of ``inputs`` from its replayed ``state`` (once per case), checked against it."""
        case = self.case(inputs, keep) if case is None else case
        if case is None or case in self.cases:
            return
        try:
            learned = self._learn(inputs, keep, state)
            built = self._build(learned, inputs, keep)
            why = _differs(built, state)
            if why is not None:
                warnings.warn(f"layertrace: {self.adapter.family} embeds by replaying its forward: the direct "
                              f"embedding disagrees with the replay ({why})", stacklevel=3)
                raise _Refuse(f"disagrees with the replay: {why}")
        except Exception as exc:  # noqa: BLE001 - any failure to learn keeps the replay, with its reason
            self.cases[case] = None
            self.reasons[case] = str(exc) if isinstance(exc, _Refuse) else f"{type(exc).__name__}: {exc}"[:200]
            return
        self.cases[case] = learned

    def _learn(self, inputs: Mapping[str, Any], keep: Mapping[str, Tensor], state: State) -> _Learned:
        calls = state.shared.get("calls")
        if state.shared.get("cache") is not None or set(state.shared) != {"calls", "cache"}:
            raise _Refuse("the state carries a cache or other shared values")
        _check_templates(calls)
        entries, traced = self._trace(inputs)
        hidden = traced[0][1][0] if traced[0][1] else _hidden_kwarg(traced[0][2])  # this replay's layer 0
        steps: list[tuple[nn.Module, tuple, dict]] = []
        done: dict[int, int] = {}  # id(entry) -> step index

        def producer(value: Tensor, before: int) -> _Output | None:
            """The outermost finished call started before ``before`` whose output (or tuple element) is ``value``."""
            for e in entries:  # in call order: the first match is the outermost
                if e.start >= before or not e.done:
                    continue
                if e.output is value:
                    return _Output(add(e), None)
                if isinstance(e.output, tuple):
                    index = next((i for i, o in enumerate(e.output) if o is value), None)
                    if index is not None:
                        return _Output(add(e), index)
            return None

        def template(v: Any, before: int) -> Any:
            if isinstance(v, Tensor):
                key = next((k for k, x in inputs.items() if x is v), None)
                if key is not None:
                    return _Input(key)
                out = producer(v, before)
                if out is None:
                    raise _Refuse(f"an embedding argument ({tuple(v.shape)}, {v.dtype}) is neither a batch "
                                  f"tensor nor a module's output")
                return out
            if type(v) in (tuple, list):
                return type(v)(template(x, before) for x in v)
            if type(v) is dict:
                return {k: template(x, before) for k, x in v.items()}
            if isinstance(v, _CONSTANTS):
                return v
            raise _Refuse(f"an embedding argument of type {type(v).__name__}")

        def add(e: _Entry) -> int:
            if id(e) in done:
                return done[id(e)]
            args = tuple(template(a, e.start) for a in e.args)
            kwargs = {k: template(v, e.start) for k, v in (e.kwargs or {}).items()}
            steps.append((e.module, args, kwargs))
            done[id(e)] = len(steps) - 1
            return done[id(e)]

        out = producer(hidden, len(entries) + 1)
        if out is None:
            raise _Refuse("the first block's input is not the output of a module outside the blocks")
        rules: dict[str, tuple] = {}
        for key, value in state.per_sample.items():
            if key in keep or key == "pool_index":
                continue
            rules[key] = _match(value, inputs, keep.get("attention_mask"), key)
        return _Learned(steps, out, rules, calls)

    def _trace(self, inputs: Mapping[str, Any]) -> tuple[list[_Entry], list]:
        """One replay with every module outside the blocks traced: their calls (call order, arguments,
        output) and the recorded block calls."""
        adapter = self.adapter
        inside = {id(m) for m in adapter._block_list.modules()}
        entries: list[_Entry] = []
        open_: dict[int, list[_Entry]] = {}

        def pre(module: nn.Module, args: tuple, kwargs: dict) -> None:
            e = _Entry(module, len(entries), args, dict(kwargs))
            entries.append(e)
            open_.setdefault(id(module), []).append(e)

        def post(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
            e = open_[id(module)].pop()
            e.output, e.done = output, True

        handles = []
        try:
            for m in adapter.model.modules():
                if id(m) not in inside and m is not adapter.model:
                    handles.append(m.register_forward_pre_hook(pre, with_kwargs=True))
                    handles.append(m.register_forward_hook(post, with_kwargs=True))
            calls = adapter._record(dict(inputs), stop_after=adapter.n_layers)
        finally:
            for h in handles:
                h.remove()
        return entries, calls


def _check_templates(calls: Any) -> None:
    """Refuse templates holding tensors (values of this batch a learned case could not rebuild)."""
    def walk(v: Any) -> None:
        if isinstance(v, Tensor):
            raise _Refuse(f"a block argument ({tuple(v.shape)}, {v.dtype}) is not per-sample")
        if isinstance(v, _Ref) and v.flat:
            raise _Refuse("a block argument flattens batch and heads")
        if isinstance(v, (tuple, list)):
            for x in v:
                walk(x)
        elif isinstance(v, dict):
            for x in v.values():
                walk(x)
        elif hasattr(v, "get_seq_length"):
            raise _Refuse("a block argument is a cache")

    for call in calls:
        walk(call.args)
        walk(call.kwargs)


def _mask_candidates(value: Tensor, mask: Tensor | None) -> list[tuple]:
    if mask is None or mask.dim() != 2 or value.dim() != 4 or value.shape[0] != mask.shape[0] \
            or value.shape[-1] != mask.shape[1] or value.shape[1] != 1:
        return []
    if value.dtype == torch.bool:
        return [("mask_bool", tuple(value.shape[1:]))]
    if value.is_floating_point():
        return [("mask_float", tuple(value.shape[1:]), value.dtype)]
    return []


def _derive(rule: tuple, inputs: Mapping[str, Any], mask: Tensor | None) -> Tensor:
    kind = rule[0]
    if kind == "input":
        return inputs[rule[1]]
    shape = (mask.shape[0],) + rule[1]
    allowed = mask.bool()[:, None, None, :].expand(shape)  # query i may see key j where j is a real token
    if kind == "mask_bool":
        return allowed
    return torch.zeros(shape, dtype=rule[2], device=mask.device).masked_fill(~allowed, torch.finfo(rule[2]).min)


def _match(value: Tensor, inputs: Mapping[str, Any], mask: Tensor | None, key: str) -> tuple:
    """The rule that rebuilds per-sample block argument ``value`` from the batch (or refuse)."""
    for k, x in inputs.items():
        if x is value:
            return ("input", k)
    for rule in _mask_candidates(value, mask):
        got = _derive(rule, inputs, mask)
        if got.shape == value.shape and got.dtype == value.dtype and torch.equal(got, value):
            return rule
    raise _Refuse(f"per-sample block argument {key} ({tuple(value.shape)}, {value.dtype}) matches no rule")


def _differs(a: State, b: State) -> str | None:
    """Why two states differ (``None``: bitwise equal layer 0 and per-sample tensors, the same templates)."""
    if a.hidden.shape != b.hidden.shape or a.hidden.dtype != b.hidden.dtype or not torch.equal(a.hidden, b.hidden):
        return "layer 0"
    if a.per_sample.keys() != b.per_sample.keys():
        return f"per-sample keys {sorted(a.per_sample)} vs {sorted(b.per_sample)}"
    for key, value in a.per_sample.items():
        other = b.per_sample[key]
        if value.shape != other.shape or value.dtype != other.dtype or not torch.equal(value, other):
            return f"per-sample {key}"
    if a.shared["calls"] is not b.shared["calls"]:
        raise LayertraceError("ClassifierEmbed: a learned case must reuse the replay's templates")
    return None
