"""``train_from_config``: a YAML config -> a finished run folder (what ``layertrace train`` runs).

A finished run folder holds::

    config.yaml          the resolved config
    model/               HF save_pretrained layout (safetensors) + tokenizer files when there is one
    preprocess.json      what the inputs need (image mean/std, max_length): load_model(RUN_DIR) reuses it
    heads.safetensors    the per-layer heads (multi-head only; load_heads(RUN_DIR))
    metrics.jsonl        training and evaluation log, one JSON object a line
    checkpoints/         the resume state (model, optimizer, schedule, RNG, step, data position)
    train_summary.json   mode, steps, wall time, final layer-wise accuracy; written LAST

Re-running on a finished folder with the same config returns its summary without training; an
interrupted folder (checkpoints, no summary) resumes exactly where its last checkpoint left off.
Tasks follow from the model: image classification (ViT / DeiT), text classification (BERT family,
MiniLM, any HF sequence classifier) or causal language modelling (any HF causal LM).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from .. import run_folder
from ..config import config_to_dict, load_config, save_config
from ..errors import LayertraceError
from ..io import read_json_dict, write_json
from .augment import ImageAugment
from .batches import TensorBatches
from .config import COSMETIC_KEYS, TrainConfig
from .heads import HEADS_FILE, save_heads
from .loop import fit, micro_batch_size
from .objective import check_mode, check_mode_distill

SUMMARY_FILE = run_folder.TRAIN_SUMMARY


#: What a finished run reports (``train_summary.json``): the run folder's typed record, owned by
#: :mod:`layertrace.run_folder` (the report and the demo read it there).
RunSummary = run_folder.TrainSummary


# --------------------------------------------------------------------------- config comparison
def _flat(d: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def config_differences(a: TrainConfig, b: TrainConfig) -> list[str]:
    """Keys (not cosmetic) whose values differ between two configs."""
    fa, fb = _flat(config_to_dict(a)), _flat(config_to_dict(b))
    return sorted(k for k in fa if k not in COSMETIC_KEYS and fa[k] != fb.get(k))


def training_settings(cfg: TrainConfig) -> dict[str, Any]:
    """``{dotted key: value}`` of every config key that decides a run's result (all but
    ``COSMETIC_KEYS``, the keys :func:`config_differences` compares): the settings a finished training
    stage is recorded with (:func:`layertrace.run_folder.stage_done`)."""
    return {k: v for k, v in _flat(config_to_dict(cfg)).items() if k not in COSMETIC_KEYS}


def _check_run_dir(cfg: TrainConfig, out: Path) -> RunSummary | None:
    """The summary of a finished identical run in ``out`` (reuse), None to train; error on a mismatch."""
    saved_cfg = out / run_folder.CONFIG
    if not saved_cfg.is_file():
        if (out / "checkpoints").is_dir() and cfg.train.resume:
            raise LayertraceError(f"{out} holds checkpoints but no config.yaml; choose a new --out or delete {out}")
        return None
    previous = load_config(TrainConfig, saved_cfg)
    diff = config_differences(cfg, previous)
    has_state = run_folder.is_trained(out) or (out / run_folder.CHECKPOINTS / "latest.json").is_file()
    if diff and has_state and cfg.train.resume:
        shown = ", ".join(f"{k}" for k in diff[:4])
        raise LayertraceError(
            f"{out} holds a run with a different config ({shown}); use a new --out, delete the folder, "
            f"or pass --train.resume false to overwrite it"
        )
    if not diff and cfg.train.resume and (out / SUMMARY_FILE).is_file():
        summary = RunSummary.from_json(out / SUMMARY_FILE)
        summary.reused = True
        return summary
    return None


# --------------------------------------------------------------------------- data per task
def _tensors_of(batches) -> dict[str, torch.Tensor]:
    """Concatenate a Batches iterable (fixed width) into one dict of tensors."""
    parts = list(batches)
    return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}


def _pad_to(data: dict[str, torch.Tensor], width: int, pad_id: int) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in data.items():
        if v.dim() == 2 and k != "labels" and v.shape[1] < width:
            fill = pad_id if k == "input_ids" else 0
            v = torch.cat([v, torch.full((v.shape[0], width - v.shape[1]), fill, dtype=v.dtype)], dim=1)
        out[k] = v
    return out


def _classification_tensors(ds, loaded, cfg: TrainConfig) -> dict[str, torch.Tensor]:
    """All examples of a classification dataset as tensors (images normalised; texts padded)."""
    from ..data import make_batches

    pp = loaded.preprocess or {}
    if hasattr(ds, "images"):
        batches = make_batches(ds, 4096, shuffle=False, image_mean=pp.get("image_mean"), image_std=pp.get("image_std"))
        return _tensors_of(batches)
    if loaded.tokenizer is None:
        raise LayertraceError(f"model {cfg.model.spec!r} has no tokenizer; text data needs a model folder with one")
    batches = make_batches(ds, 4096, shuffle=False, tokenizer=loaded.tokenizer, max_length=cfg.data.max_length)
    parts = list(batches)
    width = max(p["input_ids"].shape[1] for p in parts)
    pad_id = loaded.tokenizer.pad_token_id or 0
    parts = [_pad_to(p, width, pad_id) for p in parts]
    return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}


def _lm_tensors(loaded, cfg: TrainConfig, split: str, limit: int | None) -> dict[str, torch.Tensor]:
    """Token blocks (N, max_length) of a text corpus split for causal-LM training / evaluation."""
    from ..data import load_text_corpus, token_blocks

    tok = loaded.tokenizer
    if tok is None:
        raise LayertraceError(
            f"causal LM {cfg.model.spec!r} has no tokenizer; train a saved model folder that has tokenizer files"
        )
    source = cfg.data.root or cfg.data.name
    docs = load_text_corpus(source, split, seed=cfg.train.seed, **cfg.data.loader_kwargs)
    blocks = torch.from_numpy(token_blocks(tok, docs, cfg.data.max_length, max_blocks=limit))
    return {"input_ids": blocks, "attention_mask": torch.ones_like(blocks)}


def _eval_batches(data: dict[str, torch.Tensor], batch_size: int) -> list[dict[str, torch.Tensor]]:
    from .batches import trim_padding

    n = next(iter(data.values())).shape[0]
    mask = data.get("attention_mask")
    if mask is not None and mask.dim() == 2:
        # The evaluation sums over samples, so its order is free: longest first, so each batch pads
        # to sentences of about its own length (trim_padding) instead of the longest of a random mix.
        order = torch.argsort(mask.sum(dim=1), descending=True, stable=True)
        data = {k: v[order] for k, v in data.items()}
    return [trim_padding({k: v[i:i + batch_size] for k, v in data.items()}) for i in range(0, n, batch_size)]


def _model_kind(spec: str) -> str:
    """``causal_lm`` or ``classifier`` for a model spec, read without building the model."""
    from ..models.presets import PRESETS

    if spec in PRESETS:
        return PRESETS[spec].kind
    folder = Path(spec).expanduser()
    for config in (folder / "config.json", folder / "model" / "config.json"):
        if config.is_file():
            try:
                arch = (read_json_dict(config).get("architectures") or [""])[0]
            except LayertraceError:
                return "classifier"  # a damaged config.json: load_model names it and the fix
            return "causal_lm" if str(arch).endswith(("ForCausalLM", "LMHeadModel")) else "classifier"
    try:  # a hub model (online): its config names the architecture
        from transformers import AutoConfig

        arch = (AutoConfig.from_pretrained(spec[3:] if spec.startswith("hf:") else spec).architectures or [""])[0]
    except (OSError, ValueError):
        return "classifier"  # load_model reports what is wrong with the spec
    return "causal_lm" if arch.endswith(("ForCausalLM", "LMHeadModel")) else "classifier"


def _load_tokenizer(where: str):
    """A tokenizer from a local folder (or a hub name when online)."""
    from transformers import AutoTokenizer

    path = Path(where).expanduser()
    try:
        return AutoTokenizer.from_pretrained(str(path) if path.exists() else where, local_files_only=path.exists())
    except (OSError, ValueError) as exc:
        raise LayertraceError(f"model.tokenizer {where!r} could not be loaded ({str(exc).splitlines()[0][:120]}); "
                              f"give a folder with tokenizer files") from None


def _lm_tokenizer(cfg: TrainConfig, out: Path):
    """``model.tokenizer``: a folder / hub name, or ``bpe:N`` = a byte-level BPE of N tokens trained on
    the training split of the corpus (once; kept in ``RUN_DIR/tokenizer`` so a resume reuses it)."""
    spec = str(cfg.model.tokenizer)
    if not spec.startswith("bpe:"):
        return _load_tokenizer(spec)
    folder = out / "tokenizer"
    if not (folder / "tokenizer.json").is_file():
        from ..data import load_text_corpus
        from ..data.tokenizer import train_bpe_tokenizer

        try:
            vocab = int(spec[4:])
        except ValueError:
            raise LayertraceError(f"model.tokenizer {spec!r}: give the vocabulary size, e.g. bpe:2048") from None
        docs = load_text_corpus(cfg.data.root or cfg.data.name, cfg.data.train_split, shuffle=False,
                                **cfg.data.loader_kwargs)
        train_bpe_tokenizer(docs, vocab_size=vocab, out_dir=folder)
    return _load_tokenizer(str(folder))


def _saved_head_classes(spec: str) -> int | None:
    """Classes of the head saved in a model / run folder (``None``: a preset, a hub name, a bare encoder)."""
    from ..models.presets import PRESETS

    folder = Path(spec).expanduser()
    if spec in PRESETS or not folder.is_dir():
        return None
    for config in (folder / "config.json", folder / "model" / "config.json"):
        if config.is_file():
            try:
                data = read_json_dict(config)
            except LayertraceError:
                return None  # a damaged config.json: load_model names it and the fix
            arch = (data.get("architectures") or [""])[0]
            if not str(arch).endswith(("ForSequenceClassification", "ForImageClassification",
                                       "ForImageClassificationWithTeacher")):
                return None  # a bare encoder (gets a head of the data's classes) or not a classifier
            labels = data.get("id2label")
            return len(labels) if isinstance(labels, dict) else data.get("num_labels")
    return None


def _check_head(cfg: TrainConfig, data_classes: int) -> None:
    """Fine-tuning a saved classifier on data with another class count replaces its head by a fresh
    one only when ``model.num_classes`` asks for it."""
    saved = _saved_head_classes(cfg.model.spec)
    if saved is not None and cfg.model.num_classes is None and int(saved) != int(data_classes):
        raise LayertraceError(
            f"model {cfg.model.spec!r} has a head of {saved} classes but dataset {cfg.data.name!r} has {data_classes}; "
            f"pass --model.num_classes {data_classes} to replace the head by a fresh one, or pick matching data")
    if cfg.model.num_classes is not None and int(cfg.model.num_classes) != int(data_classes):
        raise LayertraceError(
            f"model.num_classes {cfg.model.num_classes} but dataset {cfg.data.name!r} has {data_classes} classes; "
            f"set --model.num_classes {data_classes} or drop it")


def _check_modality(cfg: TrainConfig, loaded, ds) -> None:
    """The model's inputs (its preprocessing's modality) must be what the dataset holds."""
    modality = (loaded.preprocess or {}).get("modality")
    holds = "image" if hasattr(ds, "images") else "text"
    if modality and modality != holds:
        raise LayertraceError(
            f"model {cfg.model.spec!r} takes {modality} inputs but dataset {cfg.data.name!r} holds {holds}s; "
            f"pick a matching model and dataset")


def _task_of(adapter, ds) -> str:
    if adapter.kind == "causal_lm":
        return "causal-lm"
    return "image-classification" if hasattr(ds, "images") else "text-classification"


# --------------------------------------------------------------------------- the run
def train_from_config(cfg: TrainConfig, out_dir: str | Path) -> RunSummary:
    """Train as ``cfg`` says into ``out_dir`` (see the module docstring for the folder layout).

    Returns:
        :class:`RunSummary`; ``reused`` is True when ``out_dir`` already held this finished run.
    Raises:
        LayertraceError: ``out_dir`` holds a run with a different config, unknown model / dataset, ...
    """
    from ..data import load_dataset
    from ..models import load_model

    out = Path(out_dir)
    check_mode_distill(check_mode(cfg.train.mode), cfg.train.distill)  # before any work
    reused = _check_run_dir(cfg, out)
    if reused is not None:
        print(f"[train] {out} is finished with this config; reusing it (delete it to retrain)", flush=True)
        return reused
    out.mkdir(parents=True, exist_ok=True)
    if not cfg.train.resume and (out / "checkpoints").exists():
        import shutil

        # starting over: nothing of the previous run may stay beside the new one (a stale
        # heads.safetensors would be read as this run's per-layer heads)
        shutil.rmtree(out / "checkpoints")
        shutil.rmtree(out / "model", ignore_errors=True)
        for name in (SUMMARY_FILE, HEADS_FILE, run_folder.METRICS):
            (out / name).unlink(missing_ok=True)
    save_config(cfg, out)
    start = time.perf_counter()

    # model (seeded: the same config gives the same initial weights) and data of its task
    train_ds = eval_ds = None
    if _model_kind(cfg.model.spec) == "causal_lm":
        tokenizer = _lm_tokenizer(cfg, out) if cfg.model.tokenizer else None
        vocab = cfg.model.num_classes or (len(tokenizer) if tokenizer is not None else None)
        loaded = load_model(cfg.model.spec, num_classes=vocab, final_norm=cfg.model.final_norm, seed=cfg.train.seed,
                            pooling=cfg.model.pooling)
        if tokenizer is not None:
            loaded.tokenizer = tokenizer
    else:
        train_ds = load_dataset(cfg.data.name, cfg.data.train_split, root=cfg.data.root, seed=cfg.train.seed,
                                limit=cfg.data.train_limit, **cfg.data.loader_kwargs)
        _check_head(cfg, train_ds.num_classes)
        loaded = load_model(cfg.model.spec, num_classes=cfg.model.num_classes or train_ds.num_classes,
                            final_norm=cfg.model.final_norm, seed=cfg.train.seed, pooling=cfg.model.pooling)
        _check_modality(cfg, loaded, train_ds)
    adapter = loaded.adapter
    adapter.train()
    micro = micro_batch_size(cfg.train)
    augment = None
    if adapter.kind == "causal_lm":
        if cfg.data.group_by_length:  # blocks are all max_length tokens long: nothing to group
            raise LayertraceError("data.group_by_length applies to text classification; causal-LM training "
                                  "blocks have no padding, so set data.group_by_length false")
        train_data = _lm_tensors(loaded, cfg, cfg.data.train_split, cfg.data.train_limit)
        eval_data = _lm_tensors(loaded, cfg, cfg.data.eval_split, cfg.data.eval_limit)
    else:
        if train_ds.num_classes != adapter.num_outputs:
            raise LayertraceError(
                f"dataset {cfg.data.name!r} has {train_ds.num_classes} classes but the model head has "
                f"{adapter.num_outputs}; set model.num_classes {train_ds.num_classes} (a fresh head) or pick matching data"
            )
        eval_ds = load_dataset(cfg.data.name, cfg.data.eval_split, root=cfg.data.root, seed=cfg.train.seed,
                               limit=cfg.data.eval_limit, **cfg.data.loader_kwargs)
        train_data = _classification_tensors(train_ds, loaded, cfg)
        eval_data = _classification_tensors(eval_ds, loaded, cfg)
        if cfg.data.augment and "pixel_values" in train_data:
            pp = loaded.preprocess or {}
            channels = train_data["pixel_values"].shape[1]
            mean = torch.as_tensor(pp.get("image_mean", [0.0]), dtype=torch.float32).expand(channels)
            std = torch.as_tensor(pp.get("image_std", [1.0]), dtype=torch.float32).expand(channels)
            augment = ImageAugment(crop_padding=cfg.data.crop_padding, hflip=cfg.data.hflip,
                                   rotation_degrees=cfg.data.rotation_degrees,
                                   fill=tuple((-mean / std).tolist()))  # a black pixel after normalisation
    train_batches = TensorBatches(train_data, micro, seed=cfg.train.seed, shuffle=True,
                                  group_by_length=cfg.data.group_by_length)
    eval_batches = _eval_batches(eval_data, cfg.train.eval_batch_size)
    periodic = None
    if cfg.train.eval_every and cfg.train.eval_every_limit:  # the first N of the (seeded) evaluation samples
        n = int(cfg.train.eval_every_limit)
        periodic = _eval_batches({k: v[:n] for k, v in eval_data.items()}, cfg.train.eval_batch_size)

    result = fit(adapter, train_batches, cfg.train, out, eval_batches=eval_batches, augment=augment,
                 periodic_eval_batches=periodic)
    if not result.is_main:
        return RunSummary(run_dir=str(out), mode=cfg.train.mode, model=cfg.model.spec, data=cfg.data.name,
                          task=_task_of(adapter, train_ds), steps=result.state.step,
                          samples_seen=result.state.samples_seen, wall_time_s=result.state.wall_time_s,
                          final_eval=None, layers=result.layers, layer_weights=result.weights)

    # ---- save the finished run (summary last: it marks the folder as finished)
    from ..models.loading import PREPROCESS_FILE, save_model_dir
    from ..models.presets import quiet_transformers

    adapter.eval()
    with quiet_transformers():
        save_model_dir(loaded.model, out / "model", tokenizer=loaded.tokenizer, preprocess=loaded.preprocess)
    write_json(out / PREPROCESS_FILE, loaded.preprocess or {})
    heads = result.objective.heads
    if heads is not None:
        save_heads(heads, out / HEADS_FILE)
    summary = RunSummary(
        run_dir=str(out), mode=cfg.train.mode, model=cfg.model.spec, data=cfg.data.name,
        task=_task_of(adapter, train_ds), steps=result.state.step, samples_seen=result.state.samples_seen,
        wall_time_s=round(result.state.wall_time_s, 3),
        final_eval=result.final_eval.to_dict() if result.final_eval is not None else None,
        layers=result.layers, layer_weights=[round(w, 6) for w in result.weights],
        params={"model": sum(p.numel() for p in loaded.model.parameters()),
                "per_layer_heads": heads.extra_parameters() if heads is not None else 0},
        resumed_from=result.state.resumed_from,
    )
    summary.to_json(out / SUMMARY_FILE)
    print(f"[train] done in {time.perf_counter() - start:.1f} s -> {out}", flush=True)
    return summary
