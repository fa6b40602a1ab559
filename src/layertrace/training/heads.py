"""The "multi-exit / classifiers" baseline: one separate head per layer (BERxiT-style).

Each head is a deep copy of the shared head's structure (final norm -> pooler -> classifier), so it
starts from the same weights and then trains on its own. Layer L keeps the model's own head, so the
extra parameters are one head per other layer: ``(L - 1) * (K d + K)`` for a bare linear head
(plus the copied norm / pooler where the head path has them). Saved as ``heads.safetensors`` in a run
folder; :func:`load_heads` rebuilds them for early exit.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Sequence

import torch
from torch import Tensor, nn

from .. import run_folder
from ..errors import LayertraceError
from ..io import atomic_path, reading

HEADS_FILE = run_folder.HEADS


class PerLayerHeads(nn.Module):
    """One readout head per selected layer; layer L reads through the model's own shared head.

    Args:
        adapter: the model's adapter; its ``head`` is copied (and used as is for layer L).
        layers: the layers that get a head (indices in 0..L); L is served by the shared head.

    ``forward(layer, h)`` maps h (B, d) / (B, T, d) -> logits with that layer's head.
    """

    def __init__(self, adapter: nn.Module, layers: Sequence[int]):
        super().__init__()
        self.n_layers = int(adapter.n_layers)
        self.layers = sorted(int(l) for l in layers if int(l) != self.n_layers)
        # Not registered as a submodule: the shared head belongs to the model (saved with it).
        self._shared = [adapter.head]
        self.heads = nn.ModuleDict({str(l): copy.deepcopy(adapter.head) for l in self.layers})

    def head_for(self, layer: int) -> nn.Module:
        """The head reading ``layer`` (the shared head for layer L)."""
        if layer == self.n_layers:
            return self._shared[0]
        key = str(int(layer))
        if key not in self.heads:
            raise LayertraceError(f"no per-layer head for layer {layer}; heads exist for layers {self.layers + [self.n_layers]}")
        return self.heads[key]

    def forward(self, layer: int, h: Tensor) -> Tensor:
        """Logits of layer ``layer`` read by its own head: (B, K) or (B, T, V)."""
        return self.head_for(layer)(h)

    def extra_parameters(self) -> int:
        """Parameters the per-layer heads add over the one shared head."""
        return sum(p.numel() for p in self.heads.parameters())


def heads_state(heads: PerLayerHeads) -> dict[str, Tensor]:
    """A flat, contiguous copy of the heads' weights (``"<layer>.<param>"`` keys)."""
    return {f"{k}": v.detach().contiguous().cpu().clone() for k, v in heads.heads.state_dict().items()}


def save_heads(heads: PerLayerHeads, path: str | Path) -> Path:
    """Write the per-layer heads to ``path`` (``heads.safetensors``) atomically."""
    from safetensors.torch import save_file

    path = Path(path)
    meta = {"layers": json.dumps(heads.layers), "n_layers": str(heads.n_layers), "format": "layertrace-heads-1"}
    with atomic_path(path) as tmp:
        save_file(heads_state(heads), str(tmp), metadata=meta)
    return path


def load_heads(run_dir: str | Path, adapter: nn.Module | None = None) -> PerLayerHeads:
    """Rebuild the per-layer heads of a finished multi-head run.

    Args:
        run_dir: a ``layertrace train`` output folder holding ``heads.safetensors`` (or the file).
        adapter: the run's model adapter; default ``adapt(load_model(run_dir).model)``.

    Returns:
        :class:`PerLayerHeads` on the adapter's device; ``forward(layer, h)`` gives layer logits.
    """
    from safetensors import safe_open
    from safetensors.torch import load_file

    run_dir = Path(run_dir)
    path = run_dir if run_dir.suffix == ".safetensors" else run_dir / HEADS_FILE
    if not path.is_file():
        raise LayertraceError(
            f"{path}: no per-layer heads here; train with --train.mode multi-head to get them"
        )
    fix = (f"re-run the multi-head training that wrote it (or copy {path.parent}/checkpoints/step-*/heads.safetensors "
           f"over it), or read the shared head with --heads shared")
    with reading(path, fix, what="heads file"):
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
    if "layers" not in meta:
        raise LayertraceError(f"{path}: not a layertrace heads file (no 'layers' metadata); re-create it")
    if adapter is None:
        from ..models import load_model

        model_dir = run_dir if run_dir.is_dir() else run_dir.parent
        adapter = load_model(str(model_dir)).adapter
    if int(meta.get("n_layers", adapter.n_layers)) != adapter.n_layers:
        raise LayertraceError(
            f"{path}: heads were trained for {meta['n_layers']} layers but the model has {adapter.n_layers}"
        )
    with reading(path, fix, what="heads file"):
        heads = PerLayerHeads(adapter, json.loads(meta["layers"]))
        state = load_file(str(path))
    missing, unexpected = heads.heads.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise LayertraceError(
            f"{path}: the heads do not fit this model's head (missing {sorted(missing)[:2]}, unexpected "
            f"{sorted(unexpected)[:2]}): written for another model or by an older layertrace; re-run the "
            f"multi-head training, or read the shared head with --heads shared")
    return heads.to(next(adapter.parameters()).device)
