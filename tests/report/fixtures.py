"""Small fixture runs in the documented schema (DESIGN.md section 3), written by the tests.

Numbers are synthetic but shaped like real runs (monotone COS to last for residual nets, symmetric
similarity matrices with a unit diagonal, exit sweeps whose speed-up follows the paper's formula from
their own histograms), so every figure and table of the report has something real to draw.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import yaml

from layertrace.run_folder import TrainSummary


def _sim_matrix(profile: np.ndarray, sharp: float) -> np.ndarray:
    """Symmetric (S, S) similarity with unit diagonal, decaying with layer distance."""
    s = len(profile)
    m = np.ones((s, s))
    for i in range(s):
        for j in range(s):
            if i != j:
                m[i, j] = float(np.clip(min(profile[i], profile[j]) ** (abs(i - j) ** sharp / s), -1, 1))
    return m


def analysis_dict(n_layers: int, accuracy: list[float], cos_to_last: list[float], cka_to_last: list[float],
                  n_samples: int = 200, seed: int = 0) -> dict:
    layers = list(range(n_layers + 1))
    rng = np.random.default_rng(seed)
    cos = _sim_matrix(np.clip(np.asarray(cos_to_last), 0.01, 1), 0.7)
    cos[-1, :] = cos[:, -1] = cos_to_last
    cka = _sim_matrix(np.clip(np.asarray(cka_to_last), 0.01, 1), 0.5)
    cka[-1, :] = cka[:, -1] = cka_to_last
    iu = np.triu_indices(len(layers), 1)
    pear = float(np.corrcoef(cos[iu], cka[iu])[0, 1])
    acc = np.asarray(accuracy)
    final_pred_hist = rng.multinomial(n_samples, np.exp(-np.arange(len(layers)) * 0.4) / np.exp(
        -np.arange(len(layers)) * 0.4).sum())
    sat_cum = np.cumsum(final_pred_hist) / n_samples
    med = np.asarray(cos_to_last)
    return {
        "n_layers": n_layers,
        "layers": layers,
        "n_samples": n_samples,
        "accuracy": accuracy,
        "true_class_prob": list(np.clip(acc - 0.05, 0.05, 1)),
        "max_prob": list(np.clip(acc + 0.05, 0.1, 1)),
        "entropy": list(np.log(10) * (1 - acc)),
        "cross_entropy": list(-np.log(np.clip(acc - 0.05, 0.05, 1))),
        "cos_to_last": cos_to_last,
        "adjacent_cos": [None] + [float(cos[i - 1, i]) for i in range(1, len(layers))],
        "cos_matrix": cos.tolist(),
        "cka_matrix": cka.tolist(),
        "cos_cka_agreement": {"pearson": pear, "spearman": pear - 0.01},
        "saturation_hist": final_pred_hist.tolist(),
        "saturation_cumulative": sat_cum.tolist(),
        "effective_depth": {
            "epsilons": [0.01, 0.025, 0.05, 0.1],
            "absolute": [n_layers] * 4,
            "relative": [int(next(i for i, a in enumerate(accuracy) if a >= (1 - e) * accuracy[-1]))
                         for e in (0.01, 0.025, 0.05, 0.1)]},
        "norm_ratio": list(np.linspace(6.0, 2.0, n_layers)) + [None],
        "theory": {
            "tolerance": 1e-6,
            "theorem_2_1": {"n_triples_per_sample": 35, "sample_violation_rate": 0.4, "triple_violation_rate": 0.05,
                            "cos_matrix_violation_rate": 0.0, "center": "mean"},
            "straightness": {"mean": 0.7, "q50": 0.71, "n_undefined": 0},
            "theorem_2_2": {"n_transitions": 1200, "cos_increase_rate": 0.8, "prob_increase_given_cos_increase": 0.75,
                            "prob_increase_given_no_cos_increase": 0.3},
        },
        "cos_box": {"q0": list(med - 0.3), "q25": list(med - 0.1), "q50": list(med), "q75": list(med + 0.1),
                    "q100": list(np.minimum(med + 0.3, 1.0)), "mean": list(med), "count": [n_samples] * len(layers)},
    }


def exit_dict(n_layers: int, layer_acc: list[float], n_samples: int = 200, policy: str = "confidence",
              params: dict | None = None) -> dict:
    """An exit sweep: threshold t moves samples towards earlier exits; accuracy follows the layers'."""
    points = []
    for t in (0.5, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0):
        # Exit distribution: geometric in the layer, more mass early for lower thresholds.
        if t >= 1.0:  # nobody is that confident: every sample runs all L blocks
            hist = np.zeros(n_layers, dtype=int)
            hist[-1] = n_samples
        else:
            w = np.exp(-np.arange(n_layers) * 8.0 * t)
            hist = np.floor(n_samples * w / w.sum()).astype(int)
            hist[-1] += n_samples - hist.sum()
        layers = np.arange(1, n_layers + 1)
        speedup = n_layers * n_samples / float((layers * hist).sum())
        acc = float((hist * np.asarray(layer_acc[1:])).sum() / n_samples)
        points.append({"policy": policy, "threshold": t, "accuracy": acc, "speedup": speedup,
                       "measured_speedup": speedup * 0.85, "measured_speedup_batch1": speedup * 0.9,
                       "flops_per_sample": 1e6 / speedup, "exit_hist": hist.tolist(),
                       "mean_exit_layer": float((layers * hist).sum() / n_samples)})
    return {"policy": policy, "n_layers": n_layers, "n_samples": n_samples, "full_accuracy": layer_acc[-1],
            "layer_accuracy": layer_acc[1:], "points": points,
            "params": params or {"shared_head": 100_000, "per_layer_heads": 100_000 + (n_layers - 1) * 650}}


def metrics_rows(steps: int, final_loss: float, accuracy: list[float] | None = None) -> list[dict]:
    """Training rows, then the layer-wise ``eval`` records the training loop writes (training/loop.py:
    every ``eval_every`` steps and once at the end, ``final``), with accuracy rising to ``accuracy``."""
    rows = [{"step": s, "loss": float(2.3 * np.exp(-s / (steps / 3)) + final_loss), "lr": 1e-3}
            for s in range(0, steps, 5)]
    final = accuracy or [0.1, 0.5, 0.8]
    for s in (steps // 3, 2 * steps // 3, steps):
        acc = [a * (0.6 + 0.4 * s / steps) for a in final]
        row = {"step": s, "eval": {"layers": list(range(len(final))), "accuracy": acc,
                                   "loss": [float(-np.log(max(a, 1e-3))) for a in acc], "n": 200}}
        rows.append({**row, "final": True} if s == steps else row)
    return rows


def write_run(root: Path, name: str, n_layers: int, accuracy: list[float], cos: list[float], cka: list[float],
              mode: str, with_exit: bool = True, seed: int = 0) -> Path:
    d = root / name
    d.mkdir(parents=True, exist_ok=True)
    (d / "config.yaml").write_text(yaml.safe_dump({"mode": mode, "model": name.split("-")[1], "lr": 1e-3}))
    (d / "analysis.json").write_text(json.dumps(analysis_dict(n_layers, accuracy, cos, cka, seed=seed)))
    if with_exit:
        ex = exit_dict(n_layers, accuracy)
        if mode == "multi-head":  # read through its own per-layer heads: a little better at shallow layers
            ex["readout"] = "per-layer heads"
            ex["exit_layers"] = list(range(1, n_layers + 1))
            ex["layer_accuracy"] = [min(1.0, a + 0.02) for a in accuracy[1:]]
        else:
            ex["readout"] = "shared"
        (d / "exit.json").write_text(json.dumps(ex))
    with open(d / "metrics.jsonl", "w") as fh:
        for row in metrics_rows(60, 0.3 + 0.1 * seed, accuracy):
            fh.write(json.dumps(row) + "\n")
        fh.write('{"step": 61, "loss": 0.')  # a torn last line, as an interrupted run leaves
    # what the training loop writes last (run_folder.TrainSummary, its own writer)
    TrainSummary(run_dir=str(d), mode=mode, model=name.split("-")[1], data=name.split("-")[0], task="image-classification",
                 steps=60, samples_seen=60 * 32, wall_time_s=12.5, final_eval=None, layers=list(range(1, n_layers + 1)),
                 layer_weights=[], params={"model": 100_000}).to_json(d / "train_summary.json")
    return d


def write_demo_like(root: Path) -> list[Path]:
    """Runs shaped like the demo's: ViT standard / aligned / multi-head, MiniLM standard / aligned, MLP pair."""
    L = 6
    runs = [
        write_run(root, "fmnist-vit-standard", L, [0.1, 0.45, 0.6, 0.7, 0.78, 0.81, 0.83],
                  [0.2, 0.35, 0.45, 0.6, 0.72, 0.85, 1.0], [0.3, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0], "standard", seed=0),
        write_run(root, "fmnist-vit-aligned", L, [0.1, 0.74, 0.79, 0.81, 0.82, 0.83, 0.83],
                  [0.3, 0.6, 0.7, 0.78, 0.85, 0.92, 1.0], [0.35, 0.6, 0.7, 0.8, 0.85, 0.93, 1.0], "aligned", seed=1),
        write_run(root, "fmnist-vit-multi-head", L, [0.1, 0.76, 0.8, 0.82, 0.83, 0.83, 0.84],
                  [0.25, 0.4, 0.5, 0.6, 0.7, 0.85, 1.0], [0.3, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0], "multi-head", seed=2),
        write_run(root, "rt-minilm-standard", L, [0.52, 0.52, 0.52, 0.52, 0.52, 0.65, 0.82],
                  [0.1, 0.12, 0.15, 0.2, 0.3, 0.6, 1.0], [0.2, 0.3, 0.35, 0.4, 0.5, 0.7, 1.0], "standard", seed=3),
        write_run(root, "rt-minilm-aligned", L, [0.52, 0.52, 0.52, 0.52, 0.52, 0.82, 0.82],
                  [0.15, 0.2, 0.22, 0.3, 0.45, 0.8, 1.0], [0.25, 0.35, 0.4, 0.5, 0.6, 0.8, 1.0], "aligned", seed=4),
    ]
    M = 9
    runs.append(write_run(root, "mnist-mlp-residual", M, [0.1 + 0.09 * i for i in range(M + 1)],
                          [0.2 + 0.08 * i for i in range(M + 1)], [0.3 + 0.07 * i + 0.0 for i in range(M)] + [1.0],
                          "residual", with_exit=False, seed=5))
    runs.append(write_run(root, "mnist-mlp-plain", M, [0.1] * M + [0.95], [0.05] * M + [1.0], [0.9] * M + [1.0],
                          "plain", with_exit=False, seed=6))
    return runs
