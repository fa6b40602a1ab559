"""Benchmark of the runtime early-exit executor: measured wall-clock speed-up vs layer-count speed-up.

The question (issue 7): does dropping finished samples at every layer turn the paper's layer-count
speed-up ``L N / sum(exit layers)`` into wall-clock time, or does executor overhead (a readout and a
policy check at every layer, slicing the batch) eat it? Criterion: measured >= 0.85x the layer
speed-up at batch 64 and >= 0.8x at batch 1.

Per model (``vit-demo`` on Fashion-MNIST, ``minilm-cls`` on Rotten Tomatoes):

1. a few aligned-training steps (shared head, linear layer weights) so confidences grow with depth
   and a confidence threshold spreads exits over the layers (random init puts every exit at layer 1
   or L); what is measured is executor overhead, not accuracy;
2. thresholds chosen on the timed test samples to give a range of layer speed-ups;
3. ``measure_speedups``: the full model (the faster of the model's own forward and the adapter's
   block-by-block forward) and the executor at every threshold run on the same batch back to back,
   interleaved batch by batch, ``--repeats`` times; speed-up = median(full) / median(executor);
4. the layer-count speed-up of exactly the samples timed, from the executor's own exit layers.

    .venv/bin/python benchmarks/bench_exits.py                       # both models, writes the results file
    .venv/bin/python benchmarks/bench_exits.py --models vit-demo --repeats 5 --no-write
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import torch  # noqa: E402

# vit-demo (random init): a few aligned steps of the whole model. minilm-cls (pretrained encoder, fresh
# head): the shared head (pooler + classifier) trained with the aligned loss on cached per-layer [CLS]
# features of the training sentences, encoder frozen (full fine-tuning costs ~1 s a step on 2 cores).
TRACKS = {
    "vit-demo": {"data": "fashion-mnist", "lr": 1e-3, "train_batch": 64, "train": "full", "train_limit": 4000},
    "minilm-cls": {"data": "rotten-tomatoes", "lr": 1e-3, "train_batch": 32, "train": "head", "train_limit": 1024},
}
TARGETS = (1.25, 1.5, 2.0, 2.5)


def load_track(name: str, n_timed: int, n_single: int, max_length: int):
    from layertrace.data import load_dataset, make_batches
    from layertrace.models import load_model

    spec = TRACKS[name]
    test = load_dataset(spec["data"], "test", seed=0)
    loaded = load_model(name, num_classes=test.num_classes, seed=0)
    pre = loaded.preprocess or {}
    if hasattr(test, "texts"):
        kwargs = {"tokenizer": loaded.tokenizer, "max_length": max_length}
    else:
        kwargs = {"image_mean": pre.get("image_mean"), "image_std": pre.get("image_std")}
    train = load_dataset(spec["data"], "train", seed=0, limit=spec["train_limit"])
    train_batches = make_batches(train, spec["train_batch"], shuffle=True, seed=0, **kwargs)
    timed = test.subset(np.arange(n_timed))
    batches64 = list(make_batches(timed, 64, **kwargs))
    batches1 = list(make_batches(test.subset(np.arange(n_single)), 1, **kwargs))
    return loaded, train_batches, batches64, batches1


def quick_aligned_training(adapter, batches, steps: int, lr: float) -> float:
    """A few steps of the aligned loss (PAPER.md section 5) through the shared head; returns seconds."""
    from layertrace.training import aligned_loss, layer_weights

    weights = layer_weights("linear", adapter.n_layers)
    opt = torch.optim.AdamW(adapter.parameters(), lr=lr)
    adapter.train()
    start = time.perf_counter()
    done = 0
    while done < steps:
        for batch in batches:
            trace = adapter.trace(batch, layers="1:")
            loss = aligned_loss(trace.logits, batch["labels"], weights).total
            opt.zero_grad()
            loss.backward()
            opt.step()
            done += 1
            if done >= steps:
                break
    adapter.eval()
    return time.perf_counter() - start


def quick_head_training(adapter, batches, steps: int, lr: float) -> float:
    """The aligned loss on the shared head only, over cached per-layer features (encoder frozen)."""
    from layertrace.training import aligned_loss, layer_weights

    start = time.perf_counter()
    feats, labels = [], []
    with torch.no_grad():
        for batch in batches:
            feats.append(adapter.trace(batch, layers="1:", with_logits=False).features)
            labels.append(batch["labels"])
    feats = torch.cat(feats, dim=1)  # (L, N, d)
    labels = torch.cat(labels)
    weights = layer_weights("linear", adapter.n_layers)
    opt = torch.optim.AdamW(adapter.head.parameters(), lr=lr)
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        idx = torch.randint(0, labels.shape[0], (64,), generator=g)
        logits = adapter.readout(feats[:, idx])  # (L, 64, K)
        loss = aligned_loss(logits, labels[idx], weights).total
        opt.zero_grad()
        loss.backward()
        opt.step()
    adapter.eval()
    return time.perf_counter() - start


def pick_thresholds(logits: torch.Tensor, targets=TARGETS) -> list[float]:
    """Confidence thresholds whose simulated layer speed-up on these samples is nearest each target."""
    from layertrace.exits import simulate_exits, speedup

    n_layers = logits.shape[0]
    conf = logits.softmax(-1).amax(-1)[:-1].flatten()
    candidates = sorted({round(float(q), 4) for q in torch.quantile(conf, torch.linspace(0.02, 0.98, 97))})
    exits, _ = simulate_exits(logits, "confidence", candidates)
    speeds = [speedup(e, n_layers) for e in exits]
    chosen = []
    for t in targets:
        i = min(range(len(candidates)), key=lambda j: abs(speeds[j] - t))
        if candidates[i] not in chosen:
            chosen.append(candidates[i])
    return sorted(chosen, reverse=True)


def run_track(name: str, args) -> list[dict]:
    from layertrace.exits import exit_histogram, layer_logits, speedup
    from layertrace.exits.timing import measure_speedups

    loaded, train_batches, batches64, batches1 = load_track(name, args.n_timed, args.n_single, args.max_length)
    adapter = loaded.adapter
    spec = TRACKS[name]
    if spec["train"] == "full":
        train_s = quick_aligned_training(adapter, train_batches, args.train_steps, spec["lr"])
    else:
        train_s = quick_head_training(adapter, train_batches, 10 * args.train_steps, spec["lr"])
    logits, labels = layer_logits(adapter, batches64)
    thresholds = pick_thresholds(logits)
    print(f"{name}: {adapter.n_layers} layers, quick aligned training ({spec['train']}) in {train_s:.0f} s, "
          f"layer accuracy {[round(float(a), 3) for a in (logits.argmax(-1) == labels).double().mean(1)]}, "
          f"thresholds {thresholds}", flush=True)
    rows = []
    for clock in args.clock.split(","):
        m64 = measure_speedups(adapter, batches64, "confidence", thresholds, repeats=args.repeats,
                               return_results=True, clock=clock)
        m1 = measure_speedups(adapter, batches1, "confidence", thresholds, repeats=args.repeats,
                              return_results=True, clock=clock)
        for i, thr in enumerate(thresholds):
            e64 = m64.results[i].exit_layers
            e1 = m1.results[i].exit_layers
            row = {
                "model": name, "clock": clock, "threshold": thr, "n_layers": adapter.n_layers,
                "exit_hist_64": exit_histogram(e64, adapter.n_layers).tolist(),
                "layer_speedup_64": speedup(e64, adapter.n_layers), "measured_64": m64.speedups[i],
                "layer_speedup_1": speedup(e1, adapter.n_layers), "measured_1": m1.speedups[i],
                "baseline_64": m64.baseline, "baseline_1": m1.baseline,
                "full_ms_64": {k: 1e3 * statistics.median(v) / len(batches64) for k, v in m64.full_seconds.items()},
                "full_ms_1": {k: 1e3 * statistics.median(v) / len(batches1) for k, v in m1.full_seconds.items()},
            }
            row["ratio_64"] = row["measured_64"] / row["layer_speedup_64"]
            row["ratio_1"] = row["measured_1"] / row["layer_speedup_1"]
            rows.append(row)
            print(f"  [{clock}] t={thr:<7} hist(b64)={row['exit_hist_64']}  b64: layers {row['layer_speedup_64']:.2f}x "
                  f"measured {row['measured_64']:.2f}x ratio {row['ratio_64']:.2f}  |  b1: layers "
                  f"{row['layer_speedup_1']:.2f}x measured {row['measured_1']:.2f}x ratio {row['ratio_1']:.2f}",
                  flush=True)
    return rows


def markdown(rows: list[dict], args, command: str, wall_s: float) -> str:
    date = datetime.date.today().isoformat()
    lines = [
        "# Early exit: measured wall-clock speed-up of the runtime executor",
        "",
        f"Command: `{command}`  ",
        f"Machine: 2-core CPU, no GPU ({platform.processor() or platform.machine()}), torch {torch.__version__}, "
        f"{args.threads} torch thread(s), shared with other jobs (load average {os.getloadavg()[0]:.1f} at the end), "
        "interleaved medians.  ",
        f"Date: {date}. Total benchmark time {wall_s:.0f} s.",
        "",
        "Policy: confidence (the paper's rule). Quick aligned training makes confidence vary by sample and layer",
        f"(vit-demo: {args.train_steps} steps of the whole random-init model on 4,000 Fashion-MNIST images; minilm-cls:",
        f"{10 * args.train_steps} steps of the shared head on cached per-layer features of 1,024 Rotten Tomatoes sentences, ",
        "encoder frozen); thresholds are chosen on the timed samples for a range of layer speed-ups. Full model =",
        "the faster of the model's own forward and the adapter's block-by-block forward (`baseline` column).",
        f"Batch 64: the first {args.n_timed} test samples in batches of 64; batch 1: the first {args.n_single} "
        f"samples one at a time; {args.repeats} interleaved repeats, medians. Layer speed-up = L N / sum(exit",
        "layers) of exactly the samples timed (the executor's own exits). Criterion: ratio >= 0.85 (b64), >= 0.8 (b1).",
        "Clock `wall` = `time.perf_counter` (the criterion); `cpu` = this thread's CPU time (`time.thread_time`), which",
        "does not count time the process waits for a core while other jobs run (one torch thread, so it is the",
        "compute time of the same work).",
    ]
    for clock in dict.fromkeys(r["clock"] for r in rows):
        lines += [""] + table_lines([r for r in rows if r["clock"] == clock], clock)
    lines += ["", "Full-model time per batch (median, ms): " + "; ".join(
        f"{r['model']} ({r['clock']}) b64 {', '.join(f'{k} {v:.1f}' for k, v in r['full_ms_64'].items())}, b1 "
        f"{', '.join(f'{k} {v:.2f}' for k, v in r['full_ms_1'].items())}"
        for r in {(r['model'], r['clock']): r for r in rows}.values()), ""]
    return "\n".join(lines)


def table_lines(rows: list[dict], clock: str) -> list[str]:
    lines = [
        f"Clock: **{clock}**",
        "",
        "| model | threshold | exit histogram (b64 samples, layers 1..L) | layers b64 | measured b64 | ratio b64 "
        "| layers b1 | measured b1 | ratio b1 | baseline b64 / b1 |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ok64 = "" if r["ratio_64"] >= 0.85 else " (below)"
        ok1 = "" if r["ratio_1"] >= 0.8 else " (below)"
        lines.append(
            f"| {r['model']} | {r['threshold']} | {r['exit_hist_64']} | {r['layer_speedup_64']:.2f}x | "
            f"{r['measured_64']:.2f}x | **{r['ratio_64']:.2f}**{ok64} | {r['layer_speedup_1']:.2f}x | "
            f"{r['measured_1']:.2f}x | **{r['ratio_1']:.2f}**{ok1} | {r['baseline_64']} / {r['baseline_1']} |")
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="vit-demo,minilm-cls")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1: stable on a shared box)")
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--n-timed", type=int, default=512)
    parser.add_argument("--n-single", type=int, default=64)
    parser.add_argument("--train-steps", type=int, default=60)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--out", default="benchmarks/results/exits.md")
    parser.add_argument("--clock", default="wall,cpu",
                        help="comma list of wall (perf_counter, the criterion) and cpu (this thread's CPU time)")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    start = time.perf_counter()
    rows = []
    for name in args.models.split(","):
        rows += run_track(name.strip(), args)
    command = "python benchmarks/bench_exits.py " + " ".join(sys.argv[1:] if argv is None else argv)
    text = markdown(rows, args, command.strip(), time.perf_counter() - start)
    print(text)
    if not args.no_write:
        with open(args.out, "w") as fh:
            fh.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
