"""Cost model: parameters of one shared head vs one head per layer, and measured FLOPs per layer.

Parameters (the paper's Table 1)
--------------------------------
A per-layer-heads model is the shared-head model plus a classifier for each of the other L - 1
layers. The paper's Table 1 counts each extra classifier as its K x d weight matrix: with that rule
its rows come out exactly (DeiT-S 22.05M -> 26.27M, DeiT-B 86.57M -> 95.02M, and the GPT-3 saving
of 25.1%); counting biases too ((L - 1)(K d + K), the formula PAPER.md restates) gives 26.29M and
95.03M instead. (The DeiT rows use the ``deit-s`` / ``deit-b`` presets, plain ViTs as in timm.) :func:`param_counts` therefore offers two conventions:

* ``"paper"`` (default): extra = (L - 1) x (weights of the head's output matrices, K x d each;
  DeiT with teacher has two);
* ``"copied_heads"``: extra = (L - 1) x (every parameter of the shared head path: final norm,
  pooler, classifier with biases), which is what ``layertrace train --train.mode multi-head``
  actually adds (it deep-copies the head for each layer).

The shared-head model is counted as ``sum(p.numel())`` over the model's unique parameters (tied
weights once). The paper's GPT-2 row (117.35M -> 541.57M) is not reproduced by either rule: GPT-2
small has 124.44M parameters (HF ``GPT2LMHeadModel``, LM head tied to the embedding), and the
paper's difference 424.22M is not 11 x V x d = 424.57M for V = 50257, d = 768 (it would need
V ~ 50216). We print 124.44M -> 549.01M (77.3% saved); see docs/models.md.

FLOPs
-----
:func:`layer_flops` measures the embedding, each block and the readout head of an adapter on a
batch with :class:`torch.utils.flop_counter.FlopCounterMode` (matrix products, convolutions and
attention, the CPU attention kernel included via :func:`flop_counter`; element-wise ops such as
norms, softmax and activations are not counted by PyTorch's counter).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Iterable, Mapping, Sequence

import torch
from torch import nn

from ..errors import LayertraceError
from .base import Adapter

CONVENTIONS = ("paper", "copied_heads")


def _as_adapter(model_or_adapter: nn.Module | Adapter, final_norm: bool = True) -> Adapter:
    from .registry import adapt

    return adapt(model_or_adapter, final_norm=final_norm)


def _unique_numel(params: Iterable[nn.Parameter]) -> int:
    seen: set[int] = set()
    total = 0
    for p in params:
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    return total


def output_matrices(adapter: Adapter) -> list[nn.Linear]:
    """The head's output layers: ``nn.Linear`` modules of the readout producing the K logits."""
    k = adapter.num_outputs
    linears = [m for name, m in adapter.head.named_modules() if isinstance(m, nn.Linear) and m.out_features == k]
    if adapter.hidden_size == k:  # a d -> d pooler also has K outputs: keep the modules named like a classifier
        named = [m for name, m in adapter.head.named_modules() if isinstance(m, nn.Linear)
                 and m.out_features == k and not any(s in name for s in ("pooler", "dense", "pre_classifier"))]
        linears = named or linears[-1:]
    return linears


def extra_head_params(adapter: Adapter, convention: str = "paper") -> int:
    """Parameters of one extra per-layer head under ``convention`` (see the module docstring)."""
    if convention not in CONVENTIONS:
        raise LayertraceError(f"param convention {convention!r} is not one of {list(CONVENTIONS)}")
    if convention == "copied_heads":
        return _unique_numel(adapter.head.parameters())
    linears = output_matrices(adapter)
    if not linears:  # a head without an nn.Linear output: count one K x d matrix
        return adapter.num_outputs * adapter.hidden_size
    return sum(m.weight.numel() for m in linears)


def param_counts(model_or_adapter: nn.Module | Adapter, convention: str = "paper") -> dict[str, int]:
    """Parameters of the shared-head model and of the same model with one head per layer.

    Args:
        model_or_adapter: a model of a registered family, or its adapter (meta-device models work:
            only shapes are read).
        convention: ``"paper"`` (Table 1: K x d weights per extra head) or ``"copied_heads"`` (the
            full head path per extra layer, as the multi-head training baseline builds it).

    Returns:
        ``{"shared_head": int, "per_layer_heads": int}`` with
        ``per_layer_heads = shared_head + (L - 1) * extra_head_params``.
    """
    adapter = _as_adapter(model_or_adapter)
    shared = _unique_numel(adapter.model.parameters())
    extra = (adapter.n_layers - 1) * extra_head_params(adapter, convention)
    return {"shared_head": int(shared), "per_layer_heads": int(shared + extra)}


@dataclass
class ParamComparison:
    """One Table 1 row: the shared-head model vs per-layer heads.

    Attributes:
        name: what was counted (preset / folder / "config").
        n_layers, hidden_size, num_classes: L, d, K.
        shared_head: parameters with the one shared head (``None`` when only a config was given
            and no base size).
        per_layer_heads: parameters with one head per layer (``None`` likewise).
        extra: (L - 1) x the size of one extra head.
        convention: how an extra head is counted.
    """

    name: str
    n_layers: int
    hidden_size: int
    num_classes: int
    extra: int
    convention: str = "paper"
    shared_head: int | None = None
    per_layer_heads: int | None = None

    @property
    def saving(self) -> float | None:
        """Fraction of the per-layer-heads model's parameters saved by sharing the head."""
        if not self.per_layer_heads:
            return None
        return self.extra / self.per_layer_heads

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "saving": self.saving}


def compare_params(model_or_adapter: nn.Module | Adapter, name: str = "model",
                   convention: str = "paper") -> ParamComparison:
    """The Table 1 row of a model (see :func:`param_counts`)."""
    adapter = _as_adapter(model_or_adapter)
    counts = param_counts(adapter, convention)
    return ParamComparison(name=name, n_layers=adapter.n_layers, hidden_size=adapter.hidden_size,
                           num_classes=adapter.num_outputs, convention=convention,
                           extra=counts["per_layer_heads"] - counts["shared_head"],
                           shared_head=counts["shared_head"], per_layer_heads=counts["per_layer_heads"])


def compare_params_config(n_layers: int, hidden_size: int, num_classes: int,
                          base_params: int | None = None) -> ParamComparison:
    """The Table 1 row from a plain config: extra = (L - 1) K d; totals when ``base_params`` is known."""
    for label, value in (("layers", n_layers), ("hidden size", hidden_size), ("classes", num_classes)):
        if value is None or int(value) < 1:
            raise LayertraceError(f"{label} must be a positive integer, got {value!r}")
    extra = (int(n_layers) - 1) * int(num_classes) * int(hidden_size)
    shared = None if base_params is None else int(base_params)
    return ParamComparison(name="config", n_layers=int(n_layers), hidden_size=int(hidden_size),
                           num_classes=int(num_classes), extra=extra, shared_head=shared,
                           per_layer_heads=None if shared is None else shared + extra)


# ------------------------------------------------------------------------------------- FLOPs
@dataclass
class LayerFlops:
    """Measured forward FLOPs per sample: embedding, each block, the readout head.

    Attributes:
        embed: FLOPs of ``embed`` (layer 0).
        blocks: FLOPs of blocks 1..L (index l-1 for block l).
        head: FLOPs of one readout (applied at the exit layer).
        batch_size, seq_len: the batch the numbers were measured on (divided by batch_size).
    """

    embed: float
    blocks: list[float]
    head: float
    batch_size: int
    seq_len: int

    @property
    def n_layers(self) -> int:
        return len(self.blocks)

    def upto(self, layer: int, with_head: bool = True) -> float:
        """FLOPs per sample of a forward that stops at ``layer`` (0..L), plus one readout."""
        if not 0 <= layer <= self.n_layers:
            raise LayertraceError(f"layer {layer} is out of range 0..{self.n_layers}")
        return self.embed + sum(self.blocks[:layer]) + (self.head if with_head else 0.0)

    def full(self) -> float:
        """FLOPs per sample of the full model (all blocks + the head once)."""
        return self.upto(self.n_layers)

    def expected(self, exit_layers: Sequence[int] | Any, heads_per_layer: bool = True) -> float:
        """Mean FLOPs per sample when each sample exits at its layer (1-based or 0..L).

        Args:
            exit_layers: one exit layer per sample.
            heads_per_layer: the exit rule reads the head at every layer it passes (confidence
                exits: layers 1..exit each pay one readout); ``False`` counts one readout.
        """
        layers = torch.as_tensor(exit_layers, dtype=torch.long).flatten().tolist()
        if not layers:
            raise LayertraceError("expected() needs at least one exit layer")
        total = 0.0
        for layer in layers:
            reads = max(int(layer), 1) if heads_per_layer else 1
            total += self.upto(int(layer), with_head=False) + reads * self.head
        return total / len(layers)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _cpu_sdpa_flops(query_shape: Any, key_shape: Any, value_shape: Any, *args: Any, out_shape: Any = None,
                    **kwargs: Any) -> int:
    from torch.utils.flop_counter import sdpa_flop_count

    return sdpa_flop_count(query_shape, key_shape, value_shape)


def flop_counter() -> Any:
    """A ``FlopCounterMode`` that also counts CPU ``scaled_dot_product_attention``.

    PyTorch's counter knows the CUDA attention kernels but not the CPU one
    (``aten._scaled_dot_product_flash_attention_for_cpu``), so on a CPU an ``sdpa`` model's attention
    would count as zero; we map it to the same formula (QK^T and AV, 2 flops per multiply-add).
    """
    from torch.utils.flop_counter import FlopCounterMode

    mapping = {}
    cpu_sdpa = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    if cpu_sdpa is not None:
        mapping[cpu_sdpa] = _cpu_sdpa_flops
    return FlopCounterMode(display=False, custom_mapping=mapping)


def _count(fn: Any) -> tuple[Any, int]:
    with flop_counter() as counter:
        out = fn()
    return out, int(counter.get_total_flops())


def layer_flops(model_or_adapter: nn.Module | Adapter, batch: Mapping[str, Any]) -> LayerFlops:
    """Measure FLOPs of the embedding, every block and the readout on ``batch``, per sample.

    Args:
        model_or_adapter: a model of a registered family or its adapter.
        batch: the dict the model takes (``pixel_values`` or ``input_ids`` + ``attention_mask``).
    Returns:
        :class:`LayerFlops` (per-sample numbers; text costs depend on the batch's length T).
    """
    adapter = _as_adapter(model_or_adapter)
    with torch.no_grad():
        state, embed = _count(lambda: adapter.embed(batch))
        blocks = []
        for layer in range(1, adapter.n_layers + 1):
            state, flops = _count(lambda layer=layer, s=state: adapter.block(layer, s))
            blocks.append(flops)
        h = adapter.features(state)
        _, head = _count(lambda: adapter.readout(h))
    b = state.batch_size
    return LayerFlops(embed=embed / b, blocks=[f / b for f in blocks], head=head / b, batch_size=b,
                      seq_len=int(state.hidden.shape[1]))
