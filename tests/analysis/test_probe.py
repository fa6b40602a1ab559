"""Linear probes per layer (readout/probe.py, analysis/probe.py, `layertrace probe`)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from layertrace.analysis.probe import ProbeResult, comparison_rows, probe
from layertrace.errors import LayertraceError
from layertrace.readout.probe import fit_linear_probe, standardiser

from .helpers import synthetic_adapter


def scipy_reference(x, y, k, l2):
    """The same objective minimised by scipy's L-BFGS-B with a numpy gradient (independent path)."""
    from scipy.optimize import minimize

    mean, scale = standardiser(x)
    z = (x - mean) / scale
    n, d = z.shape
    onehot = np.eye(k)[y]

    def f(theta):
        w, b = theta[: k * d].reshape(k, d), theta[k * d:]
        logits = z @ w.T + b
        logits -= logits.max(1, keepdims=True)
        p = np.exp(logits)
        p /= p.sum(1, keepdims=True)
        loss = -np.log(p[np.arange(n), y]).mean() + 0.5 * l2 * (w * w).sum()
        g = (p - onehot) / n
        return loss, np.concatenate([(g.T @ z + l2 * w).ravel(), g.sum(0)])

    res = minimize(f, np.zeros(k * d + k), jac=True, method="L-BFGS-B", options={"maxiter": 5000, "gtol": 1e-10})
    return res.x[: k * d].reshape(k, d), res.x[k * d:], res.fun


def _blobs(n=150, d=5, k=3, sep=1.5, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    centres = rng.normal(size=(k, d)) * sep
    return centres[y] + rng.normal(size=(n, d)) * np.linspace(0.5, 3, d) + 4.0, y  # unequal scales, offset


def test_fit_matches_scipy_on_the_same_objective():
    x, y = _blobs()
    fit = fit_linear_probe(x, y, x, y, 3, l2=1e-2, tol=1e-8, max_iter=2000)
    w, b, loss = scipy_reference(x, y, 3, 1e-2)
    assert fit.converged
    assert fit.loss == pytest.approx(loss, rel=1e-7)
    np.testing.assert_allclose(fit.weight, w, atol=1e-4)  # strictly convex: one minimiser
    np.testing.assert_allclose(fit.bias, b, atol=1e-4)


def test_separable_data_is_read_and_random_labels_are_not():
    x, y = _blobs(n=400, sep=8.0, seed=1)
    fit = fit_linear_probe(x[:300], y[:300], x[300:], y[300:], 3)
    assert fit.test_accuracy == 1.0 and fit.train_accuracy == 1.0
    rng = np.random.default_rng(2)
    noise, labels = rng.normal(size=(2000, 4)), rng.integers(0, 2, 2000)
    chance = fit_linear_probe(noise[:1000], labels[:1000], noise[1000:], labels[1000:], 2)
    assert abs(chance.test_accuracy - 0.5) < 0.05
    again = fit_linear_probe(x[:300], y[:300], x[300:], y[300:], 3)
    np.testing.assert_array_equal(again.weight, fit.weight)  # deterministic: no seed involved


def _straight_batches(n_batches, seed, dim=6, n_classes=3):
    """x1 (the last layer) encodes the label along e0; x0 (layer 0) is pure noise."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n_batches):
        labels = torch.randint(0, n_classes, (16,), generator=g)
        x1 = torch.randn(16, dim, generator=g, dtype=torch.float64) * 0.3
        x1[:, :n_classes] += 3.0 * torch.nn.functional.one_hot(labels, n_classes).double()
        out.append({"x0": torch.randn(16, dim, generator=g, dtype=torch.float64), "x1": x1, "labels": labels})
    return out


def test_probe_reads_what_each_layer_holds():
    adapter = synthetic_adapter("straight", n_layers=4)
    result = probe(adapter, _straight_batches(8, 0), _straight_batches(4, 1))
    assert result.layers == [0, 1, 2, 3, 4] and result.n_train == 128 and result.n_test == 64
    assert result.accuracy[0] < 0.55 and result.accuracy[-1] > 0.95  # noise at layer 0, the label at L
    assert all(result.converged)
    # the same numbers as fitting the traced features by hand
    with torch.no_grad():
        train = torch.cat([adapter.trace(b, with_logits=False).features for b in _straight_batches(8, 0)], 1)
        test = torch.cat([adapter.trace(b, with_logits=False).features for b in _straight_batches(4, 1)], 1)
    y_tr = torch.cat([b["labels"] for b in _straight_batches(8, 0)]).numpy()
    y_te = torch.cat([b["labels"] for b in _straight_batches(4, 1)]).numpy()
    direct = fit_linear_probe(train[2].float().numpy(), y_tr, test[2].float().numpy(), y_te, 3)
    assert result.accuracy[2] == pytest.approx(direct.test_accuracy)


def test_result_round_trip_comparison_table_and_errors(tmp_path):
    adapter = synthetic_adapter("straight", n_layers=2)
    result = probe(adapter, _straight_batches(3, 0), _straight_batches(2, 1), layers="1::1", data_name="toy")
    back = ProbeResult.from_json(result.save(tmp_path))
    assert back.accuracy == result.accuracy and back.layers == [1, 2]
    header, rows = comparison_rows([("a", result), ("b", back)])
    assert header == ["run", "data", "majority %", "l=1", "l=2"]
    assert rows[0][3:] == [f"{100 * v:.2f}" for v in result.accuracy]
    with pytest.raises(LayertraceError, match="single class"):
        one = _straight_batches(1, 0)
        one[0]["labels"][:] = 0
        probe(adapter, one, _straight_batches(1, 1))
    with pytest.raises(LayertraceError, match="l2"):
        probe(adapter, _straight_batches(1, 0), _straight_batches(1, 1), l2=-1)


@pytest.mark.embedded
def test_cli_probe_and_compare(tmp_path, capsys):
    from layertrace.cli.main import main

    args = ["probe", "--model", "vit-demo", "--data", "mnist-5k", "--limit_train", "60", "--limit_test", "30",
            "--layers", "0,3,6", "--device", "cpu"]
    for name, seed in (("mnist-vit-standard", "0"), ("mnist-vit-aligned", "1")):
        assert main(args + ["--seed", seed, "--out", str(tmp_path / name)]) == 0
    data = json.loads((tmp_path / "mnist-vit-standard" / "probe.json").read_text())
    assert data["layers"] == [0, 3, 6] and data["n_train"] == 60 and data["n_test"] == 30 and data["num_classes"] == 10
    assert (tmp_path / "mnist-vit-standard" / "probe-config.yaml").is_file()
    capsys.readouterr()
    dirs = f"{tmp_path / 'mnist-vit-standard'},{tmp_path / 'mnist-vit-aligned'}"
    assert main(["probe", "--compare", dirs, "--out", str(tmp_path / "cmp")]) == 0
    table = (tmp_path / "cmp" / "probe-comparison.md").read_text()
    assert "mnist-vit-standard" in table and "mnist-vit-aligned" in table and "l=6" in table
    assert main(["probe", "--compare", str(tmp_path / "cmp"), "--out", str(tmp_path / "x")]) == 2
    assert "holds no probe.json" in capsys.readouterr().err
