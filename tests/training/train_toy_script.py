"""Train the toy model on synthetic data with the real loop; used by tests in subprocesses.

    python tests/training/train_toy_script.py --out DIR [--steps 30] [--mode aligned] [--sleep 0.1] ...
    torchrun --nproc_per_node 2 tests/training/train_toy_script.py --out DIR ...

Writes the final weights to DIR/final.safetensors (main process). The data: 96 sequences whose
label is a function of two tokens, so the loss falls within a few steps.
"""

from __future__ import annotations

import argparse
import time

import torch


def toy_data(n: int = 96, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, 64, (n, 12), generator=g)
    ids[:, 0] = 1
    mask = torch.ones(n, 12, dtype=torch.long)
    lengths = torch.randint(6, 13, (n,), generator=g)
    mask[torch.arange(12)[None] >= lengths[:, None]] = 0
    ids[mask == 0] = 0
    labels = (ids[:, 1] + ids[:, 2]) % 3
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


class SlowBatches:
    """A batch source that sleeps before each batch (so a test can kill the run mid-epoch)."""

    def __init__(self, inner, sleep: float):
        self.inner, self.sleep, self.batch_size = inner, sleep, inner.batch_size

    def __len__(self) -> int:
        return len(self.inner)

    def epoch(self, epoch: int, start: int = 0):
        for batch in self.inner.epoch(epoch, start):
            time.sleep(self.sleep)
            yield batch


def train_toy(out: str, steps: int = 30, mode: str = "aligned", batch: int = 8, accum: int = 1,
              ckpt_every: int = 5, dropout: float = 0.0, sleep: float = 0.0):
    """Build the seeded toy model, train it with :func:`fit`, save ``out/final.safetensors``."""
    from safetensors.torch import save_model

    from layertrace.models import ToyConfig, ToyTransformerClassifier, adapt
    from layertrace.training.batches import TensorBatches
    from layertrace.training.config import TrainSection
    from layertrace.training.loop import fit

    torch.manual_seed(0)
    model = ToyTransformerClassifier(ToyConfig(dropout=dropout))
    adapter = adapt(model).train()
    cfg = TrainSection(mode=mode, steps=steps, batch_size=batch, grad_accum=accum, lr=3e-3,
                       warmup_steps=3, log_every=5, checkpoint_every=ckpt_every, eval_every=10,
                       progress=False, seed=1, device="cpu")
    data = toy_data()
    source = TensorBatches(data, batch // accum, seed=cfg.seed)
    if sleep:
        source = SlowBatches(source, sleep)
    result = fit(adapter, source, cfg, out, eval_batches=[data])
    if result.is_main:
        save_model(model, f"{out}/final.safetensors")
        print(f"[train_toy_script] finished at step {result.state.step}", flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--mode", default="aligned")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--accum", type=int, default=1)
    parser.add_argument("--ckpt-every", type=int, default=5)
    parser.add_argument("--dropout", type=float, default=0.0)
    parser.add_argument("--sleep", type=float, default=0.0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    train_toy(args.out, steps=args.steps, mode=args.mode, batch=args.batch, accum=args.accum,
              ckpt_every=args.ckpt_every, dropout=args.dropout, sleep=args.sleep)


if __name__ == "__main__":
    main()
