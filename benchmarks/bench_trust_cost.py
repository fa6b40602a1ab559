"""Added analysis time of the demo's calibration and layer-removal settings, on the demo's model shapes.

For the demo ViT (fashion-mnist, 1,024 test images) and MiniLM (rotten-tomatoes, 512 test sentences)
presets, ``analyze_from_config`` runs twice, batch 128 like the demo: without the options and with
the demo's (``null_permutations=49``, ``null_max_samples=300``, ``layer_removal=True`` on about
512 images / 128 sentences). Prints wall and process CPU seconds of both, and the pass's own
``timing.layer_removal_s`` / ``timing.calibration_s``. (Untrained presets: the cost is the same as
for the trained demo models of that shape.)

    .venv/bin/python benchmarks/bench_trust_cost.py
"""

from __future__ import annotations

import time
import warnings

from layertrace.analysis import analyze_from_config
from layertrace.analysis.config import AnalyzeConfig

CASES = (("vit-demo", "fashion-mnist", 1024, 512), ("minilm-cls", "rotten-tomatoes", 512, 128))


def main() -> None:
    warnings.simplefilter("ignore")
    print("| model | options | samples | wall s | CPU s | timing.layer_removal_s | timing.calibration_s | removal samples |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for model, data, limit, cap in CASES:
        for extra in ({}, {"null_permutations": 49, "null_max_samples": 300, "layer_removal": True,
                           "layer_removal_samples": cap}):
            cfg = AnalyzeConfig(model=model, data=data, split="test", limit=limit, batch_size=128, progress=False,
                                **extra)
            cpu, wall = time.process_time(), time.perf_counter()
            r = analyze_from_config(cfg, write=False)
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            print(f"| {model} | {'demo calibration + removal' if extra else 'none'} | {r.n_samples} | {wall:.1f} | "
                  f"{cpu:.1f} | {r.timing['layer_removal_s']:.2f} | {r.timing['calibration_s']:.2f} | "
                  f"{(r.layer_removal or {}).get('n_predictions', '–')} |", flush=True)


if __name__ == "__main__":
    main()
