"""The demo's early-exit stage on one run folder, old protocol vs new: seconds and measured speed-ups.

Old (before issue 15): the sweep simulated, wall-clock timed at the operating point only (256 samples
at batch 64, 32 at batch 1, 3 repeats, all torch threads). New (the demo now): every sweep point timed
(64 samples at batch 64, 8 at batch 1, 3 repeats, one torch thread). Prints the stage's wall and CPU
seconds and measured / layer speed-up per point.

    HF_HUB_OFFLINE=1 PYTHONPATH=src .venv/bin/python benchmarks/bench_exit_stage.py RUN_DIR before
    HF_HUB_OFFLINE=1 PYTHONPATH=src .venv/bin/python benchmarks/bench_exit_stage.py RUN_DIR after
"""

from __future__ import annotations

import sys
import time

from layertrace.exits.run import compare_runs, select_point


def main() -> None:
    run, which = sys.argv[1], sys.argv[2]
    t0, c0 = time.perf_counter(), time.process_time()
    if which == "before":
        table = compare_runs([run], "fashion-mnist", "confidence", target={"max_accuracy_drop": 0.01}, split="test",
                             measure=True, measure_samples=256, measure_samples_batch1=32, repeats=3)
    else:
        table = compare_runs([run], "fashion-mnist", "confidence", split="test", measure=True, measure_samples=64,
                             measure_samples_batch1=8, repeats=3, threads=1)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    body = next(iter(table["runs"].values()))
    rows = table["rows"]
    op = rows[select_point(rows, rows[0]["full_accuracy"], {"max_accuracy_drop": 0.01})]
    print(f"{which}: stage wall {wall:.1f} s, cpu {cpu:.1f} s; operating point threshold {op['threshold']}, "
          f"layer speed-up {op['speedup']:.2f}x, measured {op['measured_speedup_batch64']}")
    for p in body["points"]:
        print(f"  threshold {p['threshold']:.3g} accuracy {p['accuracy']:.4f} layer {p['speedup']:.2f}x "
              f"measured b64 {p.get('measured_speedup')} b1 {p.get('measured_speedup_batch1')}")


if __name__ == "__main__":
    main()
