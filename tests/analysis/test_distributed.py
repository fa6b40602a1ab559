"""Two CPU processes (torchrun, gloo) give the one-process result."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

HERE = Path(__file__).parent


def assert_same(a, b, where):
    """Nested dicts / lists / numbers equal up to float64 summation order (NaN == NaN)."""
    if isinstance(b, dict):
        assert isinstance(a, dict) and set(a) == set(b), where
        for k in b:
            assert_same(a[k], b[k], f"{where}.{k}")
    elif isinstance(b, (list, tuple, np.ndarray)):
        np.testing.assert_allclose(np.asarray(a, dtype=float), np.asarray(b, dtype=float), rtol=1e-10,
                                   atol=1e-12, err_msg=where)
    elif isinstance(b, float):
        assert a == pytest.approx(b, rel=1e-10, abs=1e-12, nan_ok=True), where
    else:
        assert a == b, where


def test_two_processes_equal_one_process(tmp_path):
    out = tmp_path / "results.pkl"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(HERE / "dist_worker.py"), str(out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    two = pickle.loads(out.read_bytes())

    sys.path.insert(0, str(HERE))
    try:
        import dist_worker
    finally:
        sys.path.remove(str(HERE))
    warnings.simplefilter("ignore")
    from layertrace.analysis import analyze

    for name, (make_adapter, make_batches, options) in dist_worker.cases().items():
        one = analyze(make_adapter(), make_batches(), **options)
        got = two[name]
        assert got.timing["world_size"] == 2 and one.timing["world_size"] == 1
        assert got.n_samples == one.n_samples and got.n_predictions == one.n_predictions, name
        assert got.n_similarity_samples == one.n_similarity_samples, name
        assert got.layers == one.layers
        for key in ("accuracy", "true_class_prob", "max_prob", "entropy", "cross_entropy", "cos_matrix",
                    "cka_matrix", "norm_ratio", "saturation_cumulative", "final_agreement", "rbf_cka_matrix"):
            a, b = getattr(got, key), getattr(one, key)
            if b is None:
                assert a is None, (name, key)
                continue
            np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12, err_msg=f"{name}: {key}")
        np.testing.assert_array_equal(got.saturation_hist, one.saturation_hist)
        assert got.effective_depth == one.effective_depth
        assert got.zero_norm_count == one.zero_norm_count
        assert_same(got.theory, one.theory, name)
        assert_same(got.cos_box, one.cos_box, name)
        # per-sample arrays: the same batches in the same order, so bitwise equal
        assert set(got.samples) == set(one.samples), name
        for key, value in one.samples.items():
            np.testing.assert_array_equal(got.samples[key], value, err_msg=f"{name}: samples[{key}]")
