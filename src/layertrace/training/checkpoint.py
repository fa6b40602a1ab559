"""Resume checkpoints in safetensors, written atomically, verified, and kept two deep.

Layout under ``RUN_DIR/checkpoints/``::

    step-00000120/
        model.safetensors        the wrapped model (tied weights handled by safetensors' save_model)
        heads.safetensors        per-layer heads (multi-head only)
        optimizer.safetensors    optimizer tensors; param groups + scalars in its metadata
        rng-rank0.safetensors    torch CPU (+ CUDA) generator state of each process; python/numpy in metadata
        state.json               TrainState (step, epoch, position in the epoch, ...) + scheduler state
        manifest.json            {file: {size, sha256}} of the files above, written after they are
                                 read back and checked (a folder without it is incomplete)
    latest.json                  {"dir": "step-00000120", "step": 120, "files": {...}}, written LAST

Every file is written with :func:`layertrace.io.atomic_path`; ``latest.json`` is replaced only once
the whole step folder is complete and verified, so a run killed at any moment resumes from the
previous complete checkpoint. The ``keep`` newest verified step folders stay (default 2): when the
newest is damaged later (a truncated copy, a full disk, bit rot), :func:`resume_checkpoint` checks
sizes and checksums, falls back to the newest one that loads, and says which.
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .. import run_folder
from ..errors import LayertraceError
from ..io import atomic_path, read_json, read_json_dict, reading, write_json

LATEST = "latest.json"
MANIFEST = "manifest.json"


def _save_tensors(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    from safetensors.torch import save_file

    clean = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(clean, str(tmp), metadata=metadata)


def _load_tensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import safe_open

    out = {}
    with reading(path, "resume from an earlier checkpoint", what="checkpoint file"):
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

    with reading(path, "resume from an earlier checkpoint, or start a new --out", what="weights file"):
        missing, unexpected = load_model(module, str(path), strict=False,
                                         device=str(next(module.parameters()).device))
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
        save_module(heads, folder / run_folder.HEADS)
    opt_tensors, opt_meta = optimizer_to_tensors(optimizer)
    _save_tensors(opt_tensors, folder / "optimizer.safetensors", opt_meta)
    sched = {k: v for k, v in scheduler.state_dict().items() if k != "lr_lambdas"} if scheduler is not None else None
    write_json(folder / "state.json", {"train_state": train_state, "scheduler": sched})
    return folder


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def seal_checkpoint(folder: Path) -> dict[str, dict[str, Any]]:
    """Read back every file of a just-written step folder (safetensors headers, JSON) and record
    its size and SHA-256 in ``manifest.json``; returns that manifest. Main process, after every
    rank's RNG file is written.

    Raises:
        LayertraceError: a file does not read back (a full disk, a failing device).
    """
    from safetensors import safe_open

    files: dict[str, dict[str, Any]] = {}
    for path in sorted(folder.iterdir()):
        if not path.is_file() or path.name.startswith(".") or path.name == MANIFEST:
            continue
        with reading(path, "the disk may be full or failing: free space and resume", what="checkpoint file just written"):
            if path.suffix == ".safetensors":
                with safe_open(str(path), framework="pt") as fh:
                    fh.keys()
            else:
                json.loads(path.read_text())
        files[path.name] = {"size": path.stat().st_size, "sha256": _sha256(path)}
    write_json(folder / MANIFEST, files)
    return files


def _legacy_pointer(folder: Path) -> bool:
    """Whether ``latest.json`` names ``folder`` in the format before manifests (no ``files``)."""
    try:
        pointer = json.loads((folder.parent / LATEST).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(pointer, dict) and pointer.get("dir") == folder.name and "files" not in pointer


def verify_checkpoint(folder: Path, files: dict[str, dict[str, Any]] | None = None) -> str | None:
    """What is wrong with a step folder (``None``: every file has its recorded size and checksum).

    ``files`` defaults to the folder's own ``manifest.json``.
    """
    if files is None:
        if not (folder / MANIFEST).is_file():
            if (folder / "state.json").is_file() and _legacy_pointer(folder):
                return None  # written before manifests existed; latest.json vouches for it
            return "incomplete (no manifest.json: the run stopped while writing it)"
        try:
            files = read_json_dict(folder / MANIFEST)
        except LayertraceError as exc:
            return str(exc)
    for name, want in files.items():
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != want.get("size"):
            return f"{name} has {path.stat().st_size} bytes, {want.get('size')} were written"
        if _sha256(path) != want.get("sha256"):
            return f"{name} does not match its checksum"
    return None


def commit_checkpoint(ckpt_root: Path, step: int, keep: int = 2) -> None:
    """Seal ``step`` (:func:`seal_checkpoint`), point ``latest.json`` at it (atomically), then delete
    step folders other than the ``keep`` newest sealed ones up to ``step``."""
    folder = step_dir(ckpt_root, step)
    files = seal_checkpoint(folder)
    write_json(ckpt_root / LATEST, {"dir": folder.name, "step": step, "files": files})
    sealed = [p for p in sorted(ckpt_root.glob("step-*")) if p.is_dir() and p.name <= folder.name
              and (p / MANIFEST).is_file()]
    keep_names = {p.name for p in sealed[-max(1, keep):]} | {folder.name}
    for old in ckpt_root.glob("step-*"):
        if old.is_dir() and old.name not in keep_names:
            shutil.rmtree(old, ignore_errors=True)


def checkpoint_candidates(ckpt_root: Path) -> list[Path]:
    """Step folders to resume from, best first: the one ``latest.json`` names, then the others,
    newest first. Empty when the run has no checkpoint."""
    pointer = ckpt_root / LATEST
    named = None
    if pointer.is_file():
        try:
            named = ckpt_root / str(read_json_dict(pointer)["dir"])
        except (LayertraceError, KeyError):
            named = None  # a damaged pointer: the folders themselves still say what they hold
    folders = sorted((p for p in ckpt_root.glob("step-*") if p.is_dir()), reverse=True)
    out = [named] if named is not None and named.is_dir() else []
    return out + [p for p in folders if p != named]


def latest_checkpoint(ckpt_root: Path) -> Path | None:
    """The newest checkpoint folder that verifies (sizes and checksums), or None when there is none."""
    for folder in checkpoint_candidates(ckpt_root):
        if verify_checkpoint(folder) is None:
            return folder
    return None


def resume_checkpoint(ckpt_root: Path, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
                      rank: int = 0, heads: nn.Module | None = None,
                      say: Any = print) -> tuple[Path, dict[str, Any]] | None:
    """Load the newest checkpoint under ``ckpt_root`` that verifies and loads; ``None`` when the run
    has no checkpoint folder at all.

    A damaged newest checkpoint (wrong size / checksum, or a load error) is reported through ``say``
    and the previous one is tried; every load overwrites the whole model, optimizer, schedule and RNG
    state, so a partly loaded damaged checkpoint leaves nothing behind.

    Returns:
        ``(folder, train_state dict)`` of the checkpoint used; ``None`` when no folder was ever sealed.
    Raises:
        LayertraceError: sealed checkpoints exist but none loads.
    """
    found = checkpoint_candidates(ckpt_root)
    # a folder never sealed (killed while its first files were written) is no checkpoint at all
    candidates = [f for f in found if (f / MANIFEST).is_file() or _legacy_pointer(f)]
    if not candidates:
        if found:
            say(f"[train] no complete checkpoint in {ckpt_root} (the run stopped while writing its first); "
                f"starting from step 0")
        return None
    problems = []
    for i, folder in enumerate(candidates):
        problem = verify_checkpoint(folder)
        if problem is None:
            try:
                state = load_checkpoint(folder, model, optimizer, scheduler, rank=rank, heads=heads)
            except LayertraceError as exc:
                problem = str(exc)
            else:
                if problems:
                    say(f"[train] resuming from {folder.name} (step {state['step']}), the newest checkpoint "
                        f"that loads; skipped: {'; '.join(problems)}")
                return folder, state
        problems.append(f"{folder.name}: {problem}")
    raise LayertraceError(
        f"no checkpoint in {ckpt_root} loads ({'; '.join(problems)[:300]}); delete {ckpt_root} to start over "
        f"(or pass --train.resume false)"
    )


def load_checkpoint(folder: Path, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
                    rank: int = 0, heads: nn.Module | None = None) -> dict[str, Any]:
    """Load a checkpoint folder into the given objects; returns the saved train state dict."""
    load_module(model, folder / "model.safetensors")
    if heads is not None:
        load_module(heads, folder / run_folder.HEADS)
    opt_tensors, opt_meta = _load_tensors(folder / "optimizer.safetensors")
    with reading(folder / "optimizer.safetensors", "resume from an earlier checkpoint", what="optimizer state"):
        optimizer_from_tensors(optimizer, opt_tensors, opt_meta)
    saved = read_json_dict(folder / "state.json", "resume from an earlier checkpoint")
    if scheduler is not None and saved.get("scheduler") is not None:
        current = scheduler.state_dict()
        current.update(saved["scheduler"])
        current.pop("lr_lambdas", None)
        scheduler.load_state_dict({**current, "lr_lambdas": [None] * len(getattr(scheduler, "lr_lambdas", []))})
    rng_file = folder / f"rng-rank{rank}.safetensors"
    if not rng_file.is_file():
        raise LayertraceError(f"{folder}: no RNG state for process {rank}; resume with the same number of processes")
    rng_tensors, rng_meta = _load_tensors(rng_file)
    with reading(rng_file, "resume from an earlier checkpoint", what="RNG state"):
        rng_from_tensors(rng_tensors, rng_meta)
    if "train_state" not in saved:
        raise LayertraceError(f"{folder / 'state.json'}: no train_state; resume from an earlier checkpoint")
    return saved["train_state"]
