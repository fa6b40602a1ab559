"""The one readout object: ``(layer, h) -> logits`` at every layer it serves (DESIGN.md section 2).

The lens (analysis), the aligned loss and the per-layer-heads loss (training), early exit (exits)
and layer-wise evaluation all read a layer through a :class:`LayerReadout`, so they can never drift
apart. Two kinds:

* ``"shared"``: the model's own head path (:meth:`Adapter.readout`: final norm -> pooler -> head)
  at every layer 0..L, the paper's single classifier;
* ``"per-layer"``: one head per layer (``layertrace.training.heads.PerLayerHeads``, or any object
  with ``.layers`` called as ``heads(layer, h)``), layer L read by the model's own head.

A bare callable ``fn(layer, h)`` (a test spy, a custom readout) is wrapped as ``"custom"`` serving
every layer. :class:`NormThenHead` is the usual shared head path (final norm, then the head). ``h`` is ``adapter.features(state)``: (B, d), DeiT (B, 2, d), causal LM (B, T, d).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from torch import Tensor, nn

ReadoutFn = Callable[[int, Tensor], Tensor]


class NormThenHead(nn.Module):
    """Readout ``head(norm(h))``; the norm is skipped when ``final_norm`` is False.

    Args:
        norm: the model's final norm module, or ``None`` when it has none.
        head: module mapping (..., d) -> (..., K).
        final_norm: apply ``norm`` (default, logit-lens practice) or not (the authors' GPT-2 code).
    """

    def __init__(self, norm: nn.Module | None, head: nn.Module, final_norm: bool = True):
        super().__init__()
        self.norm = norm if (norm is not None and final_norm) else nn.Identity()
        self.head = head

    def forward(self, h: Tensor) -> Tensor:
        return self.head(self.norm(h))


class LayerReadout:
    """``readout(layer, h) -> logits`` over the layers it serves, plus a stacked form.

    Attributes:
        adapter: the model adapter (its ``readout`` is the shared head).
        kind: ``"shared"``, ``"per-layer"`` or ``"custom"``.
        layers: the layers it can read, sorted (shared / custom: 0..L; per-layer: those with a
            head, plus L).
        heads: the per-layer heads module (``None`` for the shared head).

    Build with :meth:`shared`, :meth:`per_layer` or :meth:`of` (which accepts ``None``, a
    ``LayerReadout``, a heads module or a bare callable).
    """

    def __init__(self, adapter: Any, fn: ReadoutFn, kind: str, layers: Sequence[int], heads: Any = None):
        self.adapter = adapter
        self.kind = kind
        self.layers = sorted({int(l) for l in layers})
        self.heads = heads
        self._fn = fn

    # ------------------------------------------------------------------ constructors
    @classmethod
    def shared(cls, adapter: Any) -> "LayerReadout":
        """The model's own head at every layer 0..L."""
        readout = adapter.readout
        # the base class's readout is ``head(h)``: call the head directly (one Python call less per
        # layer on hot paths); an adapter overriding readout is called through it
        if type(adapter).readout.__qualname__ == "Adapter.readout":
            head = adapter.head
            return cls(adapter, lambda layer, h: head(h), "shared", range(adapter.n_layers + 1))
        return cls(adapter, lambda layer, h: readout(h), "shared", range(adapter.n_layers + 1))

    @classmethod
    def per_layer(cls, adapter: Any, heads: Any) -> "LayerReadout":
        """One head per layer: ``heads(layer, h)``, over ``heads.layers`` plus L."""
        return cls(adapter, heads, "per-layer", {*map(int, heads.layers), int(adapter.n_layers)}, heads=heads)

    @classmethod
    def of(cls, adapter: Any, readout: Any = None) -> "LayerReadout":
        """``readout`` as a :class:`LayerReadout`: ``None`` -> :meth:`shared`; an object with
        ``.layers`` (per-layer heads) -> :meth:`per_layer`; a bare ``fn(layer, h)`` -> ``"custom"``
        over 0..L."""
        if readout is None:
            return cls.shared(adapter)
        if isinstance(readout, LayerReadout):
            return readout
        if getattr(readout, "layers", None) is not None:
            return cls.per_layer(adapter, readout)
        return cls(adapter, readout, "custom", range(adapter.n_layers + 1))

    # ------------------------------------------------------------------ reading
    def __call__(self, layer: int, h: Tensor) -> Tensor:
        """Logits of layer ``layer``: (B, K) from (B, d) / (B, 2, d); (B, T, V) from (B, T, d)."""
        return self._fn(layer, h)

    @property
    def exit_layers(self) -> list[int]:
        """The layers an early exit may stop at: :attr:`layers` within 1..L (L always included)."""
        n_layers = int(self.adapter.n_layers)
        return sorted({l for l in self.layers if 1 <= l <= n_layers} | {n_layers})

    def stacked(self, layers: Sequence[int], feats: Sequence[Tensor] | Tensor) -> Tensor:
        """Logits of S layers at once: S x (B, ...) -> (S, B, K) (causal LMs (S, B, T, V)).

        The shared head of a classifier maps rows independently, so it reads the S * B rows in one
        call (fewer, larger kernels; equal to S separate calls). Per-layer heads, custom readouts and
        causal LMs (whose stacked input would double the (S, B, T, d) memory) read layer by layer.
        """
        layers = [int(l) for l in layers]
        if self.kind == "shared" and getattr(self.adapter, "kind", "classifier") != "causal_lm":
            x = feats if isinstance(feats, Tensor) else torch.stack(list(feats))
            s, b = x.shape[:2]
            logits = self._fn(layers[-1] if layers else 0, x.reshape(s * b, *x.shape[2:]))
            return logits.reshape(s, b, *logits.shape[1:])
        return torch.stack([self._fn(l, h) for l, h in zip(layers, feats)])

    def __repr__(self) -> str:
        return f"LayerReadout(kind={self.kind!r}, layers={self.layers})"
