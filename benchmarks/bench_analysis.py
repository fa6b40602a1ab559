"""Benchmark of the analysis pass on the bundled MiniLM over Rotten Tomatoes sentences.

Two measurements (results: benchmarks/results/analysis.md):

1. Time. ``analyze(adapter, batches)`` with the default options (mean-centred COS from the RAM
   feature cache, exact linear CKA, readout of every layer, saturation, theory checks, per-sample
   arrays) against a plain ``model(**inputs, output_hidden_states=True)`` over the same
   pre-tokenised batches. Both run under ``torch.no_grad()``; the runs are interleaved (the order
   alternates every repetition) and the medians are compared, because the machine is shared.

2. Memory. Peak resident memory of one process per dataset size, each a fresh subprocess that
   loads the model, then analyses ``n`` sentences fed lazily by ``make_batches`` in streaming mode
   (``cache="disk"``: features go to a temporary file, statistics are read back chunk by chunk).
   ``cache="ram"`` is measured too, to show what the disk cache saves, and ``plain`` (a forward
   with ``output_hidden_states`` over the same lazily made batches) as the reference: the CPU
   allocator's own growth with the number of distinct batch shapes shows up there too.

    .venv/bin/python benchmarks/bench_analysis.py --n 2000 --reps 3
    .venv/bin/python benchmarks/bench_analysis.py --memory --sizes 500 1000 2000 4000
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
import warnings

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def load(n: int, batch_size: int, max_length: int, split: str):
    from layertrace.data import load_dataset, make_batches
    from layertrace.models.loading import load_model

    loaded = load_model("minilm-cls", num_classes=2, seed=0)
    ds = load_dataset("rotten-tomatoes", split, limit=n, seed=0)
    batches = make_batches(ds, batch_size, tokenizer=loaded.tokenizer, max_length=max_length)
    return loaded, ds, batches


def bench_time(args) -> dict:
    import torch

    from layertrace.analysis import analyze

    torch.set_num_threads(args.threads)
    loaded, ds, lazy = load(args.n, args.batch_size, args.max_length, args.split)
    batches = list(lazy)  # tokenise once: both contenders get the same tensors
    model, adapter = loaded.model.eval(), loaded.adapter

    def plain() -> None:
        with torch.no_grad():
            for b in batches:
                model(**{k: v for k, v in b.items() if k != "labels"}, output_hidden_states=True)

    def full() -> None:
        full.last = analyze(adapter, batches)  # type: ignore[attr-defined]

    def timed(fn) -> tuple[float, float]:
        """(wall seconds, CPU seconds of this process) of one run."""
        w, c = time.perf_counter(), time.process_time()
        fn()
        return time.perf_counter() - w, time.process_time() - c

    warnings.simplefilter("ignore")
    plain_s, full_s, plain_cpu, full_cpu = [], [], [], []
    with torch.no_grad():  # warm-up on two batches
        for b in batches[:2]:
            model(**{k: v for k, v in b.items() if k != "labels"}, output_hidden_states=True)
    for rep in range(args.reps):
        order = (plain, full) if rep % 2 == 0 else (full, plain)
        for fn in order:
            wall, cpu = timed(fn)
            (plain_s if fn is plain else full_s).append(wall)
            (plain_cpu if fn is plain else full_cpu).append(cpu)
        print(f"rep {rep}: plain {plain_s[-1]:.2f} s (cpu {plain_cpu[-1]:.2f}), analysis {full_s[-1]:.2f} s "
              f"(cpu {full_cpu[-1]:.2f}), wall ratio {full_s[-1] / plain_s[-1]:.3f}", flush=True)
    result = full.last  # type: ignore[attr-defined]
    out = {
        "n_sentences": len(ds), "batch_size": args.batch_size, "max_length": args.max_length,
        "threads": torch.get_num_threads(), "reps": args.reps,
        "plain_forward_s": plain_s, "analysis_s": full_s,
        "plain_median_s": statistics.median(plain_s), "analysis_median_s": statistics.median(full_s),
        "ratio_of_medians": statistics.median(full_s) / statistics.median(plain_s),
        "paired_ratios": [f / p for f, p in zip(full_s, plain_s)],
        "plain_cpu_s": plain_cpu, "analysis_cpu_s": full_cpu,
        "cpu_ratio_of_medians": statistics.median(full_cpu) / statistics.median(plain_cpu),
        "analysis_timing_last_run": result.timing,
        "cka_estimator": result.cka_estimator, "cache_used": result.config["cache_used"],
        "accuracy": result.accuracy.tolist(), "cos_to_last": result.cos_to_last.tolist(),
    }
    return out


def memory_child(n: int, mode: str, args) -> dict:
    """Runs in a fresh process: peak RSS after loading, and after the analysis of n sentences."""
    import torch

    from layertrace.analysis import analyze

    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")
    loaded, ds, batches = load(n, args.batch_size, args.max_length, args.split)
    with torch.no_grad():  # one batch first, so the baseline includes the forward's working memory
        first = next(iter(batches))
        loaded.model(**{k: v for k, v in first.items() if k != "labels"}, output_hidden_states=True)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t0 = time.perf_counter()
    spilled = None
    if mode == "plain":  # the reference: a plain forward with output_hidden_states over the same batches
        with torch.no_grad():
            for b in batches:
                loaded.model(**{k: v for k, v in b.items() if k != "labels"}, output_hidden_states=True)
    else:
        spilled = analyze(loaded.adapter, batches, cache=mode).config["cache_spilled_to_disk"]
    return {"n": len(ds), "cache": mode, "peak_rss_mib_before": before,
            "peak_rss_mib_after": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "spilled_to_disk": spilled, "seconds": time.perf_counter() - t0}


def bench_memory(args) -> list[dict]:
    rows = []
    for mode in args.modes:
        for n in args.sizes:
            cmd = [sys.executable, __file__, "--memory-child", str(n), mode, "--threads", str(args.threads),
                   "--split", args.split, "--batch-size", str(args.batch_size), "--max-length", str(args.max_length)]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True)
            row = json.loads(out.stdout.strip().splitlines()[-1])
            print(row, flush=True)
            rows.append(row)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=2000)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument("--split", default="train", help="the test split has ~1,300 sentences; train has 10k")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--memory", action="store_true")
    p.add_argument("--sizes", type=int, nargs="+", default=[500, 1000, 2000, 4000])
    p.add_argument("--modes", nargs="+", default=["disk", "ram"])
    p.add_argument("--memory-child", nargs=2, metavar=("N", "MODE"))
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args()
    if args.memory_child:
        print(json.dumps(memory_child(int(args.memory_child[0]), args.memory_child[1], args)))
        return
    out = {"memory": bench_memory(args)} if args.memory else {"time": bench_time(args)}
    print(json.dumps(out, indent=2))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=2)


if __name__ == "__main__":
    main()
