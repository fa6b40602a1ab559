"""The paper's MLP experiment (PAPER.md section 2): a 9-layer MLP with vs without residual connections.

Why COS suffices in transformers: residual connections leave little rotation between layers. The
paper trains the same deep MLP on MNIST twice, with and without skip connections, and reads every
layer with the final classifier. Without skips, linear CKA to the last layer stays high (it ignores
rotations) while COS and the shared head's accuracy stay low; with skips all three rise together.

    from layertrace.experiments import MLPExperimentConfig, run_mlp_pair
    dirs = run_mlp_pair(MLPExperimentConfig(), "demo-out")   # mnist-mlp-residual, mnist-mlp-plain

Each run folder is a standard run folder (``config.yaml``, ``model/model.safetensors``,
``metrics.jsonl``, ``train_summary.json``, ``analysis.json``), so ``layertrace report`` reads it like
any other. Training is plain last-layer cross-entropy (the paper's setting); the analysis goes
through the generic adapter, so the numbers come from the same code as every other run.

Architecture (equal widths, so every layer can be read by the one head)::

    layer 0:  h_0 = W_in x                                  (input projection, x = flattened image)
    block l:  u = ReLU(W_l h_(l-1) + b_l);  h_l = h_(l-1) + u (residual)  or  h_l = u (plain)
    head:     logits = W_out LN(h_L)                        (the shared readout of every layer)
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor, nn

from .. import run_folder
from ..errors import LayertraceError

DATA_SHORT = {"mnist-5k": "mnist", "mnist": "mnist", "fashion-mnist": "fmnist"}


def _h(text: str, **extra: Any) -> dict:
    return {"help": text, **extra}


@dataclass
class MLPExperimentConfig:
    """The MLP with/without residuals experiment (``demo``'s ``mlp`` section)."""

    enabled: bool = field(default=True, metadata=_h("run the MLP with/without residual connections experiment"))
    data: str = field(default="mnist-5k", metadata=_h("dataset: mnist-5k (embedded, 4k train / 500 test) or "
                                                       "fashion-mnist"))
    train_limit: int | None = field(default=None, metadata=_h("use at most N training images (none = all)", check=">= 1"))
    test_limit: int | None = field(default=None, metadata=_h("analyze at most N test images (none = all)", check=">= 1"))
    n_layers: int = field(default=9, metadata=_h("hidden blocks L (the paper: 9)", check=">= 1"))
    width: int = field(default=128, metadata=_h("width d of every hidden layer", check=">= 1"))
    epochs: float = field(default=12.0, metadata=_h("passes over the training images", check="> 0"))
    batch_size: int = field(default=128, metadata=_h("training batch size", check=">= 1"))
    lr: float = field(default=1e-3, metadata=_h("peak AdamW learning rate (cosine decay, no warmup)", check="> 0"))
    weight_decay: float = field(default=0.01, metadata=_h("AdamW weight decay", check=">= 0"))
    seed: int = field(default=0, metadata=_h("seed of the init and data order (both variants share it)"))


class MLPBlock(nn.Module):
    """One hidden layer ``ReLU(W h + b)``; ``residual`` adds the input back (the skip connection)."""

    def __init__(self, width: int, residual: bool):
        super().__init__()
        self.residual = residual
        self.fc = nn.Linear(width, width)

    def forward(self, h: Tensor) -> Tensor:
        """h: (..., d) -> (..., d)."""
        u = torch.relu(self.fc(h))
        return h + u if self.residual else u


class DeepMLP(nn.Module):
    """Input projection -> L MLP blocks -> final LN -> linear head. Takes ``pixel_values`` (B, C, H, W)."""

    def __init__(self, in_dim: int, num_classes: int, width: int = 128, n_layers: int = 9, residual: bool = True):
        super().__init__()
        self.embed = nn.Linear(in_dim, width)
        self.blocks = nn.ModuleList(MLPBlock(width, residual) for _ in range(n_layers))
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, num_classes)

    def embed_inputs(self, pixel_values: Tensor) -> Tensor:
        """(B, C, H, W) -> layer 0 (B, d)."""
        return self.embed(pixel_values.flatten(1))

    def forward(self, pixel_values: Tensor, labels: Tensor | None = None) -> Any:
        """Logits (B, K) in ``.logits`` (HF-like output)."""
        from types import SimpleNamespace

        h = self.embed_inputs(pixel_values)
        for blk in self.blocks:
            h = blk(h)
        return SimpleNamespace(logits=self.head(self.norm(h)))


def mlp_adapter(model: DeepMLP):
    """The generic adapter of :class:`DeepMLP`: layer 0 = input projection, readout = LN + head."""
    from ..models import GenericAdapter

    return GenericAdapter(model, embed=lambda batch: model.embed_inputs(batch["pixel_values"]),
                          blocks=list(model.blocks), head=model.head, norm=model.norm, token_index=0,
                          model_logits=lambda batch: model(batch["pixel_values"]).logits)


def run_name(cfg: MLPExperimentConfig, residual: bool) -> str:
    """``mnist-mlp-residual`` / ``mnist-mlp-plain`` (``<data>-<model>-<variant>``)."""
    data = DATA_SHORT.get(cfg.data, cfg.data.replace("/", "_"))
    return f"{data}-mlp-{'residual' if residual else 'plain'}"


def _resolved(cfg: MLPExperimentConfig, residual: bool) -> dict:
    d = asdict(cfg)
    d.pop("enabled", None)
    d["residual"] = residual
    d["mode"] = "residual" if residual else "plain"
    return d


STAGE = "mlp"  # the run folder's done-marker (run_folder.stage_done)
OUTPUTS = (run_folder.CONFIG, run_folder.ANALYSIS, run_folder.TRAIN_SUMMARY, f"{run_folder.MODEL_DIR}/model.safetensors")


def is_finished(cfg: MLPExperimentConfig, residual: bool, run_dir: str | Path) -> bool:
    """Whether ``run_dir`` holds this variant's finished run: its files, marked done with the same
    resolved config (:func:`layertrace.run_folder.stage_done`)."""
    return run_folder.stage_done(run_dir, STAGE, _resolved(cfg, residual), OUTPUTS)


def train_mlp(cfg: MLPExperimentConfig, residual: bool, run_dir: str | Path,
              log: Callable[[str], None] = print) -> Path:
    """Train one variant, analyze its test split, write the run folder; reuse a finished one.

    Returns:
        The run folder.
    """
    run_dir = Path(run_dir)
    resolved = _resolved(cfg, residual)
    if is_finished(cfg, residual, run_dir):
        log(f"{run_dir.name}: finished run reused")
        return run_dir
    if cfg.n_layers < 2 or cfg.width < 2:
        raise LayertraceError(f"mlp.n_layers={cfg.n_layers} and mlp.width={cfg.width} must both be >= 2")
    run_dir.mkdir(parents=True, exist_ok=True)
    with run_folder.running_stage(run_dir, STAGE, resolved):  # marked done once every file below is written
        _train(cfg, residual, run_dir, resolved, log)
    return run_dir


def _train(cfg: MLPExperimentConfig, residual: bool, run_dir: Path, resolved: dict,
           log: Callable[[str], None]) -> None:
    """Train, analyze and write the run folder of one variant (what :func:`train_mlp` marks done)."""
    import yaml

    from ..data import load_dataset, make_batches
    from ..io import atomic_path

    t0 = time.perf_counter()
    train = load_dataset(cfg.data, "train", seed=cfg.seed, limit=cfg.train_limit)
    test = load_dataset(cfg.data, "test", seed=cfg.seed, limit=cfg.test_limit)
    mean, std = (0.1307, 0.3081) if "mnist" in cfg.data and "fashion" not in cfg.data else (0.2860, 0.3530)
    in_dim = int(train.images[0].size)

    torch.manual_seed(cfg.seed)
    model = DeepMLP(in_dim, train.num_classes, cfg.width, cfg.n_layers, residual)
    batches = make_batches(train, cfg.batch_size, shuffle=True, seed=cfg.seed, image_mean=mean, image_std=std)
    steps_per_epoch = len(batches)
    total = max(1, math.ceil(cfg.epochs * steps_per_epoch))
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))
    rows = []
    step = 0
    # a few layer-wise evaluations on 256 test samples (the report's validation curve; no RNG drawn)
    from ..training.evaluate import evaluate_layerwise

    eval_batches = list(make_batches(test.subset(np.arange(min(256, len(test)))), 256, shuffle=False,
                                     image_mean=mean, image_std=std))
    eval_every = max(1, total // 4)
    model.train()
    while step < total:
        batches.set_epoch(step // steps_per_epoch)
        for batch in batches:
            if step >= total:
                break
            logits = model(batch["pixel_values"]).logits
            loss = nn.functional.cross_entropy(logits, batch["labels"])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            if step % 10 == 0 or step == total:
                rows.append({"step": step, "loss": float(loss.detach()), "lr": sched.get_last_lr()[0]})
            if step % eval_every == 0 or step == total:
                ev = evaluate_layerwise(mlp_adapter(model), eval_batches).to_dict()
                rows.append({"step": step, "eval": ev, **({"final": True} if step == total else {})})
    train_seconds = time.perf_counter() - t0
    model.eval()

    from safetensors.torch import save_file

    with atomic_path(run_dir / "model" / "model.safetensors") as tmp:
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp))
    with atomic_path(run_dir / run_folder.METRICS) as tmp:
        tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))

    result = _analyze(model, test, mean, std, cfg)
    result.save(run_dir)
    final = next((row["eval"] for row in reversed(rows) if row.get("final")), None)
    run_folder.TrainSummary(
        run_dir=str(run_dir), mode=resolved["mode"], model=f"mlp-{cfg.n_layers}x{cfg.width}", data=cfg.data,
        task="image-classification", steps=total, samples_seen=total * cfg.batch_size, wall_time_s=train_seconds,
        final_eval=final, layers=[], layer_weights=[],  # plain last-layer cross-entropy: no layer in a layer-wise loss
        params={"model": sum(p.numel() for p in model.parameters())}).to_json(run_dir / run_folder.TRAIN_SUMMARY)
    with atomic_path(run_dir / run_folder.CONFIG) as tmp:
        tmp.write_text(yaml.safe_dump(resolved, sort_keys=False))
    log(f"{run_dir.name}: trained {total} steps in {train_seconds:.1f}s, final accuracy "
        f"{float(result.accuracy[-1]):.3f}")


def _analyze(model: DeepMLP, test: Any, mean: float, std: float, cfg: MLPExperimentConfig) -> Any:
    """The standard analysis pass over the test split (every layer, COS and linear CKA)."""
    from ..analysis import analyze
    from ..data import make_batches

    adapter = mlp_adapter(model).eval()
    batches = make_batches(test, 250, shuffle=False, image_mean=mean, image_std=std)
    with torch.no_grad():
        return analyze(adapter, batches)


def run_mlp_pair(cfg: MLPExperimentConfig, out_dir: str | Path, log: Callable[[str], None] = print) -> list[Path]:
    """Both variants (residual, then plain) into ``out_dir/<data>-mlp-{residual,plain}``."""
    out = Path(out_dir)
    return [train_mlp(cfg, residual, out / run_name(cfg, residual), log) for residual in (True, False)]
