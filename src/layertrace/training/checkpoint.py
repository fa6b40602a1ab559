"""Resume checkpoints in safetensors, written atomically.

Layout under ``RUN_DIR/checkpoints/``::

    step-00000120/
        model.safetensors        the wrapped model (tied weights handled by safetensors' save_model)
        heads.safetensors        per-layer heads (multi-head only)
        optimizer.safetensors    optimizer tensors; param groups + scalars in its metadata
        rng-rank0.safetensors    torch CPU (+ CUDA) generator state of each process; python/numpy in metadata
        state.json               TrainState (step, epoch, position in the epoch, ...) + scheduler state
    latest.json                  {"dir": "step-00000120", "step": 120}, written LAST

Every file is written with :func:`layertrace.io.atomic_path`; ``latest.json`` is replaced only once
the whole step folder is complete, so a run killed at any moment resumes from the previous complete
checkpoint. Older step folders beyond ``keep`` are removed after the pointer moves.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import LayertraceError
from ..io import atomic_path, read_json, write_json

LATEST = "latest.json"


def _save_tensors(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    from safetensors.torch import save_file

    clean = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(clean, str(tmp), metadata=metadata)


def _load_tensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import safe_open

    out = {}
    with safe_open(str(path), framework="pt") as fh:
        meta = fh.metadata() or {}
        for key in fh.keys():
            out[key] = fh.get_tensor(key)
    return out, meta


# --------------------------------------------------------------------------- model / heads
def save_module(module: nn.Module, path: Path) -> None:
    """A module's weights to safetensors atomically (shared / tied tensors stored once)."""
    from safetensors.torch import save_model

    with atomic_path(path) as tmp:
        save_model(module, str(tmp))


def load_module(module: nn.Module, path: Path) -> None:
    """Load weights written by :func:`save_module` into ``module`` (strict)."""
    from safetensors.torch import load_model

    missing, unexpected = load_model(module, str(path), strict=False, device=str(next(module.parameters()).device))
    if missing or unexpected:
        raise LayertraceError(
            f"{path}: checkpoint does not fit the model (missing {sorted(missing)[:3]}, unexpected "
            f"{sorted(unexpected)[:3]}); it was written for a different model, start a new --out"
        )


# --------------------------------------------------------------------------- optimizer
def optimizer_to_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Split an optimizer state dict into tensors (``state.<param>.<key>``) and JSON metadata."""
    sd = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for pid, pstate in sd["state"].items():
        for key, value in pstate.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{pid}.{key}"] = value
            else:
                scalars.setdefault(str(pid), {})[key] = value
    meta = {"param_groups": json.dumps(sd["param_groups"]), "scalars": json.dumps(scalars)}
    return tensors, meta


def optimizer_from_tensors(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor],
                           meta: dict[str, str]) -> None:
    """Inverse of :func:`optimizer_to_tensors`: load into ``optimizer``."""
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        _, pid, key = name.split(".", 2)
        state.setdefault(int(pid), {})[key] = value
    for pid, extra in json.loads(meta.get("scalars", "{}")).items():
        state.setdefault(int(pid), {}).update(extra)
    optimizer.load_state_dict({"state": state, "param_groups": json.loads(meta["param_groups"])})


# --------------------------------------------------------------------------- RNG
def rng_to_tensors() -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Every generator this process draws from: torch CPU / CUDA, numpy, python ``random``."""
    tensors = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"torch_cuda_{i}"] = s
    np_state = np.random.get_state()
    tensors["numpy_keys"] = torch.from_numpy(np.asarray(np_state[1], dtype=np.int64))
    py = random.getstate()
    meta = {
        "numpy": json.dumps([np_state[0], int(np_state[2]), int(np_state[3]), float(np_state[4])]),
        "python": json.dumps([py[0], list(py[1]), py[2]]),
    }
    return tensors, meta


def rng_from_tensors(tensors: dict[str, torch.Tensor], meta: dict[str, str]) -> None:
    """Restore what :func:`rng_to_tensors` captured."""
    torch.set_rng_state(tensors["torch_cpu"])
    cuda = [tensors[k] for k in sorted(k for k in tensors if k.startswith("torch_cuda_"))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    name, pos, has_gauss, cached = json.loads(meta["numpy"])
    np.random.set_state((name, tensors["numpy_keys"].numpy().astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss = json.loads(meta["python"])
    random.setstate((version, tuple(internal), gauss))


# --------------------------------------------------------------------------- whole checkpoints
def step_dir(ckpt_root: Path, step: int) -> Path:
    return ckpt_root / f"step-{step:08d}"


def save_rng(folder: Path, rank: int) -> None:
    """Each process writes its own generator state (called on every rank)."""
    tensors, meta = rng_to_tensors()
    _save_tensors(tensors, folder / f"rng-rank{rank}.safetensors", meta)


def save_checkpoint(ckpt_root: Path, step: int, model: nn.Module, optimizer: torch.optim.Optimizer,
                    scheduler: Any, train_state: dict[str, Any], heads: nn.Module | None = None) -> Path:
    """Write model, heads, optimizer, scheduler and train state of ``step`` (main process only).

    The RNG files are written by every rank with :func:`save_rng` before this is called; this
    function writes the pointer ``latest.json`` last.
    """
    folder = step_dir(ckpt_root, step)
    folder.mkdir(parents=True, exist_ok=True)
    save_module(model, folder / "model.safetensors")
    if heads is not None:
        save_module(heads, folder / "heads.safetensors")
    opt_tensors, opt_meta = optimizer_to_tensors(optimizer)
    _save_tensors(opt_tensors, folder / "optimizer.safetensors", opt_meta)
    sched = {k: v for k, v in scheduler.state_dict().items() if k != "lr_lambdas"} if scheduler is not None else None
    write_json(folder / "state.json", {"train_state": train_state, "scheduler": sched})
    return folder


def commit_checkpoint(ckpt_root: Path, step: int, keep: int = 1) -> None:
    """Point ``latest.json`` at ``step`` (atomically), then delete older step folders beyond ``keep``."""
    write_json(ckpt_root / LATEST, {"dir": step_dir(ckpt_root, step).name, "step": step})
    folders = sorted(p for p in ckpt_root.glob("step-*") if p.is_dir())
    for old in folders[: max(0, len(folders) - max(1, keep))]:
        if old.name != step_dir(ckpt_root, step).name:
            shutil.rmtree(old, ignore_errors=True)


def latest_checkpoint(ckpt_root: Path) -> Path | None:
    """The last complete checkpoint folder, or None."""
    pointer = ckpt_root / LATEST
    if not pointer.is_file():
        return None
    folder = ckpt_root / read_json(pointer)["dir"]
    if not (folder / "state.json").is_file():
        raise LayertraceError(f"{pointer} points at {folder}, which is incomplete; delete {ckpt_root} to start over")
    return folder


def load_checkpoint(folder: Path, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
                    rank: int = 0, heads: nn.Module | None = None) -> dict[str, Any]:
    """Load a checkpoint folder into the given objects; returns the saved train state dict."""
    load_module(model, folder / "model.safetensors")
    if heads is not None:
        load_module(heads, folder / "heads.safetensors")
    opt_tensors, opt_meta = _load_tensors(folder / "optimizer.safetensors")
    optimizer_from_tensors(optimizer, opt_tensors, opt_meta)
    saved = read_json(folder / "state.json")
    if scheduler is not None and saved.get("scheduler") is not None:
        current = scheduler.state_dict()
        current.update(saved["scheduler"])
        current.pop("lr_lambdas", None)
        scheduler.load_state_dict({**current, "lr_lambdas": [None] * len(getattr(scheduler, "lr_lambdas", []))})
    rng_file = folder / f"rng-rank{rank}.safetensors"
    if not rng_file.is_file():
        raise LayertraceError(f"{folder}: no RNG state for process {rank}; resume with the same number of processes")
    rng_from_tensors(*_load_tensors(rng_file))
    return saved["train_state"]
