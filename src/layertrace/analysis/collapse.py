"""Neural collapse through the shared head's geometry, inside the analysis pass (``collapse=True``).

Which feature: at every traced layer, the input of the head's **final linear layer** when the
shared readout is applied to that layer's prediction token - i.e. after whatever the readout does
before its last linear map (final LayerNorm for ViT / DeiT and the toy models; BERT's pooler dense +
tanh; DistilBERT's pre-classifier + ReLU; RoBERTa's dense + tanh), so that ``logits = z W^T + b``
holds exactly at every layer. Why: neural collapse (Papyan et al. 2020) is a statement about the
features a *linear* classifier reads; NC3 compares the class means with that classifier's rows
``W``, which is only meaningful in the space ``W`` acts on. The raw residual stream h_l is not that
space (the final norm rescales and re-centres it per sample), so h_l would give a different NC1
than the one the shared head experiences.

How: a forward hook on that linear layer, attached for the pass only (removed in ``finally``) and
recording only between :meth:`HeadFeatures.arm` and :meth:`HeadFeatures.take`, keeps its inputs
from the readout calls the pass makes anyway, so NC costs no extra readout. The linear layer is the one ``nn.Linear`` in ``adapter.head`` whose
``out_features`` is the number of classes; on the first batch the recorded outputs are checked
against the pass's logits, and a head whose last step is not that one linear map (DeiT's
two-token head averages two of them) is refused in one line.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..errors import LayertraceError
from ..readout.collapse import CollapseAccumulator

FEATURE_RULE = ("input of the shared head's final linear layer (after the readout's final norm / pooler), "
                "at every traced layer")


class HeadFeatures:
    """The final linear layer of an adapter's shared head, and a way to record what it reads."""

    def __init__(self, adapter: Any):
        k = int(adapter.num_outputs)
        linears = [m for m in adapter.head.modules() if isinstance(m, nn.Linear) and m.out_features == k]
        if len(linears) != 1:
            raise LayertraceError(
                f"neural collapse (collapse=True) needs a head with exactly one linear layer giving the "
                f"{k} class logits; this {type(adapter.head).__name__} has {len(linears)}: run without --collapse")
        self.linear = linears[0]
        self.checked = False

    @property
    def weight(self) -> np.ndarray:
        """(K, d') float64 rows of the final linear layer."""
        return self.linear.weight.detach().to("cpu", torch.float64).numpy()

    def attach(self) -> None:
        """Attach the recording hook (the pass calls :meth:`detach` in ``finally``)."""
        self.calls: list[tuple[Tensor, Tensor]] = []
        self.armed = False

        def hook(module, inputs, output):
            if self.armed:
                self.calls.append((inputs[0].detach(), output.detach()))

        self._handle = self.linear.register_forward_hook(hook)

    def detach(self) -> None:
        handle = getattr(self, "_handle", None)
        if handle is not None:
            handle.remove()
            self._handle = None

    def arm(self) -> None:
        """Record the calls from now until :meth:`take` (one batch's readout calls)."""
        self.calls = []
        self.armed = True

    def take(self) -> list[tuple[Tensor, Tensor]]:
        """The recorded calls since :meth:`arm`; stops recording."""
        calls, self.calls, self.armed = self.calls, [], False
        return calls

    def stack(self, calls: list[tuple[Tensor, Tensor]], logits: Tensor) -> Tensor:
        """The recorded inputs as (S, B, d'), in the order of ``logits`` (S, B, K).

        On the first batch, checks that the recorded outputs are the logits (the head ends in this
        linear layer and was called once per traced layer, in layer order).
        """
        s, b, k = logits.shape
        if not calls:
            raise LayertraceError("neural collapse: the head's final linear layer was never called by the readout")
        z = torch.cat([x.reshape(-1, x.shape[-1]) for x, _ in calls])
        if z.shape[0] != s * b:
            raise LayertraceError(f"neural collapse: the head's final linear layer read {z.shape[0]} rows for "
                                  f"{s} layers x {b} samples; this head is not supported, run without --collapse")
        if not self.checked:
            out = torch.cat([y.reshape(-1, k) for _, y in calls]).float().reshape(s, b, k)
            if not torch.allclose(out, logits.float().to(out.device), rtol=1e-3, atol=1e-4):
                raise LayertraceError(
                    f"neural collapse: the logits of {type(self.linear).__name__} in the head are not the "
                    f"readout's logits (the head does more after it); run without --collapse")
            self.checked = True
        return z.reshape(s, b, -1)


class CollapseStage:
    """The pass's neural-collapse state: the head's linear layer and a :class:`CollapseAccumulator`."""

    def __init__(self, adapter: Any, n_positions: int):
        self.head = HeadFeatures(adapter)
        self.n_positions = int(n_positions)
        self.num_classes = int(adapter.num_outputs)
        self.acc: CollapseAccumulator | None = None

    def attach(self) -> None:
        self.head.attach()

    def detach(self) -> None:
        self.head.detach()

    def arm(self) -> None:
        self.head.arm()

    def update(self, logits: Tensor, labels: Tensor) -> None:
        """Add the batch whose readout calls were recorded since :meth:`arm`: logits (S, B, K), labels (B,)."""
        z = self.head.stack(self.head.take(), logits)
        if self.acc is None:
            self.acc = CollapseAccumulator(self.n_positions, self.num_classes, int(z.shape[-1]))
        self.acc.update(z, labels)

    def finish(self, dist: Any) -> dict[str, Any]:
        """Merge over processes and compute; ``{"feature", "dim", "nc1", ..., "n_classes"}`` lists over layers."""
        dims = {x for x in dist.gather(None if self.acc is None else self.acc.dim) if x is not None}
        if len(dims) != 1:
            raise LayertraceError(f"neural collapse: processes saw head feature widths {sorted(dims)}")
        if self.acc is None:
            self.acc = CollapseAccumulator(self.n_positions, self.num_classes, dims.pop())
        self.acc.load_state(dist.sum(self.acc.state()))
        out = self.acc.compute(self.head.weight)
        return {"feature": FEATURE_RULE, "dim": self.acc.dim, **out}
