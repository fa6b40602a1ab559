"""The demo's stages and progress display: :class:`Stage`, :class:`Progress` and the initial time
estimates (:data:`DEFAULT_RATES`)."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import Any, Callable

# Initial time estimates, in seconds per unit of work (a training step, 1,000 test samples, ...) on an idle
# 2-core CPU. Stages the previous recipe had: its rates measured end to end on 2026-12-02 (demo_timings.json,
# BENCHMARKS.md), the ViT step scaled by the measured 0.70x step cost of the 12 x 64 ViT against the 6 x 128
# one (interleaved, one thread). New stages (re-readings, probes) and the MiniLM sweep at 32 timed samples:
# the loaded run of 2026-12-02 (docs/results-training.md) divided by 3.3, that run's slowdown on the stages
# both runs share. The display rescales them by how fast the finished stages really ran, and a later run
# in the same folder starts from the rates it measured itself (demo_timings.json).
DEFAULT_RATES = {
    "train:fmnist-vit": 0.086,     # per optimizer step (demo ViT 12 x 64, batch 64), start-up and final eval included
    "train:rt-minilm": 0.72,       # per optimizer step (MiniLM-L6, batch 32, <= 48 tokens, grouped by length)
    "train:mlp": 3.0,              # per 12 epochs over 4,000 images
    "analyze:fmnist-vit": 0.72,    # per 1,000 test samples
    "analyze:rt-minilm": 13.8,
    "exit:fmnist-vit": 0.68,       # per (1 + 1,000 test samples): loading and timing, then the sweep
    "exit:rt-minilm": 8.2,
    "variant:fmnist-vit": 0.55,    # per 1,000 re-analysed samples (no null, no layer removal)
    "variant:rt-minilm": 9.2,
    "probe:fmnist-vit": 2.0,       # per 1,000 probe samples (train + test)
    "probe:rt-minilm": 8.8,
    "lm": 480.0,                   # the LM track's quick preset, whole
    "report": 18.0,
}
DEFAULT_RATE = 30.0


@dataclass
class Stage:
    """One unit of demo work: ``run()`` does it; ``done()`` says it can be skipped."""

    key: str             # rate key, e.g. "train:fmnist-vit"
    label: str           # shown in the progress display
    run: Callable[[], Any]
    done: Callable[[], bool] = lambda: False
    units: float = 1.0   # amount of work in the rate's unit (training steps, thousands of samples, ...)


def _fmt_s(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    m, s = divmod(seconds, 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


class Progress:
    """Stage-by-stage progress with an estimate of the time left.

    Estimates are ``rates[stage.key] * stage.units`` seconds, rescaled by how the finished stages
    compared with their estimates, so the "left" figure tracks this machine's speed.
    """

    def __init__(self, stages: list[Stage], rates: dict[str, float], stream=None):
        self.stages = stages
        self.rates = rates
        self.stream = stream or sys.stderr
        self.measured: dict[str, float] = {}
        self.t0 = time.perf_counter()
        self.spent_est = 0.0
        self.spent_real = 0.0

    def _estimate(self, stage: Stage) -> float:
        """Seconds the stage should take at the reference rates (before rescaling)."""
        rate = self.rates.get(stage.key, self.rates.get(stage.key.split(":")[0], DEFAULT_RATE))
        return float(rate) * stage.units

    def _scale(self) -> float:
        if self.spent_est <= 0:
            return 1.0
        return min(3.0, max(0.33, self.spent_real / self.spent_est))

    def left(self, from_index: int) -> float:
        return self._scale() * sum(self._estimate(s) for s in self.stages[from_index:] if not s.done())

    def say(self, text: str) -> None:
        print(f"[demo {_fmt_s(time.perf_counter() - self.t0)}] {text}", file=self.stream, flush=True)

    def run_all(self) -> dict[str, float]:
        n = len(self.stages)
        self.say(f"{n} stages; estimated total {_fmt_s(self.left(0))} (finished stages are reused)")
        for i, stage in enumerate(self.stages):
            if stage.done():
                self.say(f"stage {i + 1}/{n}: {stage.label}: already done, reused")
                continue
            est = self._scale() * self._estimate(stage)
            self.say(f"stage {i + 1}/{n}: {stage.label} (estimate {_fmt_s(est)}; about {_fmt_s(self.left(i))} left)")
            t = time.perf_counter()
            stage.run()
            took = time.perf_counter() - t
            self.measured[stage.label] = took
            self.spent_est += self._estimate(stage)
            self.spent_real += took
            self.say(f"stage {i + 1}/{n}: {stage.label}: done in {_fmt_s(took)}; about {_fmt_s(self.left(i + 1))} left")
        return self.measured
