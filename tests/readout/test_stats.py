"""Readout values of one layer against a direct numpy computation; accumulator merging."""

import numpy as np
import torch

from layertrace.readout import READOUT_FIELDS, ReadoutAccumulator, layer_readout


def test_layer_readout_matches_numpy():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(50, 7)) * 3
    targets = rng.integers(0, 7, size=50)
    r = layer_readout(torch.tensor(logits, dtype=torch.float32), torch.tensor(targets))
    z = logits - logits.max(axis=1, keepdims=True)
    p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    np.testing.assert_array_equal(r.pred.numpy(), logits.argmax(axis=1))
    np.testing.assert_array_equal(r.correct.numpy(), (logits.argmax(axis=1) == targets).astype(float))
    np.testing.assert_allclose(r.true_class_prob.numpy(), p[np.arange(50), targets], rtol=1e-6)
    np.testing.assert_allclose(r.max_prob.numpy(), p.max(axis=1), rtol=1e-6)
    np.testing.assert_allclose(r.entropy.numpy(), -(p * np.log(p)).sum(axis=1), rtol=1e-5)
    np.testing.assert_allclose(r.cross_entropy.numpy(), -np.log(p[np.arange(50), targets]), rtol=1e-5)


def test_uniform_and_peaked_extremes():
    r = layer_readout(torch.zeros(3, 4), torch.tensor([0, 1, 3]))
    np.testing.assert_allclose(r.entropy.numpy(), np.log(4))
    np.testing.assert_allclose(r.cross_entropy.numpy(), np.log(4))
    np.testing.assert_allclose(r.max_prob.numpy(), 0.25)
    peaked = torch.tensor([[1e4, 0.0, 0.0]])
    r = layer_readout(peaked, torch.tensor([0]))
    assert r.entropy.item() == 0.0 and r.true_class_prob.item() == 1.0  # 0 * log 0 taken as 0, no NaN


def test_accumulator_means_and_merge():
    rng = np.random.default_rng(1)
    logits = torch.tensor(rng.normal(size=(3, 40, 5)))
    targets = torch.tensor(rng.integers(0, 5, size=40))
    whole = ReadoutAccumulator(3)
    halves = [ReadoutAccumulator(3), ReadoutAccumulator(3)]
    for i in range(3):
        whole.update(i, layer_readout(logits[i], targets))
        halves[0].update(i, layer_readout(logits[i, :15], targets[:15]))
        halves[1].update(i, layer_readout(logits[i, 15:], targets[15:]))
    whole.add_count(40)
    halves[0].add_count(15)
    halves[1].add_count(25)
    merged = halves[0].merge(halves[1])
    via_state = ReadoutAccumulator(3)
    via_state.load_state(halves[0].state())
    for name in READOUT_FIELDS:
        np.testing.assert_allclose(merged.compute()[name], whole.compute()[name], rtol=1e-12)
        np.testing.assert_allclose(via_state.compute()[name], whole.compute()[name], rtol=1e-12)
    acc = whole.compute()["accuracy"]
    np.testing.assert_allclose(acc, (logits.argmax(-1) == targets).double().mean(-1).numpy())
