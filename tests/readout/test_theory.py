"""Theory checks on synthetic trajectories whose answers are known by hand."""

import math

import numpy as np
import pytest
import torch

from layertrace.analysis.similarity import per_sample_cos_matrices
from layertrace.readout import (
    geodesic_residual,
    n_layer_triples,
    norm_ratios,
    theorem_2_1_violations,
    theorem_2_2_cooccurrence,
    trajectory_straightness,
)


def naive_violations(cos, tol=1e-6):
    """Count l1 < l2 < l3 with cos[l1, l3] > cos[l2, l3] + tol (the theorem's negation), by loops."""
    s = cos.shape[0]
    return sum(1 for l3 in range(s) for l2 in range(l3) for l1 in range(l2) if cos[l1, l3] > cos[l2, l3] + tol)


def straight_lines(n=20, d=6, n_layers=7, speed=None, seed=0):
    """h_l = (1 - t_l) a + t_l b for random a, b per sample; t_l = l / L unless ``speed`` is given."""
    g = torch.Generator().manual_seed(seed)
    a, b = torch.randn(n, d, generator=g, dtype=torch.float64), torch.randn(n, d, generator=g, dtype=torch.float64)
    t = torch.linspace(0, 1, n_layers, dtype=torch.float64) if speed is None else speed
    return (1 - t)[:, None, None] * a[None] + t[:, None, None] * b[None]  # (S, n, d)


def rotating(n_layers=5, step_deg=90.0, n=3, d=4):
    """Each sample's feature turns by ``step_deg`` per layer in the (e0, e1) plane, norm 1."""
    angles = torch.arange(n_layers, dtype=torch.float64) * math.radians(step_deg)
    x = torch.zeros(n_layers, n, d, dtype=torch.float64)
    x[:, :, 0] = torch.cos(angles)[:, None]
    x[:, :, 1] = torch.sin(angles)[:, None]
    return x


@pytest.mark.parametrize("center", ["none", "mean", "feature"])
def test_straight_lines_never_violate_theorem_2_1(center):
    x = straight_lines()
    centers = x.mean(dim=1)
    cos, valid = per_sample_cos_matrices(x, centers, center)
    assert valid.all()
    assert theorem_2_1_violations(cos).sum() == 0
    assert (theorem_2_1_violations(cos, count_evaluated=True) == n_layer_triples(7)).all()


def test_straight_uniform_line_is_straight_and_geodesic():
    x = straight_lines()
    np.testing.assert_allclose(trajectory_straightness(x), 1.0, rtol=1e-12)
    np.testing.assert_allclose(geodesic_residual(x, list(range(7))), 0.0, atol=1e-12)


def test_straight_line_at_non_uniform_speed():
    # t_l = (l/L)^2: still straight (straightness 1) but off the uniform geodesic point by |t_l - l/L| of the chord
    layers = list(range(5))
    u = torch.arange(5, dtype=torch.float64) / 4
    x = straight_lines(n_layers=5, speed=u**2)
    np.testing.assert_allclose(trajectory_straightness(x), 1.0, rtol=1e-12)
    expected = float((u - u**2)[1:-1].abs().mean())  # (3/16 + 4/16 + 3/16) / 3 = 10/48
    assert expected == pytest.approx(10 / 48)
    np.testing.assert_allclose(geodesic_residual(x, layers), expected, rtol=1e-12)


def test_quarter_turns_violate_half_the_triples():
    # angles 0, 90, 180, 270, 360: by hand, 1 violation with l3 = 3 and 4 with l3 = 4 -> 5 of 10
    x = rotating()
    cos, _ = per_sample_cos_matrices(x, None, "none")
    assert theorem_2_1_violations(cos).tolist() == [5, 5, 5]
    assert naive_violations(cos[0].numpy()) == 5
    # a closed loop: zero end-to-end distance -> straightness 0; path = 4 chords of length sqrt(2)
    np.testing.assert_allclose(trajectory_straightness(x), 0.0, atol=1e-12)
    # mean centring keeps the picture (every sample turns alike, so the centres turn too) -> here the
    # centres equal the vectors and every centred vector is zero: nothing is evaluated
    cos_c, valid = per_sample_cos_matrices(x, x.mean(dim=1), "mean")
    assert not valid.any() and theorem_2_1_violations(cos_c, count_evaluated=True).sum() == 0


def test_violations_match_naive_loop_on_random_matrices():
    rng = np.random.default_rng(0)
    feats = torch.tensor(rng.normal(size=(9, 30, 5)))
    cos, _ = per_sample_cos_matrices(feats, None, "none")
    counts = theorem_2_1_violations(cos)
    assert counts.tolist() == [naive_violations(c) for c in cos.numpy()]
    single = theorem_2_1_violations(cos[0])
    assert int(single) == counts[0]


def test_small_rotation_steps_only_violate_past_half_a_turn():
    # 30 degrees per layer, 5 layers = 120 degrees in all: the angle to the last layer shrinks monotonically
    x = rotating(n_layers=5, step_deg=30.0)
    cos, _ = per_sample_cos_matrices(x, None, "none")
    assert theorem_2_1_violations(cos).sum() == 0
    assert trajectory_straightness(x)[0] < 1.0


def test_theorem_2_2_hand_made():
    cos = np.array([[0.1, 0.5, 1.0], [0.9, 0.4, 1.0]])
    prob = np.array([[0.2, 0.6, 0.7], [0.5, 0.6, 0.4]])
    out = theorem_2_2_cooccurrence(cos, prob)
    assert out["n_transitions"] == 4
    assert out["cos_increase_rate"] == pytest.approx(3 / 4)
    assert out["prob_increase_given_cos_increase"] == pytest.approx(2 / 3)
    assert out["prob_increase_given_no_cos_increase"] == pytest.approx(1.0)
    assert out["sign_agreement_rate"] == pytest.approx(2 / 4)
    by_layer = out["prob_increase_given_cos_increase_by_layer"]
    assert math.isnan(by_layer[0]) and by_layer[1] == 1.0 and by_layer[2] == 0.5
    # undefined COS (a zero-norm vector) removes the transitions that touch it
    cos[1, 0] = np.nan
    assert theorem_2_2_cooccurrence(cos, prob)["n_transitions"] == 3


def test_norm_ratio_hand_made():
    x = torch.tensor([[[3.0, 4.0]], [[3.0, 5.0]], [[3.0, 5.0]]], dtype=torch.float64)  # (S=3, n=1, d=2)
    r = norm_ratios(x)
    assert r.shape == (1, 2)
    assert r[0, 0] == pytest.approx(5.0)      # ||h0|| / ||h1 - h0|| = 5 / 1
    assert math.isinf(r[0, 1])                # no update: infinite ratio
