"""Minibatch / exact CKA and calibrated similarity: layertrace vs pytorch-cka, torch-cka, calibrated-similarity.

Every timing runs in a FRESH process (one per method and repetition, methods interleaved, the order
alternating between rounds), one thread, on the same float32 features: (13 layers, 10,000 samples,
384 dims) of the synthetic residual stream of benchmarks/_features.py, written once to a .npy file
that each child memory-maps (generation and loading are not timed). Minibatches: consecutive blocks
of --batch-size (1,000) samples, the same for every library.

Methods (each child prints wall and CPU seconds of the timed call and saves its (L, L) result):
* pytorch-cka 1.1.3 ``compute_cka(model, model, loader, layers=...)``: its own code, unmodified,
  over a replay module whose 13 submodules return our features for the batch's indices (its hooks
  capture exactly our arrays; the replay is included and negligible).
* torch-cka 0.21 ``CKA.compare(loader)`` over the same replay module.
* ours: ``MinibatchCKA`` (default ``precision="auto"``: float32 products, float64 sums) and with
  ``precision="float64"``; ``linear_cka_matrix`` (exact), ``cos_matrix`` (mean-centred COS).
* calibration on the first --cal-samples samples, K = --permutations seeded permutations:
  ``calibrated_similarity(..., "linear_cka" | "cos")`` (all 78 pairs, one product per permutation)
  vs calibrated-similarity 0.1.1's ``calibrate(X_l, X_m, sim, K, generator)`` called pair by pair
  with the same permutations; the package is timed on --cal-pairs pairs and scaled to all 78.

Accuracy: the float64 reference of the minibatch estimator is pytorch-cka's own ``hsic_cross`` on
float64 Gram matrices (an implementation independent of ours); of exact CKA / COS the textbook
per-pair loop in float64 numpy.

Set-up and command (results in benchmarks/results/cka_peers.md):
    python3.11 -m venv /tmp/peers && /tmp/peers/bin/pip install torch==2.13.0 pytorch-cka==1.1.3 \\
        torch-cka==0.21 calibrated-similarity==0.1.1 numpy
    .venv/bin/python benchmarks/bench_cka_peers.py --peer-python /tmp/peers/bin/python --repeats 5
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MINIBATCH = ["pytorch-cka", "torch-cka", "ours-minibatch", "ours-minibatch-f64"]
EXACT = ["ours-exact", "ours-cos"]
CALIBRATION = ["ours-cal-cka", "package-cal-cka", "ours-cal-cos", "package-cal-cos"]
LABELS = {
    "pytorch-cka": "pytorch-cka 1.1.3 compute_cka (minibatch, float32)",
    "torch-cka": "torch-cka 0.21 CKA.compare (minibatch, per-pair loop)",
    "ours-minibatch": "ours: MinibatchCKA (precision=auto: float32 products, float64 sums)",
    "ours-minibatch-f64": "ours: MinibatchCKA (precision=float64)",
    "ours-exact": "ours: linear_cka_matrix (exact, all samples at once)",
    "ours-cos": "ours: cos_matrix (mean-centred COS)",
    "ours-cal-cka": "ours: calibrated_similarity linear_cka, all pairs at once (bulk null)",
    "package-cal-cka": "calibrated-similarity 0.1.1 calibrate, pair by pair (scaled to all pairs)",
    "ours-cal-cos": "ours: calibrated_similarity cos, all pairs at once (bulk null)",
    "package-cal-cos": "calibrated-similarity 0.1.1 calibrate, pair by pair (scaled to all pairs)",
}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--layers", type=int, default=13)
    p.add_argument("--samples", type=int, default=10_000)
    p.add_argument("--dim", type=int, default=384)
    p.add_argument("--batch-size", type=int, default=1000)
    p.add_argument("--offset", type=float, default=0.5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--slow-repeats", type=int, default=None,
                   help="rounds (out of --repeats) that also run torch-cka (default: all)")
    p.add_argument("--cal-samples", type=int, default=1000)
    p.add_argument("--permutations", type=int, default=100)
    p.add_argument("--cal-pairs", type=int, default=3, help="pairs the package is timed on (scaled to all)")
    p.add_argument("--cal-repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--peer-python", default=sys.executable, help="python of the venv with the peer libraries")
    p.add_argument("--src", default=str(ROOT / "src"), help="layertrace source folder the children import")
    p.add_argument("--skip", default="", help="comma-separated methods to leave out (e.g. torch-cka)")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--features", default=None, help=argparse.SUPPRESS)
    p.add_argument("--out", default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


ARGS = parse_args()
for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[var] = str(ARGS.threads)
os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

import numpy as np  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(ARGS.threads)
sys.path.insert(0, str(Path(__file__).parent))
from _features import ResidualStream, replay_model  # noqa: E402


# ----------------------------------------------------------------------------- children


def _batches(features: torch.Tensor, batch_size: int):
    for start in range(0, features.shape[1], batch_size):
        yield features[:, start:start + batch_size]


def _pairs(n_layers: int) -> list[tuple[int, int]]:
    return [(l, m) for l in range(n_layers) for m in range(l + 1, n_layers)]


def _torch_cos(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    x, y = x - x.mean(0), y - y.mean(0)
    return ((x / x.norm(dim=1, keepdim=True)) * (y / y.norm(dim=1, keepdim=True))).sum(dim=1).mean()


def _torch_cka(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    x, y = x - x.mean(0), y - y.mean(0)
    k, l = x @ x.T, y @ y.T
    return (k * l).sum() / k.norm() / l.norm()


def child(method: str, features: torch.Tensor, b: int) -> tuple[float, float, dict]:
    """Run one method once; (wall s, CPU s, arrays to save)."""
    import warnings

    warnings.simplefilter("ignore")
    L = features.shape[0]
    cal = features[:, :ARGS.cal_samples].contiguous()
    pre: dict = {}
    if method == "pytorch-cka":
        from cka import compute_cka

        model, names, loader = replay_model(features, b)

        def fn():
            return {"value": compute_cka(model, model, loader, layers=names, progress=False)[0].double().numpy()}
    elif method == "torch-cka":
        from torch_cka import CKA

        model, names, loader = replay_model(features, b)

        def fn():
            cka = CKA(model, model, "replay_a", "replay_b", model1_layers=names, model2_layers=names)
            cka.compare(loader)
            return {"value": cka.export()["CKA"].numpy().astype(np.float64)}
    elif method in ("ours-minibatch", "ours-minibatch-f64"):
        from layertrace.metrics import MinibatchCKA

        precision = "float64" if method.endswith("f64") else "auto"

        def fn():
            acc = MinibatchCKA(L, precision=precision)
            for batch in _batches(features, b):
                acc.update(batch)
            return {"value": acc.compute()}
    elif method == "ours-exact":
        from layertrace.metrics import linear_cka_matrix

        def fn():
            return {"value": linear_cka_matrix(features)}
    elif method == "ours-cos":
        from layertrace.metrics import cos_matrix

        def fn():
            return {"value": cos_matrix(features)}
    elif method in ("ours-cal-cka", "ours-cal-cos"):
        from layertrace.metrics import calibrated_similarity

        metric = "linear_cka" if method.endswith("cka") else "cos"

        def fn():
            out = calibrated_similarity(cal, metric, n_permutations=ARGS.permutations, seed=ARGS.seed)
            return {k: out[k] for k in ("calibrated", "tau", "p_value", "score")}
    elif method in ("package-cal-cka", "package-cal-cos"):
        from calibrated_similarity import calibrate

        sim = _torch_cka if method.endswith("cka") else _torch_cos
        pairs = _pairs(L)
        step = max(1, len(pairs) // ARGS.cal_pairs)
        chosen = pairs[::step][:ARGS.cal_pairs]

        def fn():
            rows = []
            for l, m in chosen:
                score, p, tau = calibrate(cal[l], cal[m], sim, K=ARGS.permutations,
                                          generator=torch.Generator().manual_seed(ARGS.seed))
                rows.append([l, m, float(score), float(p), float(tau)])
            return {"pairs": np.asarray(rows)}
        pre["scale"] = len(pairs) / len(chosen)
    elif method == "reference":
        return 0.0, 0.0, reference(features, b)
    else:
        raise SystemExit(f"unknown method {method}")
    wall, cpu = time.perf_counter(), time.process_time()
    arrays = fn()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    scale = pre.get("scale", 1.0)
    return wall * scale, cpu * scale, arrays


def reference(features: torch.Tensor, b: int) -> dict:
    """float64 references: pytorch-cka's hsic_cross on float64 Grams (minibatch), per-pair numpy loops."""
    from cka.hsic import hsic_cross

    L = features.shape[0]
    x64 = features.double()
    hsic = torch.zeros(L, L, dtype=torch.float64)
    for batch in _batches(x64, b):
        grams = batch @ batch.transpose(1, 2)
        hsic += hsic_cross(grams, grams)
    diag = torch.sqrt(torch.diagonal(hsic))
    minibatch = (hsic / diag[:, None] / diag[None, :]).numpy()
    f = x64.numpy()
    exact, cos = np.eye(L), np.eye(L)
    for l, m in _pairs(L):
        x, y = f[l] - f[l].mean(axis=0), f[m] - f[m].mean(axis=0)
        exact[l, m] = exact[m, l] = np.linalg.norm(y.T @ x) ** 2 / (np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y))
        cos[l, m] = cos[m, l] = np.mean(np.sum(x * y, axis=1) / (np.linalg.norm(x, axis=1) * np.linalg.norm(y, axis=1)))
    return {"minibatch": minibatch, "exact": exact, "cos": cos}


# ----------------------------------------------------------------------------- parent


def run_child(method: str, features_path: Path, out_dir: Path) -> dict:
    python = ARGS.peer_python  # one interpreter (one torch build) for every library
    out = out_dir / f"{method}.npz"
    cmd = [python, __file__, "--child", method, "--features", str(features_path), "--out", str(out),
           "--batch-size", str(ARGS.batch_size), "--threads", str(ARGS.threads), "--seed", str(ARGS.seed),
           "--cal-samples", str(ARGS.cal_samples), "--permutations", str(ARGS.permutations),
           "--cal-pairs", str(ARGS.cal_pairs)]
    env = dict(os.environ, PYTHONPATH=ARGS.src)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"{method} failed:\n{proc.stderr[-3000:]}")
    timing = json.loads(proc.stdout.strip().splitlines()[-1])
    timing["arrays"] = dict(np.load(out))
    return timing


def main() -> None:
    if ARGS.child is not None:
        features = torch.from_numpy(np.load(ARGS.features, mmap_mode="r")[:])
        wall, cpu, arrays = child(ARGS.child, features, ARGS.batch_size)
        np.savez(ARGS.out, **arrays)
        print(json.dumps({"wall": wall, "cpu": cpu}))
        return
    skip = {s for s in ARGS.skip.split(",") if s}
    L, n, d, b = ARGS.layers, ARGS.samples, ARGS.dim, ARGS.batch_size
    tmp = Path(tempfile.mkdtemp(prefix="bench_cka_peers_"))
    features_path = tmp / "features.npy"
    np.save(features_path, ResidualStream(L, d, ARGS.offset, ARGS.seed).batch(0, n).numpy())
    ref = run_child("reference", features_path, tmp)["arrays"]
    timed = [m for m in MINIBATCH + EXACT if m not in skip]
    cal_methods = [m for m in CALIBRATION if m not in skip]
    times: dict[str, list] = {m: [] for m in timed + cal_methods}
    cpus: dict[str, list] = {m: [] for m in timed + cal_methods}
    values: dict[str, dict] = {}
    for round_ in range(max(ARGS.repeats, ARGS.cal_repeats)):
        slow_done = ARGS.slow_repeats is not None and round_ >= ARGS.slow_repeats
        group = ([m for m in timed if not (m == "torch-cka" and slow_done)] if round_ < ARGS.repeats else []) + \
            (cal_methods if round_ < ARGS.cal_repeats else [])
        for method in (group if round_ % 2 == 0 else group[::-1]):
            t = run_child(method, features_path, tmp)
            times[method].append(t["wall"])
            cpus[method].append(t["cpu"])
            values[method] = t["arrays"]
        print(f"round {round_ + 1} done: " + json.dumps({"wall": times, "cpu": cpus}),
              file=sys.stderr, flush=True)  # the raw timings so far (kept if a later step fails)
    med = {m: float(np.median(v)) for m, v in times.items()}
    cpu = {m: float(np.median(v)) for m, v in cpus.items()}

    def err(method: str, key: str) -> float:
        return float(np.abs(values[method]["value"] - ref[key]).max())

    if timed:
        print_timings(timed, times, med, cpu, err, L, n, d, b)
    if cal_methods:
        print_calibration(cal_methods, med, cpu, values, L)


def print_timings(timed, times, med, cpu, err, L, n, d, b) -> None:
    print(f"\nInputs: float32 features ({L} layers, {n:,} samples, {d} dims), minibatches of {b} "
          f"({math.ceil(n / b)} batches), {ARGS.threads} thread, a fresh process per run, "
          f"{ARGS.repeats} interleaved rounds (median; torch-cka: {len(times.get('torch-cka', []))} run(s)).\n")
    print("| method | median wall s | median CPU s | runs | pytorch-cka / this (wall) | pytorch-cka / this (CPU) "
          "| max abs error vs float64 reference |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    base = "pytorch-cka" if "pytorch-cka" in med else timed[0]
    for m in timed:
        key = "minibatch" if m in MINIBATCH else ("exact" if m == "ours-exact" else "cos")
        print(f"| {LABELS[m]} | {med[m]:.3f} | {cpu[m]:.3f} | {len(times[m])} | {med[base] / med[m]:.2f}x | "
              f"{cpu[base] / cpu[m]:.2f}x | {err(m, key):.1e} |")
    if "torch-cka" in med and "ours-minibatch" in med:
        print(f"\nours (MinibatchCKA, auto) vs torch-cka: {med['torch-cka'] / med['ours-minibatch']:.1f}x wall, "
              f"{cpu['torch-cka'] / cpu['ours-minibatch']:.1f}x CPU; vs pytorch-cka: "
              f"{med['pytorch-cka'] / med['ours-minibatch']:.2f}x wall, {cpu['pytorch-cka'] / cpu['ours-minibatch']:.2f}x CPU.")


def print_calibration(cal_methods, med, cpu, values, L) -> None:
    if cal_methods:
        print(f"\nCalibration: first {ARGS.cal_samples:,} samples, K = {ARGS.permutations} permutations "
              f"(seed {ARGS.seed}), alpha 0.05, {ARGS.cal_repeats} fresh-process runs each (median); the package "
              f"was timed on {ARGS.cal_pairs} pairs and its time scaled to all {len(_pairs(L))} pairs.\n")
        print("| method | median wall s | median CPU s | package / ours (wall) | package / ours (CPU) "
              "| max abs diff vs package (calibrated, tau, p) |")
        print("|---|---:|---:|---:|---:|---|")
        for metric in ("cka", "cos"):
            ours, pkg = f"ours-cal-{metric}", f"package-cal-{metric}"
            if ours not in med or pkg not in med:
                continue
            rows = values[pkg]["pairs"]
            li, mi = rows[:, 0].astype(int), rows[:, 1].astype(int)
            diffs = [np.abs(values[ours][k][li, mi] - rows[:, c]).max()
                     for k, c in (("calibrated", 2), ("tau", 4), ("p_value", 3))]
            print(f"| {LABELS[ours]} | {med[ours]:.3f} | {cpu[ours]:.3f} | **{med[pkg] / med[ours]:.1f}x** | "
                  f"**{cpu[pkg] / cpu[ours]:.1f}x** | {', '.join(f'{x:.1e}' for x in diffs)} |")
            print(f"| {LABELS[pkg]} | {med[pkg]:.3f} | {cpu[pkg]:.3f} | | | |")
            raw = values[ours]["score"][np.triu_indices(L, 1)]
            calibrated = values[ours]["calibrated"][np.triu_indices(L, 1)]
            print(f"|  ({metric}: raw score over the pairs {raw.min():.3f}..{raw.max():.3f}, calibrated "
                  f"{calibrated.min():.3f}..{calibrated.max():.3f}) | | | | | |")


if __name__ == "__main__":
    main()
