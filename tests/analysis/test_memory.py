"""Streaming mode keeps memory flat in the number of samples (tracemalloc counts numpy / Python memory)."""

from __future__ import annotations

import gc
import tracemalloc

import pytest
import torch

from layertrace.analysis import analyze
from layertrace.models import ToyAdapter, ToyConfig, ToyTransformerClassifier

from .helpers import toy_batches

pytestmark = pytest.mark.filterwarnings("ignore::layertrace.metrics.DegenerateLayerWarning")


def traced_peak(adapter, batches, **options) -> int:
    gc.collect()
    tracemalloc.start()
    try:
        analyze(adapter, batches, **options)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_peak_memory_per_sample_disk_vs_ram(tmp_path):
    torch.manual_seed(0)
    adapter = ToyAdapter(ToyTransformerClassifier(ToyConfig(hidden_size=128)).eval())
    small, large = toy_batches(n_batches=8, batch_size=16), toy_batches(n_batches=40, batch_size=16)
    extra = (40 - 8) * 16
    row_bytes = 5 * 128 * 4  # one cached sample: S = 5 layers x d = 128 float32
    # chunks of at most 64 rows: both sizes exceed one chunk, so the working set after the pass is equal
    opts = dict(per_sample=False, cache_dir=str(tmp_path), chunk_rows=64)
    ram = (traced_peak(adapter, large, cache="ram", **opts) - traced_peak(adapter, small, cache="ram", **opts)) / extra
    disk = (traced_peak(adapter, large, cache="disk", **opts) - traced_peak(adapter, small, cache="disk", **opts)) / extra
    # the RAM cache holds every sample (plus a concatenated copy at the end); the disk cache none of them.
    # What remains per sample is the bookkeeping behind exact quantiles and Theorem 2.2 (COS to last,
    # true-class probability, trajectory statistics: a few hundred bytes), independent of d.
    assert ram > row_bytes
    assert disk < 0.2 * row_bytes, (disk, ram)
    print(f"bytes per extra sample: ram {ram:.0f}, disk {disk:.0f}")
