"""The generic adapter: any ``nn.Module`` described as embed / blocks / head callables."""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import torch
from torch import Tensor, nn

from ..errors import LayertraceError
from .base import Adapter, Kind, State
from .layer_readout import NormThenHead


class GenericAdapter(Adapter):
    """Adapt any model given as callables: ``embed(batch) -> (B, T, d)``, blocks, final norm, head.

    Args:
        model: the module holding every parameter (for ``.parameters()``, ``.to()``, ``.train()``).
        embed: ``batch -> hidden (B, T, d)``, or ``-> State`` to carry masks with it.
        blocks: the L residual blocks, each ``hidden (B, T, d) -> hidden`` (an HF-style tuple output
            is unwrapped to its first element); a block taking ``(hidden, state)`` may set
            ``takes_state = True`` on itself.
        head: module ``(..., d) -> (..., K)`` applied after ``norm``.
        norm: the final norm, or ``None``.
        kind: ``"classifier"`` (reads token ``token_index``) or ``"causal_lm"`` (every position).
        token_index: the prediction token of a classifier (0 = [CLS]); ``None`` = mean over tokens
            respecting ``attention_mask``.
        final_norm: apply ``norm`` in the readout.
        num_outputs: K; inferred from ``head`` when it is (or ends with) an ``nn.Linear``.
        model_logits: optional ``batch -> logits`` of the unmodified model (parity checks).
        check_batch: a small batch the model takes; when given (with ``model_logits`` or a model
            whose output has ``.logits``), the constructor runs the same self-check as ``adapt()``
            (:func:`~layertrace.models.hf_auto.self_check`: the readout of layer L == the model's
            logits, ``State.select`` + block by block == the batch) and raises a one-line
            ``LayertraceError`` naming the failed check.
    """

    family = "generic"

    def __init__(
        self,
        model: nn.Module,
        embed: Callable[[Mapping[str, Any]], Tensor | State],
        blocks: Sequence[Callable],
        head: nn.Module,
        norm: nn.Module | None = None,
        kind: Kind = "classifier",
        token_index: int | None = 0,
        final_norm: bool = True,
        num_outputs: int | None = None,
        hidden_size: int | None = None,
        model_logits: Callable[[Mapping[str, Any]], Tensor] | None = None,
        check_batch: Mapping[str, Any] | None = None,
    ):
        super().__init__()
        if kind not in ("classifier", "causal_lm"):
            raise LayertraceError(f"GenericAdapter kind={kind!r}: use 'classifier' or 'causal_lm'")
        if len(blocks) == 0:
            raise LayertraceError("GenericAdapter needs at least one block; pass the model's residual blocks")
        self.model = model
        self._embed = embed
        self._blocks = list(blocks)
        self.kind = kind
        self.token_index = token_index
        self.final_norm = final_norm
        self.head = NormThenHead(norm, head, final_norm)
        self.n_layers = len(self._blocks)
        last_linear = head if isinstance(head, nn.Linear) else next(
            (m for m in reversed(list(head.modules())) if isinstance(m, nn.Linear)), None)
        if num_outputs is None:
            if last_linear is None:
                raise LayertraceError("GenericAdapter cannot infer num_outputs from the head; pass num_outputs=K")
            num_outputs = last_linear.out_features
        self.num_outputs = int(num_outputs)
        if hidden_size is None:
            first_linear = head if isinstance(head, nn.Linear) else next(
                (m for m in head.modules() if isinstance(m, nn.Linear)), None)
            if first_linear is None:
                raise LayertraceError("GenericAdapter cannot infer hidden_size from the head; pass hidden_size=d")
            hidden_size = first_linear.in_features
        self.hidden_size = int(hidden_size)
        self._model_logits = model_logits
        if check_batch is not None:
            from .hf_auto import self_check

            name = f"GenericAdapter({type(model).__name__})"
            try:
                self_check(self, check_batch)
            except LayertraceError as exc:
                raise LayertraceError(str(exc).replace(type(model).__name__, name, 1)) from None
            except Exception as exc:  # the callables crashed on the check batch
                raise LayertraceError(f"{name} failed the self-check: {type(exc).__name__}: "
                                      f"{str(exc).strip().splitlines()[0][:160] if str(exc).strip() else ''}") from None

    def embed(self, batch: Mapping[str, Any]) -> State:
        out = self._embed(self.model_inputs(batch))
        if isinstance(out, State):
            return out
        if out.dim() == 2:  # token-free model: one "token" per sample
            out = out.unsqueeze(1)
        per_sample = {}
        if "attention_mask" in batch:
            per_sample["attention_mask"] = batch["attention_mask"].to(out.device)
        return State(hidden=out, per_sample=per_sample)

    def block(self, layer: int, state: State) -> State:
        blk = self._blocks[layer - 1]
        out = blk(state.hidden, state) if getattr(blk, "takes_state", False) else blk(state.hidden)
        if isinstance(out, (tuple, list)):
            out = out[0]
        return state.replace(out)

    def features(self, state: State) -> Tensor:
        if self.kind == "causal_lm":
            return state.hidden
        if self.token_index is not None:
            return state.hidden[:, self.token_index]
        mask = state.per_sample.get("attention_mask")
        if mask is None:
            return state.hidden.mean(dim=1)
        m = mask.to(state.hidden.dtype).unsqueeze(-1)
        return (state.hidden * m).sum(1) / m.sum(1).clamp_min(1.0)

    def model_logits(self, batch: Mapping[str, Any]) -> Tensor:
        if self._model_logits is not None:
            return self._model_logits(self.model_inputs(batch))
        out = self.model(**self.model_inputs(batch))
        return out.logits if hasattr(out, "logits") else out
