"""The paper's layer-count speed-up: sum_i L m_i / sum_i i m_i (PAPER.md section 6)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from layertrace.errors import LayertraceError
from layertrace.exits import exit_histogram, speedup, speedup_from_hist


def naive_speedup(hist: list[int]) -> float:
    """The formula written out with a loop: m_i samples exit at layer i of L = len(hist)."""
    n_layers = len(hist)
    num = 0.0
    den = 0.0
    for i, m in enumerate(hist, start=1):
        num += n_layers * m
        den += i * m
    return num / den


# A 12-layer, 50,000-sample histogram (ImageNet-val size, DeiT-S depth) built by us to be consistent
# with the 1.36x the paper reports for aligned single-head DeiT-S on ImageNet. The paper's Fig. 7 shows
# exit counts per layer as a plot without printed numbers, so these counts are our construction:
# a bell of mid-depth exits plus a tail of samples that run all 12 layers; sum(i * m_i) = 441,176.
PAPER_LIKE_HIST = [0, 0, 1000, 2600, 3800, 5000, 5400, 4256, 5000, 4600, 4200, 14144]


def test_paper_like_histogram_gives_1_36():
    assert sum(PAPER_LIKE_HIST) == 50_000
    assert speedup_from_hist(PAPER_LIKE_HIST) == pytest.approx(1.36, abs=5e-4)
    assert speedup_from_hist(PAPER_LIKE_HIST) == pytest.approx(naive_speedup(PAPER_LIKE_HIST), rel=1e-12)


@pytest.mark.parametrize("hist", [
    [0, 0, 0, 10],          # nobody exits early: 1.0
    [10, 0, 0, 0],          # everyone at layer 1: L
    [1, 1, 1, 1],           # 4 * 4 / 10 = 1.6
    [5, 0, 3, 0, 0, 2],     # 6 * 10 / (5 + 9 + 12) = 60 / 26
])
def test_speedup_matches_formula_on_hand_made_histograms(hist):
    n_layers = len(hist)
    exit_layers = np.repeat(np.arange(1, n_layers + 1), hist)
    expected = naive_speedup(hist)
    assert speedup(exit_layers, n_layers) == pytest.approx(expected, rel=1e-12)
    assert speedup(torch.as_tensor(exit_layers), n_layers) == pytest.approx(expected, rel=1e-12)
    assert speedup_from_hist(hist) == pytest.approx(expected, rel=1e-12)
    assert exit_histogram(exit_layers, n_layers).tolist() == hist


def test_hand_values():
    assert speedup([1, 1, 1, 1], 4) == 4.0
    assert speedup([4, 4], 4) == 1.0
    assert speedup([1] * 5 + [3] * 3 + [6] * 2, 6) == pytest.approx(60 / 26)


def test_speedup_rejects_bad_input():
    with pytest.raises(LayertraceError, match="1-based"):
        speedup([0, 1], 4)
    with pytest.raises(LayertraceError, match="1..4"):
        speedup([5], 4)
    with pytest.raises(LayertraceError, match="no exit layers"):
        speedup([], 4)
    with pytest.raises(LayertraceError):
        speedup_from_hist([0, 0])


def test_top_level_name():
    import layertrace

    assert layertrace.speedup([2, 2], 4) == 2.0
