"""Training-cost benchmarks of aligned training against standard training.

    .venv/bin/python benchmarks/bench_training.py steps   [--trials 15] [--threads 2]
    .venv/bin/python benchmarks/bench_training.py memory  [--batch 4] [--seq 256] [--vocab 30000] [--naive]
    .venv/bin/python benchmarks/bench_training.py demo    --out DIR [--modes standard aligned multi-head] [--threads 1]
    .venv/bin/python benchmarks/bench_training.py grouping [--trials 15] [--steps-per-trial 2] [--threads 2]

``steps``: wall time of one full optimizer step (forward, backward, AdamW) of the training objective
in ``standard`` and ``aligned`` mode, on the demo ViT (vit-demo, batch 64 Fashion-MNIST images) and on
the bundled MiniLM (minilm-cls, batch 32 Rotten Tomatoes sentences, max 48 tokens). Trials are
interleaved (standard, aligned, aligned, standard, ...) so that load drift on a shared machine hits
both modes alike; we report the medians and the median of the per-trial ratios, of wall time and
of this process's CPU time (``time.process_time``, less disturbed by other processes' load).

``memory``: peak memory of one training step (forward + backward) of a GPT-2-shaped causal LM
(12 layers, d=768, 12 heads) with a 30k vocabulary, standard vs aligned (head applied layer by
layer under activation checkpointing), and optionally the naive aligned loss that stacks all
(L, B, T, V) logits. Each mode runs in a fresh subprocess: peak resident memory (VmHWM) of the step,
and its increase over the resident memory just before the step (after a warm-up step, so the
parameters and AdamW state are already there). ``MALLOC_MMAP_THRESHOLD_`` is fixed so that freed
large tensors return to the system and resident memory follows live tensors.

``grouping``: what ``data.group_by_length`` saves on the MiniLM demo recipe (configs/demo/minilm-rt.yaml:
9,600 Rotten Tomatoes training sentences, batch 32, max 48 tokens). Two batch sources over the same
tensors and seed, without and with length grouping: the padded tokens of a whole epoch (exact counts),
and the wall time of standard-mode optimizer steps on their batches, trials interleaved (trial t takes
batches t*k .. t*k+k-1 of each source's epoch 0, alternating which source goes first).

``demo``: the demo-scale comparison of docs/results-training.md. Trains (or reuses, when the folder
holds the finished run) ``configs/demo/vit-fmnist.yaml`` and ``configs/demo/minilm-rt.yaml`` in each
mode into ``DIR/{vit,rt}-<mode>``, then runs the analysis pass on the test split (the training
evaluation subset: 2,000 images / 1,000 sentences) and prints per-layer accuracy and COS to the
last layer. Multi-head accuracy is read with each layer's own head (from ``train_summary.json``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")


# --------------------------------------------------------------------------- step time
def _vit_setup():
    import torch

    from layertrace.data import load_dataset, make_batches
    from layertrace.models import load_model

    loaded = load_model("vit-demo", seed=0)
    ds = load_dataset("fashion-mnist", "train", limit=64, seed=0)
    pp = loaded.preprocess
    batch = next(iter(make_batches(ds, 64, image_mean=pp["image_mean"], image_std=pp["image_std"])))
    return loaded.adapter, batch


def _minilm_setup():
    from layertrace.data import load_dataset, make_batches
    from layertrace.models import load_model

    loaded = load_model("minilm-cls", seed=0)
    ds = load_dataset("rotten-tomatoes", "train", limit=32, seed=0)
    batch = next(iter(make_batches(ds, 32, tokenizer=loaded.tokenizer, max_length=48)))
    return loaded.adapter, batch


def bench_steps(trials: int, steps_per_trial: int, threads: int) -> dict:
    import torch

    from layertrace.training.losses import weights_for_layers
    from layertrace.training.objective import TrainingObjective

    torch.set_num_threads(threads)
    results = {}
    for name, setup in (("vit-demo (batch 64)", _vit_setup), ("minilm-cls (batch 32 x <=48 tokens)", _minilm_setup)):
        adapter, batch = setup()
        adapter.train()
        layers = list(range(1, adapter.n_layers + 1))
        objectives = {mode: TrainingObjective(adapter, mode, layers, weights_for_layers("linear", adapter.n_layers, layers))
                      for mode in ("standard", "aligned")}
        optimizer = torch.optim.AdamW(adapter.parameters(), lr=1e-5)

        def one_trial(mode: str) -> tuple[float, float]:
            """(wall, CPU) seconds per step; CPU time of this process is less disturbed by other load."""
            start, cpu = time.perf_counter(), time.process_time()
            for _ in range(steps_per_trial):
                objectives[mode](batch, step=2).total.backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            return ((time.perf_counter() - start) / steps_per_trial, (time.process_time() - cpu) / steps_per_trial)

        for mode in objectives:  # warm-up
            one_trial(mode)
        times = {(m, k): [] for m in ("standard", "aligned") for k in ("wall", "cpu")}
        ratios = {"wall": [], "cpu": []}
        for t in range(trials):
            order = ("standard", "aligned") if t % 2 == 0 else ("aligned", "standard")
            got = {mode: one_trial(mode) for mode in order}
            for mode, (wall, cpu) in got.items():
                times[(mode, "wall")].append(wall)
                times[(mode, "cpu")].append(cpu)
            for i, kind in enumerate(("wall", "cpu")):
                ratios[kind].append(got["aligned"][i] / got["standard"][i])
        med = {f"{m}_{k}_s": statistics.median(v) for (m, k), v in times.items()}
        results[name] = {**med, "trials": trials, "steps_per_trial": steps_per_trial, "threads": threads}
        for kind in ("wall", "cpu"):
            rom = med[f"aligned_{kind}_s"] / med[f"standard_{kind}_s"]
            results[name][f"{kind}_ratio_of_medians"] = rom
            results[name][f"{kind}_median_trial_ratio"] = statistics.median(ratios[kind])
            print(f"{name} [{kind}]: standard {med[f'standard_{kind}_s'] * 1e3:.1f} ms, aligned "
                  f"{med[f'aligned_{kind}_s'] * 1e3:.1f} ms, ratio of medians {rom:.3f}, median per-trial ratio "
                  f"{statistics.median(ratios[kind]):.3f}", flush=True)
    return results


# --------------------------------------------------------------------------- length grouping
def bench_grouping(trials: int, steps_per_trial: int, threads: int) -> dict:
    import torch

    from layertrace.config import load_config
    from layertrace.data import load_dataset
    from layertrace.models import load_model
    from layertrace.training.batches import TensorBatches
    from layertrace.training.config import TrainConfig
    from layertrace.training.losses import weights_for_layers
    from layertrace.training.objective import TrainingObjective
    from layertrace.training.run import _classification_tensors

    torch.set_num_threads(threads)
    cfg = load_config(TrainConfig, "configs/demo/minilm-rt.yaml")
    loaded = load_model(cfg.model.spec, seed=0, num_classes=2)
    train = load_dataset(cfg.data.name, cfg.data.train_split, seed=cfg.train.seed, limit=cfg.data.train_limit)
    tensors = _classification_tensors(train, loaded, cfg)
    sources = {grouped: TensorBatches(tensors, cfg.train.batch_size, seed=cfg.train.seed, group_by_length=grouped)
               for grouped in (False, True)}
    batches = {g: list(src.epoch(0)) for g, src in sources.items()}
    tokens = {g: sum(b["input_ids"].numel() for b in epoch) for g, epoch in batches.items()}
    real = int(sum(b["attention_mask"].sum() for b in batches[False]))
    adapter = loaded.adapter
    adapter.train()
    layers = list(range(1, adapter.n_layers + 1))
    objective = TrainingObjective(adapter, "standard", layers, weights_for_layers("linear", adapter.n_layers, layers))
    optimizer = torch.optim.AdamW(adapter.parameters(), lr=1e-5)

    def one_trial(grouped: bool, t: int) -> float:
        start = time.perf_counter()
        for i in range(t * steps_per_trial, (t + 1) * steps_per_trial):
            objective(batches[grouped][i], step=i).total.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        return (time.perf_counter() - start) / steps_per_trial

    one_trial(False, trials)  # warm-up (batches outside the timed ones)
    times = {False: [], True: []}
    for t in range(trials):
        for grouped in ((False, True) if t % 2 == 0 else (True, False)):
            times[grouped].append(one_trial(grouped, t))
    med = {g: statistics.median(v) for g, v in times.items()}
    result = {"threads": threads, "trials": trials, "steps_per_trial": steps_per_trial,
              "epoch_tokens_plain": tokens[False], "epoch_tokens_grouped": tokens[True], "epoch_real_tokens": real,
              "step_s_plain": med[False], "step_s_grouped": med[True], "step_ratio": med[True] / med[False],
              "median_trial_ratio": statistics.median(b / a for a, b in zip(times[False], times[True]))}
    print(f"padded tokens per epoch: plain {tokens[False]:,}, grouped {tokens[True]:,} "
          f"({tokens[True] / tokens[False]:.3f}x; real tokens {real:,}); step: plain {med[False] * 1e3:.0f} ms, "
          f"grouped {med[True] * 1e3:.0f} ms, ratio {result['step_ratio']:.3f}", flush=True)
    return result


# --------------------------------------------------------------------------- LM memory
def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field):
                return int(line.split()[1])
    raise RuntimeError(field)


def memory_child(mode: str, batch: int, seq: int, vocab: int, threads: int) -> dict:
    """One training step of the GPT-2-shaped model in ``mode``; runs in its own process."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from layertrace.models import adapt
    from layertrace.training.losses import aligned_loss, causal_lm_labels, weights_for_layers
    from layertrace.training.objective import TrainingObjective

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_layer=12, n_embd=768, n_head=12, n_positions=max(seq, 256), vocab_size=vocab))
    model.train()
    adapter = adapt(model)
    layers = list(range(1, 13))
    weights = weights_for_layers("linear", 12, layers)
    ids = torch.randint(0, vocab, (batch, seq), generator=torch.Generator().manual_seed(0))
    data = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)

    if mode == "aligned-naive":
        def loss_fn():
            labels = causal_lm_labels(data)
            feats, _ = adapter.layer_features(data, layers)
            logits = torch.stack([adapter.readout(h) for h in feats])  # (L, B, T, V) at once
            return aligned_loss(logits, labels, weights).total
    else:
        objective = TrainingObjective(adapter, mode, layers, weights, lm_checkpoint=True)

        def loss_fn():
            return objective(data, step=2).total

    def step():
        loss = loss_fn()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()  # warm-up: AdamW state exists from here on
    before = _rss_kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as fh:  # reset the peak (VmHWM) to the current RSS
        fh.write("5")
    start = time.perf_counter()
    step()
    seconds = time.perf_counter() - start
    peak = _rss_kib("VmHWM")
    params = sum(p.numel() for p in model.parameters())
    return {"mode": mode, "peak_mib": peak / 1024, "before_step_mib": before / 1024,
            "step_increase_mib": (peak - before) / 1024, "step_s": seconds, "params": params,
            "logits_one_layer_mib": batch * seq * vocab * 4 / 2**20}


def bench_memory(batch: int, seq: int, vocab: int, naive: bool, threads: int) -> dict:
    modes = ["standard", "aligned"] + (["aligned-naive"] if naive else [])
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072", "OMP_NUM_THREADS": str(threads)}
    out = {}
    for mode in modes:
        proc = subprocess.run([sys.executable, __file__, "memory-child", mode, str(batch), str(seq), str(vocab),
                               str(threads)], capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            raise SystemExit(proc.stderr[-2000:])
        out[mode] = json.loads(proc.stdout.strip().splitlines()[-1])
        r = out[mode]
        print(f"{mode:14s} peak {r['peak_mib']:8.0f} MiB  before step {r['before_step_mib']:8.0f} MiB  "
              f"step increase {r['step_increase_mib']:8.0f} MiB  step {r['step_s']:.1f} s", flush=True)
    std = out["standard"]
    for mode in modes[1:]:
        r = out[mode]
        print(f"{mode} / standard: peak {r['peak_mib'] / std['peak_mib']:.3f}x, "
              f"step increase {r['step_increase_mib'] / std['step_increase_mib']:.3f}x", flush=True)
    return out


def demo(out: str, modes: list[str], threads: int, tasks: list[str]) -> dict:
    import torch

    from layertrace import analyze
    from layertrace.config import load_config
    from layertrace.data import load_dataset, make_batches
    from layertrace.models import load_model
    from layertrace.training.config import TrainConfig
    from layertrace.training.run import train_from_config

    torch.set_num_threads(threads)
    here = os.path.dirname(os.path.abspath(__file__))
    recipes = {"vit": os.path.join(here, "..", "configs", "demo", "vit-fmnist.yaml"),
               "rt": os.path.join(here, "..", "configs", "demo", "minilm-rt.yaml")}
    table = {}
    for task in tasks:
        for mode in modes:
            cfg = load_config(TrainConfig, recipes[task], {"train.mode": mode, "train.progress": "false"})
            run_dir = os.path.join(out, f"{task}-{mode}")
            summary = train_from_config(cfg, run_dir)
            loaded = load_model(run_dir)
            ds = load_dataset(cfg.data.name, cfg.data.eval_split, seed=cfg.train.seed, limit=cfg.data.eval_limit)
            pp = loaded.preprocess or {}
            batches = make_batches(ds, 128, tokenizer=loaded.tokenizer, max_length=cfg.data.max_length,
                                   **({"image_mean": pp.get("image_mean"), "image_std": pp.get("image_std")}
                                      if loaded.tokenizer is None else {}))
            result = analyze(loaded.adapter, batches, cka="none", theory=False, per_sample=False)
            acc = list(result.accuracy)
            if mode == "multi-head":  # each layer read by its own head (layer 0 has none)
                heads_acc = dict(zip(summary.final_eval["layers"], summary.final_eval["accuracy"]))
                acc = [heads_acc.get(l, float("nan")) for l in result.layers]
            table[f"{task}-{mode}"] = {"layers": list(result.layers), "accuracy": acc,
                                       "cos_to_last": list(result.cos_to_last), "steps": summary.steps,
                                       "wall_time_s": summary.wall_time_s}
            print(f"| {task}-{mode} | acc | " + " | ".join(f"{a:.3f}" for a in acc) + " |", flush=True)
            print(f"| {task}-{mode} | COS | " + " | ".join(f"{c:.3f}" for c in result.cos_to_last) + " |", flush=True)
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    p_steps = sub.add_parser("steps")
    p_steps.add_argument("--trials", type=int, default=15)
    p_steps.add_argument("--steps-per-trial", type=int, default=3)
    p_steps.add_argument("--threads", type=int, default=2)
    p_mem = sub.add_parser("memory")
    p_mem.add_argument("--batch", type=int, default=4)
    p_mem.add_argument("--seq", type=int, default=256)
    p_mem.add_argument("--vocab", type=int, default=30000)
    p_mem.add_argument("--threads", type=int, default=2)
    p_mem.add_argument("--naive", action="store_true", help="also the naive stacked aligned loss")
    p_demo = sub.add_parser("demo")
    p_demo.add_argument("--out", required=True)
    p_demo.add_argument("--modes", nargs="+", default=["standard", "aligned", "multi-head"])
    p_demo.add_argument("--tasks", nargs="+", default=["vit", "rt"])
    p_demo.add_argument("--threads", type=int, default=1)
    p_group = sub.add_parser("grouping")
    p_group.add_argument("--trials", type=int, default=15)
    p_group.add_argument("--steps-per-trial", type=int, default=2)
    p_group.add_argument("--threads", type=int, default=2)
    p_child = sub.add_parser("memory-child")
    p_child.add_argument("mode")
    p_child.add_argument("batch", type=int)
    p_child.add_argument("seq", type=int)
    p_child.add_argument("vocab", type=int)
    p_child.add_argument("threads", type=int)
    args = parser.parse_args()
    if args.what == "steps":
        print(json.dumps(bench_steps(args.trials, args.steps_per_trial, args.threads), indent=2))
    elif args.what == "grouping":
        print(json.dumps(bench_grouping(args.trials, args.steps_per_trial, args.threads), indent=2))
    elif args.what == "demo":
        print(json.dumps(demo(args.out, args.modes, args.threads, args.tasks), indent=2))
    elif args.what == "memory":
        print(json.dumps(bench_memory(args.batch, args.seq, args.vocab, args.naive, args.threads), indent=2))
    else:
        print(json.dumps(memory_child(args.mode, args.batch, args.seq, args.vocab, args.threads)))


if __name__ == "__main__":
    main()
