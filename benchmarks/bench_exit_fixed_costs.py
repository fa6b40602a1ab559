"""Stream executor against the model's own forward on one trained run's first test batches: measured
speed-up / layer speed-up for its own readout (per-layer heads where the run has them) and the shared
head, at one threshold and with nothing exiting, plus a cProfile of the stream call.

    .venv/bin/python benchmarks/bench_exit_fixed_costs.py RUN_DIR/exit-config.yaml --threshold 0.5

CPU time (the executor timing's ``cpu`` clock), one torch thread, ``--repeats`` interleaved rounds of
full forward then stream call, speed-up = the median of the per-round ratios; 8 batches (the demo's
stream window).
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import statistics

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from layertrace.config import load_config  # noqa: E402
from layertrace.exits.config import ExitConfig  # noqa: E402
from layertrace.exits.executor import run_early_exit_stream  # noqa: E402
from layertrace.exits.run import _load  # noqa: E402
from layertrace.exits.timing import CLOCKS, _timed  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("config", help="a run's exit-config.yaml")
    ap.add_argument("--threshold", type=float, default=0.5)
    ap.add_argument("--batches", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    torch.set_num_threads(1)
    loaded = _load(load_config(ExitConfig, args.config))
    adapter = loaded.adapter
    batches = [{k: v for k, v in b.items() if k != "labels"} for b in loaded.batches[:args.batches]]
    readouts = [("own", loaded.readout)] + ([("shared", None)] if loaded.readout is not None else [])
    with torch.no_grad():
        for name, readout in readouts:
            for threshold in (args.threshold, 2.0):  # 2.0: nobody exits (the fixed-depth path)
                result = run_early_exit_stream(adapter, batches, "confidence", threshold, readout)
                layer_speedup = adapter.n_layers / result.exit_layers.float().mean().item()
                device = result.logits.device
                rounds = [(_timed(lambda: [adapter.model(**b) for b in batches], device, CLOCKS["cpu"]),
                           _timed(lambda: run_early_exit_stream(adapter, batches, "confidence", threshold, readout),
                                  device, CLOCKS["cpu"]))
                          for _ in range(args.repeats)]
                measured = statistics.median(full / stream for full, stream in rounds)
                print(f"readout {name}, threshold {threshold:g}: layer speed-up {layer_speedup:.2f}x, full "
                      f"{statistics.median(r[0] for r in rounds):.4f} s, stream "
                      f"{statistics.median(r[1] for r in rounds):.4f} s, measured {measured:.2f}x, ratio "
                      f"{measured / layer_speedup:.2f}")
        profile = cProfile.Profile()
        profile.enable()
        for _ in range(5):
            run_early_exit_stream(adapter, batches, "confidence", args.threshold, loaded.readout)
        profile.disable()
    pstats.Stats(profile).sort_stats("tottime").print_stats(12)


if __name__ == "__main__":
    main()
