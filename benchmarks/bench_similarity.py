"""All-pairs layer similarity: layertrace.metrics vs torch-cka 0.21 vs a naive per-pair loop.

Same inputs for every method: float32 features of shape (layers, samples, dim), by default
(13, 10000, 384) = DeiT-S's embedding output + 12 blocks, made as a synthetic residual stream
(h_0 ~ N(offset, I), h_l = h_{l-1} + 0.6 tanh(h_{l-1} A_l), A_l random) so layers are related the way
transformer layers are.

What is timed (wall clock, median of interleaved repetitions):
* torch-cka: ``torch_cka.CKA.compare(loader)`` itself, unmodified: its per-batch, per-pair loop of
  Gram matrices and ``CKA._HSIC`` calls. The two "models" are a replay module whose 13 submodules
  return the precomputed features of the batch's sample indices, so its hooks capture exactly our
  features; the loader yields consecutive batches of ``--batch-size`` indices. The replay cost is
  measured separately (it is included in torch-cka's time and is tiny).
* ours, minibatch: ``MinibatchCKA.update`` on the same consecutive batches + ``compute()``, the same
  estimator (unbiased HSIC summed over batches), plus ``cos_matrix`` (mean-centred COS, all pairs).
* ours, exact: ``linear_cka_matrix`` (exact, column-centred, all samples at once) + ``cos_matrix``.
* naive: the textbook per-pair loop in float64 numpy over all L x L pairs:
  ``|Yc^T Xc|_F^2 / (|Xc^T Xc|_F |Yc^T Yc|_F)`` and the per-pair mean cosine. It is the float64
  reference for the exact values; being slow it runs once (first round) unless --naive-repeats.

Memory of the streaming path (``--memory``): for each n, a fresh subprocess streams batches of
generated features through MeanAccumulator (first pass), then CosAccumulator (mean-given),
StreamingLinearCKA and MinibatchCKA (second pass), never holding more than one batch; its RSS before
the second pass and its peak RSS during it (/proc/self/status VmRSS and VmHWM, the peak reset with
/proc/self/clear_refs just before the pass) are reported.

Command (results in benchmarks/results/metrics.md):
    .venv/bin/pip install --no-deps -c constraints.txt -r benchmarks/requirements.txt
    .venv/bin/python benchmarks/bench_similarity.py --repeats 5 --memory
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--layers", type=int, default=13)
    p.add_argument("--samples", type=int, default=10_000)
    p.add_argument("--dim", type=int, default=384)
    p.add_argument("--batch-size", type=int, default=256, help="minibatch size for torch-cka and MinibatchCKA")
    p.add_argument("--offset", type=float, default=0.5, help="scale of the per-layer mean offset of the features")
    p.add_argument("--repeats", type=int, default=3, help="interleaved rounds for the fast methods")
    p.add_argument("--naive-repeats", type=int, default=1, help="rounds (out of --repeats) that also run the naive loop")
    p.add_argument("--threads", type=int, default=1, help="torch / BLAS threads for every method")
    p.add_argument("--memory", action="store_true", help="also measure peak RSS of the streaming path")
    p.add_argument("--memory-samples", default="2000,10000,40000")
    p.add_argument("--memory-only", action="store_true", help="skip the timings, only measure streaming memory")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--_stream-child", type=int, default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


ARGS = parse_args()
for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[var] = str(ARGS.threads)
os.environ.setdefault("TQDM_DISABLE", "1")  # torch-cka's progress bar
os.environ.setdefault("MPLBACKEND", "Agg")  # torch-cka imports matplotlib

import numpy as np  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(ARGS.threads)

from _features import ResidualStream, replay_model  # noqa: E402  (benchmarks/_features.py; shared with bench_cka_peers.py)


# ----------------------------------------------------------------------------- inputs


# ----------------------------------------------------------------------------- methods


def torch_cka_setup(features: torch.Tensor, batch_size: int):
    """torch-cka's CKA object over a replay 'model' whose submodules emit our features."""
    import warnings

    from torch_cka import CKA

    model, names, loader = replay_model(features, batch_size)

    def run() -> np.ndarray:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            cka = CKA(model, model, "replay_a", "replay_b", model1_layers=names, model2_layers=names)
            cka.compare(loader)
        return cka.export()["CKA"].numpy().astype(np.float64)

    def replay_only() -> None:
        for (index,) in loader:
            model(index)
            model(index)

    return run, replay_only


def ours_minibatch(features: torch.Tensor, batch_size: int) -> np.ndarray:
    from layertrace.metrics import MinibatchCKA

    acc = MinibatchCKA(features.shape[0])
    for start in range(0, features.shape[1], batch_size):
        acc.update(features[:, start:start + batch_size])
    return acc.compute()


def naive_linear_cka(features: np.ndarray) -> np.ndarray:
    n_layers = features.shape[0]
    out = np.zeros((n_layers, n_layers))
    for l in range(n_layers):
        for m in range(n_layers):
            x = features[l] - features[l].mean(axis=0)
            y = features[m] - features[m].mean(axis=0)
            out[l, m] = np.linalg.norm(y.T @ x) ** 2 / (np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y))
    return out


def naive_cos(features: np.ndarray) -> np.ndarray:
    n_layers = features.shape[0]
    out = np.zeros((n_layers, n_layers))
    for l in range(n_layers):
        for m in range(n_layers):
            x = features[l] - features[l].mean(axis=0)
            y = features[m] - features[m].mean(axis=0)
            out[l, m] = np.mean(np.sum(x * y, axis=1) / (np.linalg.norm(x, axis=1) * np.linalg.norm(y, axis=1)))
    return out


def timed(fn):
    """(wall seconds, process CPU seconds, value). With one thread, CPU time is the work done and is
    less sensitive than wall time to other jobs sharing the cores."""
    wall, cpu = time.perf_counter(), time.process_time()
    value = fn()
    return time.perf_counter() - wall, time.process_time() - cpu, value


# ----------------------------------------------------------------------------- streaming memory


def _proc_status_mib(field: str) -> float:
    """VmRSS / VmHWM of this process from /proc (VmHWM is this address space's own peak; getrusage's
    ru_maxrss would also count the parent's memory inherited at fork)."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def stream_child(n_samples: int) -> None:
    """Stream n samples through every accumulator, one generated batch at a time; print RSS figures."""
    from layertrace.metrics import CosAccumulator, MeanAccumulator, MinibatchCKA, StreamingLinearCKA

    stream = ResidualStream(ARGS.layers, ARGS.dim, ARGS.offset, ARGS.seed)
    batch = ARGS.batch_size
    start_time = time.perf_counter()
    means = MeanAccumulator(ARGS.layers)
    for start in range(0, n_samples, batch):
        means.update(stream.batch(start, min(n_samples, start + batch)))
    cos = CosAccumulator(ARGS.layers, centers=means.compute())
    exact = StreamingLinearCKA(ARGS.layers, ARGS.dim)
    minibatch = MinibatchCKA(ARGS.layers)
    rss_before = _proc_status_mib("VmRSS")
    with open("/proc/self/clear_refs", "w") as fh:  # reset VmHWM: measure the streaming pass alone
        fh.write("5")
    for start in range(0, n_samples, batch):
        features = stream.batch(start, min(n_samples, start + batch))
        cos.update(features)
        exact.update(features)
        if features.shape[1] >= 4:
            minibatch.update(features)
    cos.compute(), exact.compute(), minibatch.compute()
    peak = _proc_status_mib("VmHWM")
    print(f"{n_samples} {rss_before:.1f} {peak:.1f} {time.perf_counter() - start_time:.1f}")


def memory_table() -> list[str]:
    lines = ["", "Streaming path, peak resident memory (one subprocess per n; batches generated on the fly):", "",
             "| samples n | features if held in memory (float32, MiB) | RSS before the streaming pass (MiB) "
             "| peak RSS during the streaming pass (MiB) | wall s (2 passes + generation) |",
             "|---:|---:|---:|---:|---:|"]
    for n in [int(v) for v in ARGS.memory_samples.split(",")]:
        cmd = [sys.executable, __file__, "--_stream-child", str(n)] + _forwarded_args()
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.split()
        held = ARGS.layers * n * ARGS.dim * 4 / 2**20
        lines.append(f"| {int(out[0]):,} | {held:.0f} | {out[1]} | {out[2]} | {out[3]} |")
    return lines


def _forwarded_args() -> list[str]:
    return ["--layers", str(ARGS.layers), "--dim", str(ARGS.dim), "--batch-size", str(ARGS.batch_size),
            "--offset", str(ARGS.offset), "--threads", str(ARGS.threads), "--seed", str(ARGS.seed)]


# ----------------------------------------------------------------------------- main


def main() -> None:
    if ARGS._stream_child is not None:
        stream_child(ARGS._stream_child)
        return
    if ARGS.memory_only:
        print("\n".join(memory_table()))
        return
    from layertrace.metrics import cos_matrix, linear_cka_matrix

    L, n, d, b = ARGS.layers, ARGS.samples, ARGS.dim, ARGS.batch_size
    features = ResidualStream(L, d, ARGS.offset, ARGS.seed).batch(0, n)
    features64 = features.double().numpy()
    torch_cka_run, replay_only = torch_cka_setup(features, b)

    methods = {
        "torch-cka 0.21 compare() (minibatch HSIC, per-pair loop)": torch_cka_run,
        "ours: MinibatchCKA, same batches": lambda: ours_minibatch(features, b),
        "ours: cos_matrix (mean-centred COS)": lambda: cos_matrix(features),
        "ours: linear_cka_matrix (exact)": lambda: linear_cka_matrix(features),
        "naive per-pair loop: exact linear CKA, float64": lambda: naive_linear_cka(features64),
        "naive per-pair loop: COS, float64": lambda: naive_cos(features64),
        "replay of features only (inside torch-cka's time)": replay_only,
    }
    naive = {k for k in methods if k.startswith("naive")}
    times: dict[str, list[float]] = {k: [] for k in methods}
    cpu_times: dict[str, list[float]] = {k: [] for k in methods}
    values: dict[str, np.ndarray] = {}
    for round_ in range(ARGS.repeats):
        order = list(methods) if round_ % 2 == 0 else list(reversed(methods))  # interleave, alternate order
        for name in order:
            if name in naive and round_ >= ARGS.naive_repeats:
                continue
            seconds, cpu_seconds, value = timed(methods[name])
            times[name].append(seconds)
            cpu_times[name].append(cpu_seconds)
            if value is not None:
                values[name] = value
        print(f"round {round_ + 1}/{ARGS.repeats} done", file=sys.stderr, flush=True)

    med = {k: float(np.median(v)) for k, v in times.items()}
    cpu_med = {k: float(np.median(v)) for k, v in cpu_times.items()}
    torch_cka_key = next(iter(methods))
    minibatch_key, cos_key, exact_key = list(methods)[1:4]
    naive_cka_key, naive_cos_key = list(methods)[4:6]
    combos = {
        "ours: MinibatchCKA + COS (all pairs)": [minibatch_key, cos_key],
        "ours: exact linear CKA + COS (all pairs)": [exact_key, cos_key],
        "naive: exact linear CKA + COS per pair": [naive_cka_key, naive_cos_key],
    }
    per_round_ratio = {
        combo: float(np.median([times[torch_cka_key][r] / sum(times[k][r] for k in keys)
                                for r in range(min(len(times[k]) for k in keys))]))
        for combo, keys in combos.items()
    }

    def err(a: str, ref: str) -> str:
        return f"{np.abs(values[a] - values[ref]).max():.1e}"

    print(f"\nInputs: float32 features ({L} layers, {n:,} samples, {d} dims), minibatch size {b} "
          f"({-(-n // b)} batches), {ARGS.threads} thread(s), {ARGS.repeats} interleaved rounds "
          f"(naive loop: {min(ARGS.naive_repeats, ARGS.repeats)}).\n")
    print("| method | median wall s | median CPU s | runs | torch-cka / this (wall) | torch-cka / this (CPU) | max abs diff |")
    print("|---|---:|---:|---:|---:|---:|---|")
    ref_err = {
        torch_cka_key: f"{err(torch_cka_key, minibatch_key)} vs ours (same batches)",
        minibatch_key: f"{err(minibatch_key, torch_cka_key)} vs torch-cka",
        cos_key: f"{err(cos_key, naive_cos_key)} vs naive float64",
        exact_key: f"{err(exact_key, naive_cka_key)} vs naive float64",
    }
    for name in methods:
        print(f"| {name} | {med[name]:.3f} | {cpu_med[name]:.3f} | {len(times[name])} | "
              f"{med[torch_cka_key] / med[name]:.1f}x | {cpu_med[torch_cka_key] / cpu_med[name]:.1f}x | "
              f"{ref_err.get(name, '')} |")
    for combo, keys in combos.items():
        total, cpu_total = sum(med[k] for k in keys), sum(cpu_med[k] for k in keys)
        print(f"| **{combo}** | {total:.3f} | {cpu_total:.3f} | | **{med[torch_cka_key] / total:.1f}x** "
              f"(per round: {per_round_ratio[combo]:.1f}x) | **{cpu_med[torch_cka_key] / cpu_total:.1f}x** | |")
    print(f"\nExact vs minibatch estimator on these data: max |linear_cka - MinibatchCKA| = "
          f"{err(exact_key, minibatch_key)} (different estimators, not an error).")
    if ARGS.memory:
        print("\n".join(memory_table()))


if __name__ == "__main__":
    main()
