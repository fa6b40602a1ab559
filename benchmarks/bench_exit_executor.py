"""Demo-size early-exit executor, old vs new side by side, and the replay bound (issue 15).

Per trained run folder: the first 64 test samples as one batch (and the first 8 one at a time),
the default confidence sweep. Every round runs, per batch: the model's own forward, the adapter's
block-by-block forward, then per threshold the OLD executor (``--old COMMIT``: exits/executor.py and
policies.py of that commit, loaded from git into this process), the NEW one (this checkout) and a
REPLAY of the same exits: embed, the blocks on the samples still running, one readout per group of
leavers, index sets precomputed. No per-layer readout, decision or sync: the replay is a lower
bound of any per-batch executor on this adapter (what is left is the embedding, paid in full, and
blocks on the few samples left in deep layers). Speed-up = median over rounds of baseline / x of
the same round (the baseline: the faster full forward by median); ratio = speed-up / the layer
speed-up of the timed samples. CPU time of the one torch thread (``--clock cpu``) or wall time.

    PYTHONPATH=src .venv/bin/python benchmarks/bench_exit_executor.py \\
        --runs /tmp/demo/fmnist-vit-aligned:fashion-mnist,/tmp/demo/rt-minilm-aligned:rotten-tomatoes \\
        --old 5359db2 --rounds 5 --out benchmarks/results/exit_executor.md
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import subprocess
import sys
import time
import types
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
THRESHOLDS = [0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.99, 1.01]


def load_old_executor(commit: str):
    """``run_early_exit`` of ``commit`` (its executor.py + policies.py), imported beside this checkout's:
    its relative imports resolve in the current ``layertrace.exits`` package (errors, models.base)."""
    import layertrace.exits  # noqa: F401  (the package the old modules live in)

    modules = {}
    for name in ("policies", "executor"):
        source = subprocess.run(["git", "-C", str(ROOT), "show", f"{commit}:src/layertrace/exits/{name}.py"],
                                check=True, capture_output=True, text=True).stdout
        source = source.replace("from .policies import", "from ._old_policies import")
        module = types.ModuleType(f"layertrace.exits._old_{name}")
        module.__package__ = "layertrace.exits"
        sys.modules[module.__name__] = module
        exec(compile(source, f"<{commit}:exits/{name}.py>", "exec"), module.__dict__)
        modules[name] = module
    return modules["executor"].run_early_exit


def replay_plan(exit_layers: torch.Tensor, n_layers: int) -> list:
    """Per layer: None (nobody leaves) or (leaving positions, staying positions) within the running set."""
    running = torch.arange(exit_layers.shape[0])
    plan = []
    for layer in range(1, n_layers + 1):
        stay = exit_layers[running] > layer
        if bool(stay.all()):
            plan.append(None)
            continue
        plan.append(((~stay).nonzero().squeeze(1), stay.nonzero().squeeze(1)))
        running = running[stay]
        if running.numel() == 0:
            break
    return plan


def replay(adapter, batch, plan) -> None:
    """The exits of ``plan`` with no decisions: blocks on the running samples, a readout per leaving group."""
    state = adapter.embed(batch)
    for layer, step in enumerate(plan, start=1):
        state = adapter.block(layer, state)
        if step is None:
            continue
        leave, stay = step
        adapter.readout(adapter.features(state)[leave])
        if stay.numel() == 0:
            return
        state = state.select(stay)


def planned_policy(base, plans: dict):
    """A causal policy (subclass of ``base``, an ExitPolicy class) whose threshold names a plan: each sample
    exits at its planned layer (``plans[threshold]``, one (B,) tensor per call, cycled); it computes the
    max softmax probability as the confidence rule does (same cost)."""
    import itertools

    class Planned(base):
        name = "planned"

        def start(self, batch_size, device="cpu"):
            return {"plan": next(self._cycle)}

        def decide(self, layer, logits, thresholds, carry):
            conf = torch.softmax(logits.float(), dim=-1).amax(dim=-1)
            return (carry["plan"] <= layer) | (conf > 2.0), carry

    policy = Planned()
    policy.plans = plans

    def use(thr):
        policy._cycle = itertools.cycle([plans[thr]])
        return policy

    return use


def measure(adapter, batches, old, new, rounds: int, clock, policy_for=None) -> list[dict]:
    """Interleaved rounds over ``batches``; per threshold the paired speed-ups of old, new and replay.
    ``policy_for(executor, thr)``: the policy object to pass (default the confidence rule)."""
    from layertrace.exits import speedup

    n_layers = adapter.n_layers
    pol = policy_for or (lambda which, thr: "confidence")
    with torch.no_grad():
        for b in batches:  # warm-up of the full forwards
            adapter.model_logits(b)
            adapter.forward(b)
        rows = []
        for thr in THRESHOLDS:
            outs_old = [old(adapter, b, pol("old", thr), thr) for b in batches]
            outs_new = [new(adapter, b, pol("new", thr), thr) for b in batches]
            for a, c in zip(outs_old, outs_new):  # same exits, same logits: the new executor changes no result
                assert torch.equal(a.exit_layers, c.exit_layers) and torch.allclose(a.logits, c.logits), thr
            exits = torch.cat([o.exit_layers for o in outs_new])
            rows.append({"threshold": thr, "layer": speedup(exits, n_layers),
                         "plans": [replay_plan(o.exit_layers.cpu(), n_layers) for o in outs_new]})
        sides = {"model": lambda b, i, r: adapter.model_logits(b), "layerwise": lambda b, i, r: adapter.forward(b)}
        seconds = {k: [] for k in sides}
        for row in rows:
            row.update(old=[], new=[], replay=[])
        for _ in range(rounds):
            totals = dict.fromkeys(sides, 0.0)
            per = [dict(old=0.0, new=0.0, replay=0.0) for _ in rows]
            for j, b in enumerate(batches):
                for k, f in sides.items():
                    start = clock()
                    f(b, j, None)
                    totals[k] += clock() - start
                for i, row in enumerate(rows):
                    thr = row["threshold"]
                    for k, f in (("old", lambda: old(adapter, b, pol("old", thr), thr)),
                                 ("new", lambda: new(adapter, b, pol("new", thr), thr)),
                                 ("replay", lambda: replay(adapter, b, row["plans"][j]))):
                        start = clock()
                        f()
                        per[i][k] += clock() - start
            for k in sides:
                seconds[k].append(totals[k])
            for i, row in enumerate(rows):
                for k in ("old", "new", "replay"):
                    row[k].append(per[i][k])
    base = min(seconds, key=lambda k: statistics.median(seconds[k]))
    ref = seconds[base]
    out = []
    for row in rows:
        entry = {"threshold": row["threshold"], "layer": row["layer"], "baseline": base,
                 "full_ms": statistics.median(ref) * 1e3 / len(batches)}
        for k in ("old", "new", "replay"):
            entry[k] = statistics.median(r / x for r, x in zip(ref, row[k]))
        out.append(entry)
    return out


def planned_section(args, old, new, clock) -> list[str]:
    """The exits of a trained run replayed on a random-init preset (a shape no trained run exists of)."""
    from layertrace.exits.executor import run_early_exit
    from layertrace.exits.policies import ExitPolicy
    from layertrace.exits.run import ExitConfig, _load
    from layertrace.models import load_model

    preset, run_dir, data = args.planned.split(":")
    source = _load(ExitConfig(model=run_dir, data=data, measure=False))
    first = source.adapter.model_inputs(source.batches[0])
    with torch.no_grad():
        plans = {thr: run_early_exit(source.adapter, first, "confidence", thr).exit_layers for thr in THRESHOLDS}
    adapter = load_model(preset, num_classes=10, seed=0).adapter.eval()
    if adapter.n_layers != source.adapter.n_layers:
        raise SystemExit(f"{preset} has {adapter.n_layers} blocks, the run {source.adapter.n_layers}")
    batch = [adapter.model_inputs({"pixel_values": source.batches[0]["pixel_values"]})]
    policies = {"new": planned_policy(ExitPolicy, plans),
                "old": planned_policy(sys.modules["layertrace.exits._old_policies"].ExitPolicy, plans)}
    rows = measure(adapter, batch, old, new, args.rounds, clock, lambda which, thr: policies[which](thr))
    lines = [f"**{preset}** ({adapter.n_layers} x {adapter.hidden_size}, random init), batch 64, each sample exiting "
             f"where `{Path(run_dir).name}`'s executor exits it at that threshold (planned policy that still computes "
             f"the confidence), full model {rows[0]['full_ms']:.1f} ms per batch ({rows[0]['baseline']}):", "",
             "| threshold (of the run) | layer speed-up | old | new | replay bound |", "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['threshold']:g} | {r['layer']:.2f}x | {r['old']:.2f}x ({r['old'] / r['layer']:.2f}) "
                     f"| {r['new']:.2f}x (**{r['new'] / r['layer']:.2f}**) | {r['replay']:.2f}x ({r['replay'] / r['layer']:.2f}) |")
    print("\n".join(lines), flush=True)
    return lines + [""]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", default="", help="comma list of RUN_DIR:DATA")
    ap.add_argument("--old", default="5359db2", help="commit of the old executor")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--batch1", type=int, default=8, help="samples timed one at a time (0: skip)")
    ap.add_argument("--clock", default="cpu", choices=["cpu", "wall"])
    ap.add_argument("--planned", default=None, help="PRESET:RUN_DIR:DATA: a random-init preset of the run's depth, "
                    "each sample exiting where the run's executor exits it (the run's first 64 test samples)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    from layertrace.exits.executor import run_early_exit as new
    from layertrace.exits.run import ExitConfig, _load

    torch.set_num_threads(1)
    clock = time.thread_time if args.clock == "cpu" else time.perf_counter
    old = load_old_executor(args.old)
    load = os.getloadavg()[0]
    lines = ["# Early exit at demo size: the executor before and after issue 15, and the replay bound", "",
             f"Command: `python benchmarks/bench_exit_executor.py {' '.join(sys.argv[1:])}`  ",
             f"Machine: 2-core CPU, no GPU, torch {torch.__version__}, 1 torch thread, shared with other jobs (load "
             f"average {load:.1f} at the start); Python {platform.python_version()}; date {datetime.date.today()}; "
             f"clock `{args.clock}`; {args.rounds} interleaved rounds, paired medians. Old = commit `{args.old}` "
             "(exits/executor.py + policies.py), new = this commit, replay = the same exits with no decision "
             "(the lower bound of a per-batch executor). Ratio = measured / layer speed-up of the timed samples.", ""]
    for spec in filter(None, args.runs.split(",")):
        run_dir, data = spec.rsplit(":", 1)
        loaded = _load(ExitConfig(model=run_dir, data=data, measure=True, measure_samples_batch1=args.batch1))
        adapter = loaded.adapter
        inputs64 = [adapter.model_inputs(loaded.batches[0])]
        with torch.no_grad():
            tokens = adapter.embed(inputs64[0]).hidden.shape[1]
        shape = f"{adapter.n_layers} x {adapter.hidden_size}, {tokens} tokens"
        for label, batches in (("64", inputs64), ("1", [adapter.model_inputs(b) for b in (loaded.batch1 or [])])):
            if not batches:
                continue
            rows = measure(adapter, batches, old, new, args.rounds, clock)
            lines += [f"**{Path(run_dir).name}** ({shape}), batch {label} ({sum(int(next(iter(b.values())).shape[0]) for b in batches)} samples), "
                      f"full model {rows[0]['full_ms']:.1f} ms per batch ({rows[0]['baseline']}):", "",
                      "| threshold | layer speed-up | old | new | replay bound |", "|---|---|---|---|---|"]
            for r in rows:
                lines.append(f"| {r['threshold']:g} | {r['layer']:.2f}x | {r['old']:.2f}x ({r['old'] / r['layer']:.2f}) "
                             f"| {r['new']:.2f}x (**{r['new'] / r['layer']:.2f}**) | {r['replay']:.2f}x ({r['replay'] / r['layer']:.2f}) |")
            lines.append("")
            print("\n".join(lines[-len(rows) - 4:]), flush=True)
    if args.planned:
        lines += planned_section(args, old, new, clock)
    text = "\n".join(lines) + "\n"
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
