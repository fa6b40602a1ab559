"""The demo's early-exit stage on one run folder: its cost in seconds and the measured speed-up per point.

Runs what the demo's exit stage runs (``compare_runs`` over the whole test split, every sweep point
timed, 8 samples at batch 1, 3 rounds at most, one torch thread) with the timed samples and the
executor given on the command line, so the demo's settings before and after a change can be compared
back to back:

    .venv/bin/python benchmarks/bench_exit_stage.py RUN_DIR DATA --measure-samples 64 --executor batch   # before
    .venv/bin/python benchmarks/bench_exit_stage.py RUN_DIR DATA --measure-samples 512 --executor stream # after
    .venv/bin/python benchmarks/bench_exit_stage.py RUN_DIR DATA --measure-samples 512 --executor both   # both

Prints the stage's wall and CPU seconds, the timing clock and rounds, and per point the layer speed-up
of the split and of the timed samples (``timed_layer_speedup``), the measured speed-up at batch 64 (of
the stream executor and, with ``both``, of the batch-by-batch one on the same samples), measured /
timed layer speed-up, and the measured speed-up at batch 1.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import layertrace  # noqa: E402
from layertrace.exits.run import compare_runs  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run")
    ap.add_argument("data")
    ap.add_argument("--measure-samples", type=int, default=512)
    ap.add_argument("--executor", default="stream", choices=["stream", "batch", "both"])
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    t0, c0 = time.perf_counter(), time.process_time()
    table = compare_runs([args.run], args.data, "confidence", split="test", measure=True,
                         measure_samples=args.measure_samples, measure_samples_batch1=8, repeats=args.repeats,
                         threads=1, executor=args.executor)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    body = next(iter(table["runs"].values()))
    timing = body["timing"]["batch"]
    print(f"{layertrace.__file__}: stage wall {wall:.1f} s, cpu {cpu:.1f} s; executor {timing['executor']}, "
          f"{timing['n_samples']} samples at batch {timing['batch_size']}, clock {timing['clock']}, rounds "
          f"{timing['repeats']}, timing seconds {timing['seconds']:.1f}"
          + (f" (+ {body['timing']['batch_per_batch']['seconds']:.1f} batch by batch)"
             if "batch_per_batch" in body["timing"] else "") + f", load {os.getloadavg()[0]:.1f}")
    print("| threshold | accuracy | layer speed-up (split) | layer speed-up (timed) | measured b64 | ratio "
          "| batch by batch b64 | ratio | measured b1 |")
    print("|---|---|---|---|---|---|---|---|---|")
    for p in body["points"]:
        timed, m64, m1 = p["timed_layer_speedup"], p["measured_speedup"], p["measured_speedup_batch1"]
        per_batch = p.get("measured_speedup_per_batch")
        pb = "-" if per_batch is None else f"{per_batch:.2f}x | {per_batch / timed:.2f}"
        print(f"| {p['threshold']:g} | {p['accuracy']:.4f} | {p['speedup']:.2f}x | {timed:.2f}x | {m64:.2f}x | "
              f"**{m64 / timed:.2f}** | {pb if per_batch is not None else '- | -'} | {m1:.2f}x |")


if __name__ == "__main__":
    main()
