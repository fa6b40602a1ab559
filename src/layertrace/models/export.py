"""Elastic inference: export the first k blocks plus the shared head as a standalone HF model.

The exported folder is a plain ``save_pretrained`` folder (safetensors, ``config.json`` with the
layer count set to k, tokenizer files and ``preprocess.json`` when known) that loads with the
``transformers`` Auto classes and no layertrace at all, and predicts exactly what the shared
readout predicts at layer k of the original model: the truncated HF model runs blocks 1..k and
then its own head path (final norm -> pooler -> classifier / LM head), which is the readout.

A readout without the final norm (``final_norm=False``) cannot be exported to a standard HF class
for models that have one (ViT, DeiT, GPT-2, Llama): the HF class always applies it. A non-auto
``pooling`` (e.g. a run trained with mean pooling) is recorded in the folder's ``preprocess.json``
and ``layertrace_export.json``: ``load_model(folder)`` reads layer k with it; a plain transformers
class reads its own head's token instead.
"""

from __future__ import annotations

import copy
import shutil
from pathlib import Path
from typing import Any

from torch import nn

from ..errors import LayertraceError
from ..io import write_json
from .base import Adapter
from .loading import PREPROCESS_FILE, LoadedModel, save_model_dir
from .registry import adapt

EXPORT_INFO_FILE = "layertrace_export.json"
_POST_LN_FAMILIES = {"bert", "roberta", "electra", "distilbert"}  # no final norm: final_norm is a no-op


def _block_list(adapter: Adapter) -> nn.ModuleList:
    """The model's own ModuleList of blocks used by ``adapter``."""
    for name in ("_block_list", "layers", "blocks"):
        blocks = getattr(adapter, name, None)
        if isinstance(blocks, nn.ModuleList) and len(blocks) == adapter.n_layers:
            return blocks
    candidates = [m for m in adapter.model.modules() if isinstance(m, nn.ModuleList) and len(m) == adapter.n_layers]
    if len(candidates) != 1:
        raise LayertraceError(
            f"cannot find the block list of {type(adapter.model).__name__} to truncate; export supports "
            f"Hugging Face models whose blocks are one ModuleList with one entry per layer"
        )
    return candidates[0]


def _module_path(root: nn.Module, target: nn.Module) -> str:
    for name, module in root.named_modules():
        if module is target:
            return name
    raise LayertraceError(f"the block list is not a submodule of {type(root).__name__}; cannot export it")


def truncated_model(adapter: Adapter, k: int) -> nn.Module:
    """A deep copy of ``adapter.model`` keeping blocks 1..k, its config saying k layers.

    Args:
        adapter: adapter of an HF model.
        k: number of blocks to keep, 1..L.
    """
    model = adapter.model
    if not hasattr(model, "config") or not hasattr(model, "save_pretrained"):
        raise LayertraceError(
            f"export needs a Hugging Face model with save_pretrained; {type(model).__name__} is not one"
        )
    path = _module_path(model, _block_list(adapter))
    out = copy.deepcopy(model)
    parent_path, _, attr = path.rpartition(".")
    parent = out.get_submodule(parent_path) if parent_path else out
    setattr(parent, attr, nn.ModuleList(list(getattr(parent, attr))[:k]))
    # the config that counts these blocks: the model's own, or its vision / text sub-config (CLIP, SigLIP)
    n = len(getattr(model.get_submodule(parent_path) if parent_path else model, attr))
    configs = [c for c in (out.config, getattr(out.config, "vision_config", None), getattr(out.config, "text_config", None))
               if c is not None and getattr(c, "num_hidden_layers", None) == n]
    if not configs:
        raise LayertraceError(f"could not find the layer count of {type(out.config).__name__} to set it to {k}")
    config = configs[0]
    config.num_hidden_layers = k  # maps to n_layer / n_layers through each config's attribute_map
    layer_types = getattr(config, "layer_types", None)
    if isinstance(layer_types, (list, tuple)) and len(layer_types) > k:
        config.layer_types = list(layer_types)[:k]
    if hasattr(config, "stage_names") and hasattr(config, "set_output_features_output_indices"):
        # backbone configs (DINOv2) name one stage per layer and point their outputs at the last one
        config.stage_names = ["stem"] + [f"stage{i}" for i in range(1, k + 1)]
        config.set_output_features_output_indices(out_features=None, out_indices=None)
    if int(config.num_hidden_layers) != k:
        raise LayertraceError(f"could not set the layer count of {type(config).__name__} to {k}")
    return out


def export_first_k(loaded_or_adapter: LoadedModel | Adapter | nn.Module, k: int, out_dir: str | Path,
                   tokenizer: Any | None = None, preprocess: dict | None = None) -> Path:
    """Write blocks 1..k plus the shared head as a standalone HF model folder.

    Args:
        loaded_or_adapter: a :class:`LoadedModel`, an adapter, or an HF model of a registered family.
        k: blocks to keep (1..L); the exported model's logits equal the readout at layer k.
        out_dir: folder to write (created; existing files of the same names are replaced).
        tokenizer: saved along when given (default: the LoadedModel's tokenizer).
        preprocess: written as ``preprocess.json`` (default: the LoadedModel's, or the
            ``preprocess.json`` of the folder the model was loaded from).

    Returns:
        ``out_dir`` as a Path. It holds ``config.json``, ``model.safetensors``, tokenizer files,
        ``preprocess.json`` and ``layertrace_export.json`` ({k, n_layers, source}).

    Raises:
        LayertraceError: k out of range, or a ``final_norm=False`` readout of a model with a final norm.
    """
    loaded = loaded_or_adapter if isinstance(loaded_or_adapter, LoadedModel) else None
    adapter = loaded.adapter if loaded is not None else adapt(loaded_or_adapter)
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= adapter.n_layers:
        raise LayertraceError(f"export k={k!r} is out of range: keep 1..{adapter.n_layers} blocks")
    if not adapter.final_norm and adapter.family not in _POST_LN_FAMILIES:
        raise LayertraceError(
            f"this {adapter.family} adapter reads without the final norm (final_norm=False), but the exported "
            f"HF model always applies it; export with final_norm=True"
        )
    model = truncated_model(adapter, k)
    if tokenizer is None and loaded is not None:
        tokenizer = loaded.tokenizer
    if preprocess is None and loaded is not None:
        preprocess = loaded.preprocess
    pooling = getattr(adapter, "pooling", "auto")
    if pooling != "auto":  # load_model(out_dir) reads the export with the same prediction feature
        preprocess = {**(preprocess or {}), "pooling": pooling}
    out = save_model_dir(model, out_dir, tokenizer=tokenizer, preprocess=preprocess)
    source_dir = Path(loaded.path) if loaded is not None and loaded.path else None
    if not preprocess and source_dir is not None and (source_dir / PREPROCESS_FILE).is_file():
        shutil.copyfile(source_dir / PREPROCESS_FILE, out / PREPROCESS_FILE)
    write_json(out / EXPORT_INFO_FILE, {
        "k": k, "n_layers": adapter.n_layers, "model_class": type(adapter.model).__name__, "pooling": pooling,
        "source": None if loaded is None else {"name": loaded.name, "source": loaded.source, "path": loaded.path},
    })
    return out
