"""The demo's early-exit stage on one run folder: its cost in seconds and the measured speed-up per point.

Runs what the demo's exit stage runs (``compare_runs`` over the whole test split, every sweep point
timed with the demo's settings: 64 samples at batch 64, 8 at batch 1, 3 rounds at most, one torch
thread) with whichever ``layertrace`` is on PYTHONPATH, so two checkouts can be compared back to back:

    git archive 5359db2 src | tar -x -C /tmp/old            # the code before issue 15's executor work
    PYTHONPATH=/tmp/old/src .venv/bin/python benchmarks/bench_exit_stage.py RUN_DIR DATA   # before
    PYTHONPATH=src .venv/bin/python benchmarks/bench_exit_stage.py RUN_DIR DATA            # after

Prints the stage's wall and CPU seconds, the timing clock and rounds, and per point the layer
speed-up of the split and of the 64 timed samples, the measured speed-up at batch 64 and batch 1 and
measured / timed layer speed-up.
"""

from __future__ import annotations

import os
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

import layertrace  # noqa: E402
from layertrace.exits import run_early_exit, speedup  # noqa: E402
from layertrace.exits.run import ExitConfig, _load, compare_runs  # noqa: E402


def main() -> None:
    run, data = sys.argv[1], sys.argv[2]
    t0, c0 = time.perf_counter(), time.process_time()
    table = compare_runs([run], data, "confidence", split="test", measure=True, measure_samples=64,
                         measure_samples_batch1=8, repeats=3, threads=1)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    body = next(iter(table["runs"].values()))
    timing = body["timing"]["batch"]
    print(f"{layertrace.__file__}: stage wall {wall:.1f} s, cpu {cpu:.1f} s; clock {timing.get('clock')}, "
          f"rounds {timing.get('repeats')}, timing seconds {timing.get('seconds', '-')}")
    # the layer speed-up of the 64 timed samples, from the executor's own exits (the same in every version)
    loaded = _load(ExitConfig(model=run, data=data, measure=False))
    first = loaded.adapter.model_inputs(loaded.batches[0])
    for p in body["points"]:
        with torch.no_grad():
            exits = run_early_exit(loaded.adapter, first, "confidence", p["threshold"]).exit_layers
        timed = speedup(exits, loaded.adapter.n_layers)
        m64, m1 = p.get("measured_speedup"), p.get("measured_speedup_batch1")
        print(f"  | {p['threshold']:g} | {p['accuracy']:.4f} | {p['speedup']:.2f}x | {timed:.2f}x | {m64:.2f}x | "
              f"**{m64 / timed:.2f}** | {m1:.2f}x |")


if __name__ == "__main__":
    main()
