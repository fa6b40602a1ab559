"""The training loop: one screen of labelled phases; its state is a dataclass a checkpoint saves.

(Over ~450 lines on purpose: the loop and the helpers it calls read top to bottom in one file, the
nanoGPT shape DESIGN.md section 4 asks for; checkpoints, batches and evaluation have their own modules.)

    1. set up      Accelerate (device, mixed precision, DDP under torchrun / accelerate launch),
                   objective of the mode, AdamW, schedule
    2. resume      from RUN_DIR/checkpoints/latest.json if present: weights, optimizer, schedule,
                   RNG, step and the position in the data (mid-epoch too)
    3. train       micro-batches -> shard -> loss -> backward (accumulate) -> clip -> finite? -> step;
                   log / evaluate / checkpoint every N steps
    4. finish      final checkpoint + final layer-wise evaluation

A step whose loss or gradient is not finite stops the run before the update (``on_nonfinite:
stop``, naming the step and the last good checkpoint, which it never overwrites) or is dropped
(``skip``). ``metrics.jsonl`` after a resume equals the uninterrupted run's: the loss window being
averaged is part of the state, and the final evaluation is recomputed rather than appended twice.

Distributed runs: every process builds the same global micro-batch (same seed and position) and
trains on its contiguous shard; DDP averages the gradients, so N processes with the same global
batch follow the 1-process run up to float rounding. Launch with
``torchrun --nproc_per_node N -m layertrace.cli.main train ...`` or ``accelerate launch``.
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch
from torch import nn

from .. import run_folder
from ..errors import LayertraceError
from ..config import validate_config
from ..io import atomic_path, to_jsonable
from ..layers import resolve_layers
from .augment import step_generator
from .batches import BatchSource, iterate_batches, shard_batch
from .checkpoint import commit_checkpoint, latest_checkpoint, resume_checkpoint, save_checkpoint, save_rng, step_dir
from .config import TrainSection
from .evaluate import LayerwiseEval, evaluate_layerwise
from .heads import PerLayerHeads
from .losses import weights_for_layers
from .objective import TrainingObjective, check_mode, uses_layerwise_loss

METRICS_FILE = run_folder.METRICS


@dataclass
class TrainState:
    """Where a run stands: what a checkpoint saves besides tensors.

    Attributes:
        step: optimizer steps done.
        data_epoch, data_index: the next micro-batch to read is number ``data_index`` of epoch
            ``data_epoch`` (both from 0).
        samples_seen: training samples consumed (all processes).
        wall_time_s: training time summed over every session of the run (resumes included).
        resumed_from: steps of the checkpoint this session resumed from (None for a fresh run).
        window_loss, window_steps: the loss summed over the steps since the last metrics line (so a
            resumed run logs the same averages as an uninterrupted one).
        skipped_steps: steps dropped for a non-finite loss or gradient (``on_nonfinite: skip``).
    """

    step: int = 0
    data_epoch: int = 0
    data_index: int = 0
    samples_seen: int = 0
    wall_time_s: float = 0.0
    resumed_from: int | None = None
    window_loss: float = 0.0
    window_steps: int = 0
    skipped_steps: int = 0


# Consecutive non-finite steps after which ``on_nonfinite: skip`` gives up (the weights themselves
# are then what overflows, and skipping more data cannot recover them).
MAX_CONSECUTIVE_SKIPS = 20


@dataclass
class FitResult:
    """What :func:`fit` returns: the trained objects and the final evaluation."""

    objective: TrainingObjective
    state: TrainState
    total_steps: int
    final_eval: LayerwiseEval | None
    layers: list[int]
    weights: list[float]
    is_main: bool = True
    extra: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------- helpers
def total_steps_of(cfg: TrainSection, batches_per_epoch: int) -> int:
    """Optimizer steps of the run: ``steps`` or ``epochs`` passes over ``batches_per_epoch`` micro-batches."""
    if cfg.steps is not None:
        if cfg.steps < 1:
            raise LayertraceError(f"train.steps must be >= 1, got {cfg.steps}")
        return int(cfg.steps)
    return max(1, int(cfg.epochs * batches_per_epoch) // cfg.grad_accum)


def micro_batch_size(cfg: TrainSection) -> int:
    """Samples per micro-batch (all processes together) = batch_size / grad_accum."""
    if cfg.grad_accum < 1 or cfg.batch_size % cfg.grad_accum:
        raise LayertraceError(
            f"train.batch_size {cfg.batch_size} is not a multiple of train.grad_accum {cfg.grad_accum}"
        )
    return cfg.batch_size // cfg.grad_accum


def lr_factor(step: int, total: int, cfg: TrainSection) -> float:
    """Multiplier of the peak lr for optimizer step ``step + 1`` (``step`` = steps already done)."""
    warmup = cfg.warmup_steps if cfg.warmup_steps is not None else int(round(cfg.warmup_ratio * total))
    warmup = max(0, min(warmup, total - 1))
    if step < warmup:
        return (step + 1) / (warmup + 1)
    progress = (step - warmup) / max(1, total - warmup)
    floor = cfg.min_lr_ratio
    if cfg.schedule == "cosine":
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    if cfg.schedule == "linear":
        return floor + (1 - floor) * max(0.0, 1 - progress)
    if cfg.schedule == "constant":
        return 1.0
    if cfg.schedule == "multistep":
        marks = [int(round(m * total)) if float(m) < 1 else int(m) for m in cfg.milestones]
        return cfg.gamma ** sum(step >= m for m in marks)
    raise LayertraceError(f"unknown train.schedule {cfg.schedule!r}; use cosine, multistep, linear or constant")


def make_optimizer(module: nn.Module, cfg: TrainSection) -> torch.optim.AdamW:
    """AdamW; weight decay on matrices only (not on biases, norms' scales or other vectors)."""
    decay, no_decay = [], []
    for p in module.parameters():
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(float(b) for b in cfg.adam_betas))


def accelerate_precision(precision: str, device: torch.device) -> str:
    """Accelerate's ``mixed_precision`` for ``train.precision`` (:func:`layertrace.trace.resolve_precision`'s
    vocabulary, ``auto`` never picking fp16): ``"no"`` (fp32), ``"bf16"`` or ``"fp16"`` (CUDA only)."""
    from ..trace import resolve_precision

    try:
        resolved = resolve_precision(precision, device, fp16_fallback=False)
    except LayertraceError:
        raise LayertraceError(f"train.precision {precision!r}: use auto, fp32 (or no), bf16 or fp16") from None
    if resolved == "fp16" and device.type != "cuda":
        raise LayertraceError("train.precision fp16 needs a CUDA GPU; use bf16 or fp32 on CPU")
    return "no" if resolved == "fp32" else resolved


def make_accelerator(cfg: TrainSection, find_unused: bool = False):
    """The Accelerate ``Accelerator`` of a run (CPU forced by ``train.device cpu``)."""
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs

    if cfg.device not in ("auto", "cpu", "cuda"):
        raise LayertraceError(f"train.device {cfg.device!r}: use auto, cpu or cuda")
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise LayertraceError("train.device cuda: no CUDA GPU is visible; use --train.device cpu")
    cpu = cfg.device == "cpu" or not torch.cuda.is_available()
    device = torch.device("cpu") if cpu else torch.device("cuda")
    handlers = [DistributedDataParallelKwargs(find_unused_parameters=find_unused)]
    # Accelerate keeps its settings in a process-wide singleton and refuses a second Accelerator
    # with another precision; several runs in one process (the demo, tests) each set their own.
    # The distributed part (PartialState) is kept.
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=False)
    return Accelerator(cpu=cpu, mixed_precision=accelerate_precision(cfg.precision, device), kwargs_handlers=handlers)


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def _read_metrics(path: Path, upto_step: int) -> list[str]:
    """Lines of an existing metrics file up to ``upto_step`` (a resumed run rewrites what follows)."""
    if not path.is_file():
        return []
    keep = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by a kill
        # the final evaluation is recomputed by the resumed session (a kill after it, before the
        # run folder was saved, would otherwise leave it twice)
        if isinstance(record, dict) and record.get("step", 0) <= upto_step and not record.get("final"):
            keep.append(line)
    return keep


class MetricsLog:
    """``metrics.jsonl`` (one JSON object a line) plus optional TensorBoard scalars; main process only."""

    def __init__(self, run_dir: Path, resume_step: int, enabled: bool, tensorboard: bool):
        self.enabled = enabled
        self.path = run_dir / METRICS_FILE
        self.writer = None
        if not enabled:
            return
        kept = _read_metrics(self.path, resume_step)
        with atomic_path(self.path) as tmp:
            tmp.write_text("".join(line + "\n" for line in kept))
        self.fh = open(self.path, "a")
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise LayertraceError("train.tensorboard needs TensorBoard: pip install 'layertrace[tracking]'") from None
            self.writer = SummaryWriter(str(run_dir / "tensorboard"), purge_step=resume_step + 1)

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        # strict JSON: a NaN / inf value is written as null (bare NaN is not JSON)
        self.fh.write(json.dumps(to_jsonable(record), allow_nan=False) + "\n")
        self.fh.flush()
        if self.writer is not None:
            for key, value in record.items():
                if isinstance(value, (int, float)) and key != "step":
                    self.writer.add_scalar(key, value, record["step"])
                elif isinstance(value, dict):
                    for sub, v in value.items():
                        if isinstance(v, (int, float)):
                            self.writer.add_scalar(f"{key}/{sub}", v, record["step"])

    def close(self) -> None:
        if self.enabled:
            self.fh.close()
            if self.writer is not None:
                self.writer.close()


def _nonfinite(loss: torch.Tensor, grad_norm: torch.Tensor | None, objective: nn.Module, accelerator) -> str | None:
    """What is not finite in this step (``None``: loss and gradient are finite), agreed by every process.

    The gradient norm is the clipping norm when clipping is on, else computed here (one pass over
    the gradients, small beside the backward pass). Under fp16 mixed precision an inf gradient is the
    loss scaler's business (it skips that step and lowers the scale), so only the loss is checked.
    """
    if accelerator.mixed_precision == "fp16":
        grad_norm = torch.zeros((), device=loss.device)
    elif grad_norm is None:
        grads = [p.grad.detach().norm() for p in objective.parameters() if p.grad is not None]
        grad_norm = torch.linalg.vector_norm(torch.stack(grads)) if grads else torch.zeros((), device=loss.device)
    flags = torch.stack([~torch.isfinite(loss.float()), ~torch.isfinite(torch.as_tensor(grad_norm).float())]).float()
    if accelerator.num_processes > 1:
        flags = accelerator.reduce(flags.to(accelerator.device), "sum")
    loss_bad, grad_bad = bool(flags[0] > 0), bool(flags[1] > 0)
    if not (loss_bad or grad_bad):
        return None
    if loss_bad:
        return f"the loss is {float(loss):g}"
    return f"the gradient norm is {float(grad_norm):g} (loss {float(loss):.4g})"


def _diverged_message(step: int, what: str, cfg: TrainSection, ckpt_root: Path, skips: int) -> str:
    """The one-line error of a run that diverged at ``step``."""
    good = latest_checkpoint(ckpt_root)
    where = (f"the last good checkpoint is {good} (step {int(good.name.split('-')[-1])})" if good is not None
             else "no checkpoint was written yet")
    fix = f"lower --train.lr (now {cfg.lr:g}) and start over with --train.resume false or a new --out"
    if skips:
        return f"training diverged: {skips} steps in a row up to step {step} were not finite ({what}); {where}; {fix}"
    return (f"training diverged at step {step}: {what}; {where}; {fix}, or clip with --train.clip_grad, or "
            f"skip such steps with --train.on_nonfinite skip")


# --------------------------------------------------------------------------- the loop
def fit(
    adapter: nn.Module,
    train_batches: BatchSource,
    cfg: TrainSection,
    run_dir: str | Path,
    eval_batches: Callable[[], Iterable[dict]] | Sequence[dict] | None = None,
    augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None,
    periodic_eval_batches: Sequence[dict] | None = None,
) -> FitResult:
    """Train ``adapter`` with ``cfg.mode``; checkpoints and ``metrics.jsonl`` go to ``run_dir``.

    Args:
        adapter: the model adapter (built and seeded by the caller).
        train_batches: a :class:`~layertrace.training.batches.BatchSource` of global micro-batches
            of ``batch_size / grad_accum`` samples.
        cfg: the ``train`` section.
        run_dir: output folder; an existing ``checkpoints/latest.json`` there is resumed from
            (unless ``cfg.resume`` is false, which starts over).
        eval_batches: evaluation batches (a list, or a callable returning a fresh iterable), for the
            periodic and final layer-wise readout accuracy.
        augment: ``(pixel_values, generator) -> pixel_values`` applied to image batches.
        periodic_eval_batches: a smaller evaluation set for the evaluations every ``cfg.eval_every``
            steps (default ``eval_batches``); the final evaluation always reads ``eval_batches``.

    Returns:
        :class:`FitResult`; the adapter's weights are the trained ones.
    """
    run_dir = Path(run_dir)
    ckpt_root = run_dir / "checkpoints"
    validate_config(cfg)
    mode = check_mode(cfg.mode)
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))

    # ---- 1. set up ---------------------------------------------------------------------------
    layers = resolve_layers(adapter.n_layers, cfg.layers)
    weights = weights_for_layers(cfg.layer_weights, adapter.n_layers, layers)
    alternating = mode == "aligned-alternating" or (cfg.alternate and mode != "standard")
    accelerator = make_accelerator(cfg, find_unused=alternating and mode == "multi-head")
    rank, world = accelerator.process_index, accelerator.num_processes
    is_main = accelerator.is_main_process
    micro = micro_batch_size(cfg)
    if micro % world:
        raise LayertraceError(f"micro-batch of {micro} samples does not split over {world} processes; "
                              f"use a train.batch_size that is a multiple of {world * cfg.grad_accum}")
    source_batch = getattr(train_batches, "batch_size", micro)
    if source_batch != micro:
        raise LayertraceError(f"the training batches hold {source_batch} samples but train.batch_size / grad_accum "
                              f"= {micro}; build the batch source with batch_size={micro}")
    total = total_steps_of(cfg, len(train_batches))
    heads = PerLayerHeads(adapter, layers) if mode == "multi-head" else None
    objective = TrainingObjective(adapter, mode, layers, weights, heads=heads, cos_beta=cfg.cos_beta,
                                  alternate=cfg.alternate, lm_checkpoint=cfg.lm_checkpoint, distill=cfg.distill)
    objective.to(accelerator.device)
    optimizer = make_optimizer(objective, cfg)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, total, cfg))
    state = TrainState()

    # ---- 2. resume -----------------------------------------------------------------------------
    resumed = (resume_checkpoint(ckpt_root, adapter.model, optimizer, scheduler, rank=rank, heads=heads,
                                 say=print if is_main else (lambda *_: None)) if cfg.resume else None)
    latest = resumed[0] if resumed is not None else None
    if resumed is not None:
        saved = resumed[1]
        known = set(TrainState.__dataclass_fields__)
        state = TrainState(**{**{k: v for k, v in saved.items() if k in known}, "resumed_from": saved["step"]})
    else:
        _seed_all(cfg.seed + 7919 * rank)  # dropout stream; the model init was seeded by the caller
    model, optimizer = accelerator.prepare(objective, optimizer)
    log = MetricsLog(run_dir, state.step, is_main, cfg.tensorboard)
    if is_main:
        shown = (f"layers={layers} weights={[round(w, 4) for w in weights]}" if mode != "standard"
                 else f"layer={adapter.n_layers}") + (f" distill={cfg.distill:g}" if cfg.distill else "")
        print(f"[train] mode={mode} {shown} steps={total} "
              f"batch={cfg.batch_size} (x{world} proc, accum {cfg.grad_accum}) device={accelerator.device} "
              f"precision={accelerator.mixed_precision}"
              + (f" resumed at step {state.step}" if latest is not None else ""), flush=True)

    def run_eval(periodic: bool = False) -> LayerwiseEval | None:
        if eval_batches is None:
            return None
        source = periodic_eval_batches if periodic and periodic_eval_batches is not None else eval_batches
        batches = source() if callable(source) else source
        with accelerator.autocast():
            return evaluate_layerwise(adapter, batches, heads=heads)

    # ---- 3. train ------------------------------------------------------------------------------
    model.train()
    data = iterate_batches(train_batches, state.data_epoch, state.data_index)
    progress = None
    if is_main and cfg.progress and state.step < total:
        from tqdm.auto import tqdm

        progress = tqdm(total=total, initial=state.step, desc=f"train {mode}", unit="step", dynamic_ncols=True)
    window_start = time.perf_counter()
    consecutive_skips = 0
    session_start = time.perf_counter()
    base_wall = state.wall_time_s
    while state.step < total:
        step = state.step + 1
        for m in range(cfg.grad_accum):
            epoch, index_after, batch = next(data)
            if augment is not None and "pixel_values" in batch:
                batch = dict(batch, pixel_values=augment(batch["pixel_values"], step_generator(cfg.seed, step, m)))
            local = {k: (v.to(accelerator.device) if isinstance(v, torch.Tensor) else v)
                     for k, v in shard_batch(batch, rank, world).items()}
            sync = m == cfg.grad_accum - 1
            with (contextlib.nullcontext() if sync else accelerator.no_sync(model)):
                out = model(local, step)
                accelerator.backward(out.total / cfg.grad_accum)
            state.data_epoch, state.data_index = epoch, index_after
            state.samples_seen += micro
        grad_norm = None
        if cfg.clip_grad is not None:
            grad_norm = accelerator.clip_grad_norm_(objective.parameters(), cfg.clip_grad)
        bad = _nonfinite(out.total.detach(), grad_norm, objective, accelerator)
        if bad is not None and (cfg.on_nonfinite == "stop" or consecutive_skips + 1 >= MAX_CONSECUTIVE_SKIPS):
            if progress is not None:
                progress.close()
            log.close()
            skips = consecutive_skips + 1 if cfg.on_nonfinite == "skip" else 0
            raise LayertraceError(_diverged_message(step, bad, cfg, ckpt_root, skips))
        if bad is None:
            optimizer.step()
            consecutive_skips = 0
        else:
            state.skipped_steps += 1
            consecutive_skips += 1
            if is_main:
                print(f"[train] step {step}: {bad}; update skipped (train.on_nonfinite skip)", flush=True)
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        state.step = step
        state.wall_time_s = base_wall + (time.perf_counter() - session_start)
        if bad is None:
            state.window_loss += float(out.total.detach())
            state.window_steps += 1
        if progress is not None:
            progress.update(1)
            progress.set_postfix(loss=f"{float(out.total.detach()):.4f}")

        if step % max(1, cfg.log_every) == 0 or step == total:
            stats = torch.tensor([state.window_loss / max(1, state.window_steps)], device=accelerator.device)
            stats = accelerator.reduce(stats, "mean")
            per_layer = accelerator.reduce(out.per_layer.detach().float(), "mean").tolist()
            layerwise = uses_layerwise_loss(mode, step, cfg.alternate)
            names = layers if layerwise and mode != "standard" else [adapter.n_layers]
            elapsed = time.perf_counter() - window_start
            log.write({
                "step": step, "epoch": round(state.samples_seen / max(1, len(train_batches) * micro), 4),
                "loss": float(stats[0]), "loss_kind": ("cos-distance" if mode == "cos-reg" and layerwise else
                                                       "layerwise" if layerwise else "last-layer CE"),
                "per_layer": {str(l): v for l, v in zip(names, per_layer)},
                "lr": scheduler.get_last_lr()[0], "grad_norm": None if grad_norm is None else float(grad_norm),
                "samples_per_s": state.window_steps * cfg.batch_size / max(elapsed, 1e-9),
                "wall_time_s": state.wall_time_s,
                **({"skipped_steps": state.skipped_steps} if state.skipped_steps else {}),
            })
            state.window_loss, state.window_steps, window_start = 0.0, 0, time.perf_counter()

        if cfg.eval_every and step % cfg.eval_every == 0 and step != total:
            if is_main:
                result = run_eval(periodic=True)
                if result is not None:
                    log.write({"step": step, "eval": result.to_dict()})
                    if progress is not None:
                        progress.set_postfix(acc_last=f"{result.accuracy[-1]:.3f}")
            accelerator.wait_for_everyone()

        if (cfg.checkpoint_every and step % cfg.checkpoint_every == 0) or step == total:
            folder = step_dir(ckpt_root, step)
            if is_main:
                if folder.exists():  # left by a session that stopped before sealing it: rewrite from scratch
                    import shutil

                    shutil.rmtree(folder)
                folder.mkdir(parents=True, exist_ok=True)
            accelerator.wait_for_everyone()
            save_rng(folder, rank)
            if is_main:
                save_checkpoint(ckpt_root, step, adapter.model, optimizer, scheduler, asdict(state), heads=heads)
            accelerator.wait_for_everyone()
            if is_main:
                commit_checkpoint(ckpt_root, step, keep=cfg.keep_checkpoints)
                print(f"[train] checkpoint step {step}", flush=True)
    if progress is not None:
        progress.close()

    # ---- 4. finish -----------------------------------------------------------------------------
    model.eval()
    final = run_eval() if is_main else None
    if final is not None:
        log.write({"step": state.step, "eval": final.to_dict(), "final": True})
    log.close()
    accelerator.wait_for_everyone()
    return FitResult(objective=objective, state=state, total_steps=total, final_eval=final, layers=layers,
                     weights=weights, is_main=is_main)
