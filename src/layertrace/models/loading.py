"""``load_model(spec)``: a preset, a local folder, a training run or a hub model, ready to trace.

``spec`` is resolved in this order:

1. a folder holding ``config.json`` (a ``save_pretrained`` folder: weights in safetensors, tokenizer
   files and ``preprocess.json`` when present);
2. a training run folder holding ``model/config.json`` (weights from ``RUN/model``, preprocessing
   from ``RUN/preprocess.json`` or ``RUN/model/preprocess.json``);
3. ``hf:NAME`` or ``org/name``: ``from_pretrained`` from the Hugging Face hub (online only);
4. a preset name (:mod:`layertrace.models.presets`), built from config.

Anything else raises a one-line :class:`~layertrace.errors.LayertraceError` with a suggestion.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import LayertraceError
from ..io import check_safetensors, read_json, read_json_dict, reading, write_json
from .base import Adapter
from .presets import PRESETS, build_preset, get_preset, quiet_transformers
from .registry import adapt

PREPROCESS_FILE = "preprocess.json"
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json", "tokenizer.model",
                    "spiece.model")
# Model classes whose name says they already carry a task head.
_HEAD_SUFFIXES = ("ForSequenceClassification", "ForImageClassification", "ForImageClassificationWithTeacher",
                  "ForCausalLM", "LMHeadModel")


@dataclass
class LoadedModel:
    """A model with everything needed to feed and read it.

    Attributes:
        model: the ``transformers`` (or other) model, in eval mode.
        adapter: its :class:`~layertrace.models.base.Adapter` (``final_norm`` as requested).
        tokenizer: the tokenizer for text models when one is known, else ``None``.
        preprocess: what data loaders need: ``modality`` ("image" | "text"); images: ``image_size``,
            ``channels``, ``image_mean``, ``image_std`` (per channel, inputs scaled to [0, 1] first);
            text: ``max_length``.
        name: the preset name, hub name, or folder name.
        source: ``"preset"``, ``"directory"``, ``"run"`` or ``"hub"``.
        path: the folder the weights came from (``None`` for presets built from config and hub models).
    """

    model: nn.Module
    adapter: Adapter
    tokenizer: Any | None
    preprocess: dict = field(default_factory=dict)
    name: str = ""
    source: str = "preset"
    path: str | None = None

    def save_pretrained(self, out_dir: str | Path) -> Path:
        """Write model (safetensors), tokenizer and ``preprocess.json`` into ``out_dir``.

        ``load_model(out_dir)`` gives the same model back. A training run writes this into ``RUN/model``.
        """
        return save_model_dir(self.model, out_dir, tokenizer=self.tokenizer, preprocess=self.preprocess)


def save_model_dir(model: nn.Module, out_dir: str | Path, tokenizer: Any | None = None,
                   preprocess: dict | None = None) -> Path:
    """``model.save_pretrained`` (safetensors) + tokenizer + ``preprocess.json`` into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with quiet_transformers():
        model.save_pretrained(str(out), safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(str(out))
    if preprocess:
        write_json(out / PREPROCESS_FILE, preprocess)
    return out


def _resolve_dtype(dtype: torch.dtype | str | None) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    names = {"float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
             "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
             "float16": torch.float16, "fp16": torch.float16, "half": torch.float16}
    key = str(dtype).lower().replace("torch.", "")
    if key not in names:
        raise LayertraceError(f"dtype {dtype!r} is not understood; use float32, bfloat16 or float16")
    return names[key]


def _is_vision_config(config: Any) -> bool:
    return hasattr(config, "image_size") and hasattr(config, "num_channels")


def _default_preprocess(config: Any, folder: Path | None) -> dict:
    """Preprocessing read from an HF ``preprocessor_config.json`` or derived from the config."""
    if _is_vision_config(config):
        size = config.image_size if isinstance(config.image_size, int) else int(config.image_size[0])
        channels = int(config.num_channels)
        mean, std = [0.5] * channels, [0.5] * channels  # HF ViT / DeiT image processor defaults
        proc = folder / "preprocessor_config.json" if folder is not None else None
        if proc is not None and proc.is_file():
            data = read_json(proc)
            mean = list(data.get("image_mean", mean))
            std = list(data.get("image_std", std))
        return {"modality": "image", "image_size": size, "channels": channels, "image_mean": mean, "image_std": std}
    positions = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None) or 512
    return {"modality": "text", "max_length": int(min(positions, 512))}


def _load_tokenizer(folder: Path | str, local: bool) -> Any | None:
    from transformers import AutoTokenizer

    with quiet_transformers():
        return AutoTokenizer.from_pretrained(str(folder), local_files_only=local)


def _is_bare_encoder(arch: str) -> bool:
    """``BertModel``, ``ViTModel``, ...: a backbone without any task head."""
    return arch.endswith("Model") and not arch.endswith(_HEAD_SUFFIXES) and "For" not in arch


def _pretrained_class(config: Any, arch: str | None, num_classes: int | None, where: str) -> Any:
    """The model class to load a checkpoint with: its own, or a classification class over a bare encoder."""
    import transformers

    if arch is None:
        raise LayertraceError(f"{where}: config.json names no architecture; save the model with save_pretrained")
    cls = getattr(transformers, arch, None)
    if cls is None:
        raise LayertraceError(
            f"{where}: model class {arch} is not in transformers {transformers.__version__}; load it yourself "
            f"and wrap it with layertrace.models.GenericAdapter(model, embed=..., blocks=..., head=...)"
        )
    if not _is_bare_encoder(arch):
        return cls  # a task model: adapt() names it if no adapter serves it
    if num_classes is None:
        raise LayertraceError(
            f"{where}: {arch} is a bare encoder without a task head; pass num_classes=K to add a fresh "
            f"classification head (or load a *ForSequenceClassification / *ForImageClassification checkpoint; "
            f"for similarity only, layertrace.analyze(transformers.AutoModel.from_pretrained(DIR), batches))"
        )
    return (transformers.AutoModelForImageClassification if _is_vision_config(config)
            else transformers.AutoModelForSequenceClassification)


def _from_pretrained(source: str, num_classes: int | None, local: bool, where: str) -> nn.Module:
    import transformers

    config = transformers.AutoConfig.from_pretrained(source, local_files_only=local)
    arch = (getattr(config, "architectures", None) or [None])[0]
    cls = _pretrained_class(config, arch, num_classes, where)
    kwargs: dict[str, Any] = {"local_files_only": local}
    is_lm = arch is not None and arch.endswith(("ForCausalLM", "LMHeadModel"))
    if num_classes is not None:
        if is_lm:
            if int(num_classes) != int(config.vocab_size):
                raise LayertraceError(
                    f"{where}: num_classes={num_classes} but this causal LM has a vocabulary of {config.vocab_size}; "
                    f"omit num_classes for language models"
                )
        elif int(num_classes) != int(getattr(config, "num_labels", -1)) or _is_bare_encoder(arch):
            kwargs.update(num_labels=int(num_classes), ignore_mismatched_sizes=True)
    with quiet_transformers():
        return cls.from_pretrained(source, **kwargs)


def _finish(model: nn.Module, *, final_norm: bool, dtype: torch.dtype | None, tokenizer: Any, preprocess: dict,
            name: str, source: str, path: str | None, pooling: str | None = None) -> LoadedModel:
    if dtype is not None:
        model = model.to(dtype)
    model.eval()
    preprocess = dict(preprocess)
    # the pooling asked for, else the one stored with the model (a run trained with mean pooling), else auto
    chosen = pooling or preprocess.get("pooling") or "auto"
    adapter = adapt(model, final_norm=final_norm, pooling=chosen)
    preprocess.pop("pooling", None)
    if chosen != "auto":
        preprocess["pooling"] = chosen  # travels with save_pretrained / RUN/preprocess.json / export
    return LoadedModel(model=model, adapter=adapter, tokenizer=tokenizer, preprocess=preprocess,
                       name=name, source=source, path=path)


def _damaged_fix(folder: Path, source: str) -> str:
    """What to do about a model folder whose files cannot be read."""
    if source == "run":
        run = folder.parent
        return (f"rebuild it from the run's checkpoints: delete {run / 'train_summary.json'}, then run "
                f"`layertrace train --config {run / 'config.yaml'} --out {run}`")
    return "re-create the folder (save_pretrained, or `layertrace export`) or restore it from a copy"


def _load_folder(folder: Path, *, num_classes: int | None, final_norm: bool, dtype: torch.dtype | None,
                 source: str, preprocess_file: Path | None = None, pooling: str | None = None) -> LoadedModel:
    fix = _damaged_fix(folder, source)
    read_json_dict(folder / "config.json", fix)  # names the file: transformers' error would not say how to fix it
    for weights in sorted(folder.glob("*.safetensors")):
        check_safetensors(weights, fix)
    with reading(folder, fix, what="model folder"):
        model = _from_pretrained(str(folder), num_classes, local=True, where=f"model folder {folder}")
        has_tokenizer = any((folder / f).is_file() for f in _TOKENIZER_FILES)
        tokenizer = _load_tokenizer(folder, local=True) if has_tokenizer else None
    pp_file = preprocess_file if preprocess_file is not None and preprocess_file.is_file() else folder / PREPROCESS_FILE
    preprocess = (read_json_dict(pp_file, fix) if pp_file.is_file()
                  else _default_preprocess(model.config, folder))
    name = folder.parent.name if source == "run" else folder.name
    return _finish(model, final_norm=final_norm, dtype=dtype, tokenizer=tokenizer, preprocess=preprocess,
                   name=name, source=source, path=str(folder), pooling=pooling)


def _load_hub(name: str, *, num_classes: int | None, final_norm: bool, dtype: torch.dtype | None,
              pooling: str | None = None) -> LoadedModel:
    try:
        model = _from_pretrained(name, num_classes, local=False, where=f"hub model {name}")
    except LayertraceError:
        raise
    except (OSError, ValueError) as exc:  # offline, unknown repo, gated, no weights
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise LayertraceError(
            f"could not load {name!r} from the Hugging Face hub ({first[:160]}); when offline use a preset "
            f"({', '.join(PRESETS)}) or a local save_pretrained folder"
        ) from None
    try:
        tokenizer = _load_tokenizer(name, local=False)
    except (OSError, ValueError):
        tokenizer = None
    return _finish(model, final_norm=final_norm, dtype=dtype, tokenizer=tokenizer,
                   preprocess=_default_preprocess(model.config, None), name=name, source="hub", path=None,
                   pooling=pooling)


def load_model(spec: str | Path, *, num_classes: int | None = None, final_norm: bool = True,
               dtype: torch.dtype | str | None = None, seed: int | None = None,
               pooling: str | None = None) -> LoadedModel:
    """Load a model with its adapter, tokenizer and preprocessing.

    Args:
        spec: a preset name (``vit-demo``, ``minilm-cls``, ... see :func:`~layertrace.models.presets.preset_names`),
            a ``save_pretrained`` folder, a training run folder (holding ``model/``), or a hub name
            (``hf:NAME`` or ``org/name``; needs the network).
        num_classes: classes of the classification head. For presets: overrides the default (causal LM
            presets: the vocabulary size). For folders / hub models: a different K replaces the head by
            a fresh one (a bare encoder such as MiniLM's ``BertModel`` gets a new head).
        final_norm: apply the final norm in the shared readout (PAPER.md section 1).
        dtype: cast the model (``torch.float32`` / ``"bfloat16"`` / ...); default: as built / saved.
        seed: seed torch before building a preset (reproducible random init); ``None`` leaves the
            global generator alone.
        pooling: the classifier's prediction feature (``auto`` | ``cls`` | ``mean`` | ``last``, see
            :func:`~layertrace.models.adapt`); ``None`` = the pooling stored in the folder's
            ``preprocess.json`` (a run trained with mean pooling), else ``auto``. A non-auto choice
            is written into ``LoadedModel.preprocess["pooling"]`` so it travels with the model.

    Returns:
        :class:`LoadedModel` (model in eval mode).

    Raises:
        LayertraceError: unknown preset (with a suggestion), folder without ``config.json``, unknown
            architecture, offline hub name, bad ``num_classes`` / ``dtype``.
    """
    torch_dtype = _resolve_dtype(dtype)
    text = str(spec)
    path = Path(text).expanduser()
    if path.is_dir():
        if (path / "config.json").is_file():
            return _load_folder(path, num_classes=num_classes, final_norm=final_norm, dtype=torch_dtype,
                                source="directory", pooling=pooling)
        if (path / "model" / "config.json").is_file():
            return _load_folder(path / "model", num_classes=num_classes, final_norm=final_norm, dtype=torch_dtype,
                                source="run", preprocess_file=path / PREPROCESS_FILE, pooling=pooling)
        raise LayertraceError(
            f"folder {path} holds neither config.json (a save_pretrained folder) nor model/config.json "
            f"(a training run); point to the folder that has them"
        )
    if text.startswith("hf:"):
        return _load_hub(text[3:], num_classes=num_classes, final_norm=final_norm, dtype=torch_dtype, pooling=pooling)
    if text in PRESETS:
        preset = get_preset(text)
        if seed is not None:
            torch.manual_seed(seed)
        model = build_preset(text, num_classes)
        tokenizer = _load_tokenizer(preset.tokenizer_dir(), local=True) if preset.tokenizer_dir else None
        return _finish(model, final_norm=final_norm, dtype=torch_dtype, tokenizer=tokenizer,
                       preprocess=preset.preprocess, name=text, source="preset",
                       path=str(preset.checkpoint()) if preset.checkpoint else None, pooling=pooling)
    looks_like_path = text.startswith((".", "/", "~")) or text.endswith(("/", "\\"))
    if looks_like_path or path.exists():
        raise LayertraceError(f"model folder {text!r} not found; check the path (or give a preset: {', '.join(PRESETS)})")
    if "/" in text:
        return _load_hub(text, num_classes=num_classes, final_norm=final_norm, dtype=torch_dtype, pooling=pooling)
    get_preset(text)  # raises the unknown-preset error with a suggestion
    raise AssertionError("unreachable")
