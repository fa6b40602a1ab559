"""The model adapter: the one abstraction every stage uses (DESIGN.md section 2).

An :class:`Adapter` wraps an unmodified model and exposes it as

    embed(batch) -> State                 layer 0
    block(l, state) -> State              layer l-1 -> layer l, for l in 1..L
    features(state) -> h                  the prediction token(s) the head reads
    readout(h) -> logits                  the model's own head path (final norm -> pooler -> head)
    pool(h) -> vector                     the per-sample feature used by similarity metrics
    iter_layers(batch, layers)            the one layer loop: (layer, state) at each selected layer
    trace(batch) -> Trace                 all of the above for layers 0..L in one forward pass

Shapes, with B samples, T tokens, d = hidden size, K = classes (or V = vocabulary):

==============  ==============================  =========================================
kind            h = features(state)              readout(h)          pool(h)
==============  ==============================  =========================================
classifier      (B, d) ([CLS]); DeiT (B, 2, d)   (B, K)              (B, d)
causal_lm       (B, T, d) (every position)       (B, T, V)           (B, T, d)
encoder         (B, d) (the token it pools)      (B, K) own pooled   (B, d)
                                                 / projected output
==============  ==============================  =========================================

``encoder`` is a headless model (``BertModel``, CLIP / SigLIP towers): no classifier, so analysis
reports similarity only.

Nothing outside ``layertrace.models`` touches a model's internals; everything else goes through
this interface. The readout is one module (:attr:`Adapter.head`) that shares its parameters with
the model; :class:`~layertrace.models.layer_readout.LayerReadout` serves it (or per-layer heads) as
``(layer, h) -> logits``, so the lens, the aligned loss and early exit can never drift apart.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator, Literal, Mapping, Sequence

import torch
from torch import Tensor, nn

from ..errors import LayertraceError
from ..layers import LayerSpec, resolve_layers
from .layer_readout import LayerReadout

Kind = Literal["classifier", "causal_lm", "encoder"]


@dataclass
class State:
    """The running state between blocks for a batch of B samples.

    Attributes:
        hidden: (B, T, d) hidden states of every token (T = 1 allowed for token-free models).
        per_sample: tensors whose first dim is B (attention masks (B, T), extended masks
            (B, 1, 1, T), position ids (B, T), ...): sliced together with ``hidden``.
        shared: anything not indexed by sample (rotary tables, flags); never sliced.
    """

    hidden: Tensor
    per_sample: dict[str, Tensor] = field(default_factory=dict)
    shared: dict[str, Any] = field(default_factory=dict)

    @property
    def batch_size(self) -> int:
        return int(self.hidden.shape[0])

    def select(self, index: Tensor | Sequence[int]) -> "State":
        """The state of a subset of samples (early exit drops finished ones).

        Args:
            index: (b,) long tensor of sample positions, or a (B,) bool mask.
        Returns:
            A new State with ``hidden`` (b, T, d) and every ``per_sample`` tensor sliced alike.
        """
        if not isinstance(index, Tensor):
            index = torch.as_tensor(list(index), dtype=torch.long)
        index = index.to(self.hidden.device)
        return State(
            hidden=self.hidden[index],
            per_sample={k: v[index] for k, v in self.per_sample.items()},
            shared=dict(self.shared),
        )

    def poolable(self, other: "State") -> bool:
        """Whether ``other``'s samples can join this state's in one batch (:meth:`cat`): the same
        token count, width and dtype, the same ``per_sample`` keys with the same trailing shapes, and
        equal ``shared`` values (recorded call templates, flags; tensors compared by value)."""
        if (self.hidden.shape[1:] != other.hidden.shape[1:] or self.hidden.dtype != other.hidden.dtype
                or self.hidden.device != other.hidden.device or self.per_sample.keys() != other.per_sample.keys()):
            return False
        for key, value in self.per_sample.items():
            theirs = other.per_sample[key]
            if value.shape[1:] != theirs.shape[1:] or value.dtype != theirs.dtype:
                return False
        return _same(self.shared, other.shared)

    @staticmethod
    def cat(states: Sequence["State"], check: bool = True) -> "State":
        """The samples of several states as one state (the stream executor pools running samples).

        Args:
            states: states with ``poolable`` shapes: ``hidden`` (B_i, T, d) each.
            check: verify :meth:`poolable` (``False`` when the caller already did).
        Returns:
            A State with ``hidden`` (sum B_i, T, d), every ``per_sample`` tensor concatenated alike
            and the first state's ``shared``.
        """
        first = states[0]
        if len(states) == 1:
            return first
        for other in states[1:] if check else ():
            if not first.poolable(other):
                raise LayertraceError("State.cat: these states differ in token count, masks or shared model "
                                      "arguments; pool only states for which State.poolable is true")
        return State(hidden=torch.cat([s.hidden for s in states]),
                     per_sample={k: torch.cat([s.per_sample[k] for s in states]) for k in first.per_sample},
                     shared=dict(first.shared))

    def split(self, size: int) -> list["State"]:
        """Consecutive chunks of at most ``size`` samples (views of ``hidden`` and every ``per_sample``
        tensor: nothing is copied)."""
        n = self.batch_size
        if n <= size:
            return [self]
        return [State(hidden=self.hidden[i:i + size], per_sample={k: v[i:i + size] for k, v in self.per_sample.items()},
                      shared=self.shared) for i in range(0, n, size)]

    def replace(self, hidden: Tensor) -> "State":
        """Same masks and extras, new hidden states (what a block returns)."""
        return State(hidden=hidden, per_sample=self.per_sample, shared=self.shared)


def _same(a: Any, b: Any) -> bool:
    """Deep equality of ``State.shared`` values: tensors by shape, dtype and value; containers, dataclasses
    and ``__slots__`` objects (recorded-call placeholders) field by field; modules by identity."""
    if a is b:
        return True
    kind = type(a)
    if kind is not type(b):
        return False
    if kind is tuple or kind is list:  # the common case first: recorded call arguments
        return len(a) == len(b) and all(x is y or _same(x, y) for x, y in zip(a, b))
    if kind is dict:
        return a.keys() == b.keys() and all(a[k] is b[k] or _same(a[k], b[k]) for k in a)
    if isinstance(a, Tensor):
        return a.shape == b.shape and a.dtype == b.dtype and a.device == b.device and bool(torch.equal(a, b))
    if isinstance(a, nn.Module):
        return False  # not the same module object
    if hasattr(kind, "__dataclass_fields__"):
        return all(_same(getattr(a, name), getattr(b, name)) for name in kind.__dataclass_fields__)
    slots = getattr(kind, "__slots__", None)
    if slots is not None:
        return all(_same(getattr(a, k, None), getattr(b, k, None)) for k in slots)
    try:
        return bool(a == b)
    except Exception:  # an object without a usable equality: not provably the same
        return False


@dataclass
class Trace:
    """Per-layer features and readout logits from one forward pass.

    Attributes:
        layers: the traced layer indices (``0..L`` by default), length S.
        features: classifiers (S, B, d); causal LMs (S, B, T, d): ``pool(features(state))`` per layer.
        logits: classifiers (S, B, K); causal LMs (S, B, T, V); ``None`` when not requested.
        mask: (B, T) attention mask for token-level outputs (causal LMs), else ``None``.
    """

    layers: list[int]
    features: Tensor
    logits: Tensor | None
    mask: Tensor | None = None


class Adapter(nn.Module):
    """Base class of all adapters. Subclasses implement embed / block / features and set ``head``.

    Subclasses must set in ``__init__``: ``model``, ``n_layers``, ``hidden_size``, ``num_outputs``,
    ``kind``, ``final_norm`` and ``head`` (an ``nn.Module`` mapping h -> logits that reuses the
    model's own modules).

    An adapter is an ``nn.Module`` so that ``adapter.parameters()`` / ``.to()`` / ``.train()`` act on
    the wrapped model; it adds no parameters of its own.
    """

    model: nn.Module
    n_layers: int
    hidden_size: int
    num_outputs: int
    kind: Kind
    final_norm: bool
    head: nn.Module
    family: str = "custom"

    # ----------------------------------------------------------------- the interface
    def embed(self, batch: Mapping[str, Any]) -> State:
        """Layer 0: the embedding output for ``batch`` (the dict the model itself takes)."""
        raise NotImplementedError

    def block(self, layer: int, state: State) -> State:
        """Apply block ``layer`` (1-based, 1..L): the state at layer ``layer-1`` -> ``layer``."""
        raise NotImplementedError

    def features(self, state: State) -> Tensor:
        """The prediction token(s) read by the head: (B, d), DeiT (B, 2, d), causal LM (B, T, d)."""
        raise NotImplementedError

    def readout(self, h: Tensor) -> Tensor:
        """The model's own head path applied to ``h`` -> logits (B, K) or (B, T, V)."""
        return self.head(h)

    def pool(self, h: Tensor) -> Tensor:
        """Per-sample feature for similarity metrics: (B, d) (classifiers) or (B, T, d) (LMs)."""
        return h

    def model_logits(self, batch: Mapping[str, Any]) -> Tensor:
        """The unmodified model's own logits for ``batch`` (parity reference)."""
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        return self.model(**inputs).logits

    # ----------------------------------------------------------------- derived
    @property
    def num_classes(self) -> int:
        """Alias of ``num_outputs`` (classes for classifiers, vocabulary for LMs)."""
        return self.num_outputs

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def model_inputs(self, batch: Mapping[str, Any]) -> dict[str, Any]:
        """``batch`` without ``labels``, tensors moved to the model's device."""
        device = self.device
        return {k: (v.to(device) if isinstance(v, Tensor) else v) for k, v in batch.items() if k != "labels"}

    def forward(self, batch: Mapping[str, Any], upto: int | None = None) -> Tensor:
        """Logits of the shared readout at layer ``upto`` (default L), running only blocks 1..upto."""
        upto = self.n_layers if upto is None else resolve_layers(self.n_layers, upto)[0]
        return self.readout(self.features(self.state_at(batch, upto)))

    def token_mask(self, state: State) -> Tensor | None:
        """(B, T) mask of real tokens for token-level outputs (causal LMs), else ``None``."""
        return state.per_sample.get("attention_mask") if self.kind == "causal_lm" else None

    # ----------------------------------------------------------------- the one layer loop
    def iter_layers(self, batch: Mapping[str, Any], layers: LayerSpec = None) -> Iterator[tuple[int, State]]:
        """Run the model block by block once, yielding ``(layer, state)`` at each selected layer.

        The one layer-by-layer loop of the library: tracing, the training losses, early-exit logit
        caches, layer-wise evaluation and decoding from layer k all run through it.

        Args:
            batch: the dict the model takes (``labels`` ignored; causal LMs may add ``past_key_values``).
            layers: a :func:`~layertrace.layers.resolve_layers` spec (default 0..L); blocks past the
                deepest selected layer are not run.
        Yields:
            ``(layer, state)`` in increasing layer order; ``state.hidden`` is (B, T, d). Gradients flow.
        """
        selected = resolve_layers(self.n_layers, layers)
        wanted = set(selected)
        state = self.embed(batch)
        if 0 in wanted:
            yield 0, state
        for layer in range(1, selected[-1] + 1):
            state = self.block(layer, state)
            if layer in wanted:
                yield layer, state

    def state_at(self, batch: Mapping[str, Any], layer: int) -> State:
        """The state after block ``layer`` (0 = the embedding), running blocks 1..layer only."""
        for _, state in self.iter_layers(batch, [int(layer)]):
            return state
        raise AssertionError("iter_layers yields the selected layer")

    def layer_features(self, batch: Mapping[str, Any], layers: LayerSpec = None) -> tuple[list[Tensor], State]:
        """The readout inputs ``h_l = features(state_l)`` of the selected layers and the last state.

        Returns:
            S tensors (B, d) ([CLS]), (B, 2, d) (DeiT) or (B, T, d) (causal LMs), with gradients, in
            increasing layer order; and the :class:`State` at the deepest selected layer.
        """
        feats: list[Tensor] = []
        state = None
        for _, state in self.iter_layers(batch, layers):
            feats.append(self.features(state))
        return feats, state

    @property
    def layer_readout(self) -> LayerReadout:
        """The shared head as a :class:`~layertrace.models.layer_readout.LayerReadout` (layers 0..L)."""
        return LayerReadout.shared(self)

    def trace(self, batch: Mapping[str, Any], layers: LayerSpec = None, with_logits: bool = True) -> Trace:
        """Run the model once, block by block, and collect every selected layer.

        Args:
            batch: the dict the model takes (``pixel_values`` or ``input_ids`` + ``attention_mask``);
                ``labels`` is ignored.
            layers: a :func:`~layertrace.layers.resolve_layers` spec (default all 0..L); blocks past
                the deepest selected layer are not run.
            with_logits: also apply the shared readout at each selected layer
                (:meth:`LayerReadout.stacked`: one head call for classifiers).

        Returns:
            :class:`Trace` with ``features`` (S, B, d) / (S, B, T, d) and ``logits`` (S, B, K) /
            (S, B, T, V). Gradients flow (wrap in ``torch.no_grad()`` for analysis).
        """
        selected = resolve_layers(self.n_layers, layers)
        heads_in: list[Tensor] = []
        feats: list[Tensor] = []
        mask = None
        for layer, state in self.iter_layers(batch, selected):
            if layer == selected[0]:
                mask = self.token_mask(state)
            h = self.features(state)
            feats.append(self.pool(h))
            if with_logits:
                heads_in.append(h)
        return Trace(
            layers=selected,
            features=torch.stack(feats),
            logits=self.layer_readout.stacked(selected, heads_in) if with_logits else None,
            mask=mask,
        )

    def extra_repr(self) -> str:
        return (f"family={self.family}, kind={self.kind}, n_layers={self.n_layers}, "
                f"hidden_size={self.hidden_size}, num_outputs={self.num_outputs}, final_norm={self.final_norm}")


def check_batch_keys(batch: Mapping[str, Any], required: Sequence[str], family: str) -> None:
    """Raise a one-line error when ``batch`` lacks an input the model family needs."""
    if not isinstance(batch, Mapping):
        raise LayertraceError(f"a {family} batch must be a dict of tensors, got {type(batch).__name__}")
    missing = [k for k in required if k not in batch]
    if missing:
        raise LayertraceError(
            f"{family} batch is missing {missing}; it has {sorted(batch)}; pass the dict the model itself takes"
        )
