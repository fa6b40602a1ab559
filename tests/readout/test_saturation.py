"""Saturation layers and effective depth against hand-made sequences and a naive loop."""

import numpy as np
import pytest

from layertrace.readout import (
    effective_depth,
    effective_depths,
    saturation_cumulative,
    saturation_histogram,
    saturation_layers,
    saturation_positions,
)


def naive_saturation(preds):
    """Smallest position p such that preds[k] == preds[-1] for every k >= p (written as the definition)."""
    final = preds[-1]
    for p in range(len(preds)):
        if all(preds[k] == final for k in range(p, len(preds))):
            return p
    raise AssertionError("unreachable: the last position always agrees")


def test_hand_made_sequences():
    preds = np.array([
        [0, 1, 1, 2, 2],   # settles on 2 at position 3
        [2, 2, 2, 2, 2],   # always the final prediction: position 0
        [1, 0, 1, 0, 1],   # flips until the end: position 4
        [0, 0, 0, 0, 3],   # changes only at the last layer: position 4
        [1, 1, 0, 1, 1],   # returns to the final class after a detour: position 3
    ])
    assert saturation_positions(preds).tolist() == [3, 0, 4, 4, 3]
    # with a layer grid 0::2 of L = 8 the positions map to layer indices
    assert saturation_layers(preds, [0, 2, 4, 6, 8]).tolist() == [6, 0, 8, 8, 6]
    hist = saturation_histogram(saturation_positions(preds), 5)
    assert hist.tolist() == [1, 0, 0, 2, 2]
    np.testing.assert_allclose(saturation_cumulative(hist), [0.2, 0.2, 0.2, 0.6, 1.0])


def test_matches_naive_loop_on_random_predictions():
    rng = np.random.default_rng(0)
    for n_layers, n_classes in [(1, 3), (2, 2), (7, 3), (13, 5)]:
        preds = rng.integers(0, n_classes, size=(200, n_layers))
        expected = [naive_saturation(list(row)) for row in preds]
        assert saturation_positions(preds).tolist() == expected


def test_effective_depth_hand_made_curve():
    layers = [0, 1, 2, 3, 4, 5]
    acc = [0.10, 0.50, 0.90, 0.975, 0.99, 0.98]
    assert effective_depth(acc, layers, 0.025) == 3          # first layer with acc >= 0.975
    assert effective_depth(acc, layers, 0.01) == 4           # first with acc >= 0.99
    assert effective_depth(acc, layers, 0.001) == 5          # none reaches 0.999: L
    assert effective_depth(acc, layers, 0.1, relative=True) == 2   # >= 0.9 * 0.98 = 0.882
    assert effective_depth(acc, layers, 0.0, relative=True) == 4   # >= 0.98: layer 4 (0.99) comes first
    assert effective_depth(acc, layers, 1.0) == 0
    both = effective_depths(acc, layers, [0.01, 0.025])
    # relative thresholds 0.99 * 0.98 = 0.9702 and 0.975 * 0.98 = 0.9555: both first reached at layer 3
    assert both == {"epsilons": [0.01, 0.025], "absolute": [4, 3], "relative": [3, 3]}


def test_effective_depth_on_a_layer_subset_and_bad_input():
    assert effective_depth([0.2, 0.96, 0.97], [0, 6, 12], 0.05) == 6
    with pytest.raises(ValueError):
        effective_depth([0.5, 0.6], [0, 1, 2], 0.1)
    with pytest.raises(ValueError):
        effective_depth([0.5, 0.6], [0, 1], 1.5)
