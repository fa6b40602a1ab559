"""Self-speculative decoding vs full decoding vs HF ``assistant_early_exit`` vs CALM-style early exit.

Claim checked (issue 15): on the aligned demo LM (``run_lm_track``'s ``corpus-<family>-aligned``), our
self-speculative decoding (draft with blocks 1..k + the shared head, verify with the full model
reusing the draft's KV cache; k and gamma chosen from the run's ``analysis.json``) decodes greedy
text identical to full decoding at >= 1.3x its tokens/s at batch 1 and >= 1.15x at batch 8, and
faster than HF ``generate(..., assistant_early_exit=k)`` (batch 1 only, the same k). HF's plain greedy
``model.generate`` (what users run) is a reference row at every batch size; the headline ratio is
against our own full decoding, the faster of the two baselines here.

Method: greedy decoding of test-set prompts; for every repeat and every chunk of prompts (the batch),
all settings run back to back (interleaved), so machine noise hits them alike; tokens/s per setting
and repeat = its real generated tokens / its decoding time; speed-up per repeat = its tokens/s over
full decoding's in the same repeat; medians over repeats. Outputs are compared token for token with
full decoding (identical rows / all rows). Nothing else is timed (tokenisation, loading).

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_speculative.py --track /tmp/lm-track \
        --out benchmarks/results/speculative.md

``--track`` is the folder of ``layertrace.demo.lm_track.run_lm_track``; a trained and analysed run
folder of ``--mode`` in it is enough (the quick preset's track is created when there is none).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
from pathlib import Path

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


NAMES = {"full": "full decoding (ours)", "self-speculative": "self-speculative (ours)",
         "calm": "CALM-style early exit (ours, lossy)", "hf-generate": "HF generate (greedy, no assistant)",
         "hf-assistant-early-exit": "HF assistant_early_exit=k"}


def draft_agreement(adapter, prompts: torch.Tensor, new_tokens: int, drafts: list[tuple[int, ...]]) -> dict:
    """Agreement with the full model's greedy token of alternative lossless drafts, on the prompts'
    greedy continuation: a draft is a block sequence then the shared readout, e.g. (2,) = blocks 1..2
    (the issue's draft), (2, 8) = blocks 1..2 then block 8 (layer skipping, "Draft & Verify"-style:
    the skipped-to block attends to the verified cache of earlier positions); plus the full token's
    presence in layer k's top 2 (a two-branch tree draft's first position).

    Each generated position is decoded one token at a time with the true cache; a draft's own entry
    in a skipped-to block is computed, read, then replaced by the true one.
    """
    from layertrace.lm.generate import SamplingConfig, generate

    L = adapter.n_layers
    seqs = generate(adapter, prompts, max_new_tokens=new_tokens, sampling=SamplingConfig("greedy")).sequences
    p = prompts.shape[1]
    hits = {d: 0 for d in drafts}
    top2 = {k: 0 for k in range(1, 4)}
    n = 0
    with torch.no_grad():
        for row in range(seqs.shape[0]):
            s = seqs[row:row + 1]
            cache = adapter.new_cache()
            adapter.state_at({"input_ids": s[:, :p], "attention_mask": torch.ones(1, p, dtype=torch.long),
                              "past_key_values": cache}, L)
            for t in range(p, seqs.shape[1] - 1):  # the step on token t predicts token t + 1
                st = adapter.embed({"input_ids": s[:, t:t + 1], "attention_mask": torch.ones(1, t + 1, dtype=torch.long),
                                    "past_key_values": cache})
                states = {}
                for layer in range(1, L + 1):
                    st = states[layer] = adapter.block(layer, st)
                target = int(s[0, t + 1])
                n += 1
                for k in top2:
                    top2[k] += int(target in adapter.readout(states[k].hidden[:, -1]).topk(2).indices[0].tolist())
                for d in drafts:
                    h = states[d[0]]
                    for layer in d[1:]:
                        cache.layers[layer - 1].crop(-1)  # drop the true entry, run the draft's own
                        h = adapter.block(layer, h)
                        cache.layers[layer - 1].crop(-1)  # and put the true one back
                        adapter.block(layer, states[layer - 1])
                    hits[d] += int(int(adapter.readout(h.hidden[:, -1]).argmax()) == target)
    return {"positions": n, "drafts": {"+".join(map(str, d)): hits[d] / n for d in drafts},
            "top2": {str(k): v / n for k, v in top2.items()}}


def agreement_section(args, adapter, prompts, run_dir) -> str:
    """The Markdown section of ``--agreement``: draft agreement and the cost model's speed-up."""
    from layertrace.lm.draft_choice import expected_speedup
    from layertrace.lm.speculative import measure_step_costs

    L = adapter.n_layers
    drafts = [(k,) for k in range(1, L)] + [(k, L) for k in range(1, L - 1)] + [(1, L - 1, L)]
    res = draft_agreement(adapter, prompts, args.new_tokens, drafts)
    costs = measure_step_costs(adapter, prompts[:1], torch.ones_like(prompts[:1]))
    lines = [f"## Alternative drafts: agreement with the full model's greedy token ({args.mode} demo LM)", "",
             f"- command: `HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_speculative.py {' '.join(sys.argv[1:])}`",
             f"- model: {run_dir}; {prompts.shape[0]} test prompts of {prompts.shape[1]} tokens, their greedy "
             f"continuation of {args.new_tokens} tokens ({res['positions']} positions)",
             "- expected speed-up: the cost model (`expected_speedup`, costs measured at batch 1, best gamma in "
             "1..8, 32 new tokens) with a draft step costing its blocks (a skip draft of k blocks + block L "
             "costs k + 1)", "",
             "| draft | blocks per draft step | agreement | expected speed-up at batch 1 |", "|---|---|---|---|"]
    for name, a in res["drafts"].items():
        blocks = [int(x) for x in name.split("+")]
        per_step = blocks[0] + len(blocks) - 1  # blocks 1..k, then the skipped-to ones
        best = max(expected_speedup(a, blocks[0], g, L, costs=costs, new_tokens=32, draft_blocks=per_step)
                   for g in range(1, 9))
        lines.append(f"| blocks 1..{blocks[0]}" + "".join(f" + {x}" for x in blocks[1:]) + f" | {per_step} | {a:.3f} | {best:.2f}x |")
    lines += ["", "Full greedy token in layer k's top 2 (a two-branch tree's first draft position): "
              + ", ".join(f"layer {k} {v:.3f}" for k, v in res["top2"].items()) + ".", ""]
    return "\n".join(lines) + "\n"


def acceptance_needed(target: float, k: int, gamma: int, n_layers: int, costs, batch: int, new_tokens: int,
                      rows=None, lengths=None):
    """The smallest draft acceptance (a 0.01 grid) at which the cost model (``expected_speedup`` with
    these measured ``costs``) expects ``target`` x full decoding at (k, gamma); ``None`` if not even
    acceptance 1 does. ``rows``: the prompts' own layer-k rates (``measure_acceptance(per_row=True)``):
    they move together by the grid's steps (clipped to [0, 1]), and the mean of the first that reaches
    the target is returned; ``lengths``: the prompts' tokens before eos (``expected_speedup``'s)."""
    import numpy as np

    from layertrace.lm.draft_choice import expected_speedup

    base = np.zeros(1) if rows is None else np.asarray(rows, dtype=np.float64)
    for step in range(0 if rows is None else -100, 101):
        a = np.clip(base + step / 100, 0.0, 1.0)
        if expected_speedup(a, k, gamma, n_layers, costs=costs, batch=batch, new_tokens=new_tokens,
                            lengths=lengths) >= target:
            return float(a.mean())
    return None


def call_breakdown(adapter, chunks: list[torch.Tensor], decoders: dict, repeats: int) -> dict:
    """Where each decoder's time goes: seconds per ``adapter.embed`` / ``readout`` call and per
    ``adapter.block`` call by the number m of new positions it runs on (m = 1: a decoding or draft
    step, m = gamma + 1: a verify window, m = the prompt length: the prefill); the rest of the
    decoder's own time is its loop. ``decoders`` maps a name to ``fn(ids) -> GenerationResult``; after
    one warm-up pass, every repeat runs every decoder on every (B, P) chunk, interleaved (all
    decoders back to back per chunk), like the decoder comparison.

    Returns {name: {"total": seconds, "tokens": generated tokens, "calls": {key: [calls, seconds]}}}.
    """
    from layertrace.lm.speculative import timed_adapter_calls

    for ids in chunks:  # warm-up: the decode path learns its cases
        for fn in decoders.values():
            fn(ids)
    out = {name: {"total": 0.0, "tokens": 0, "calls": {}} for name in decoders}
    current: list[dict] = [{}]  # the calls dict of the decoder now running

    def record(kind: str, args: tuple, seconds: float) -> None:
        key = f"block, m = {args[1].hidden.shape[1]}" if kind == "block" else kind
        acc = current[0].setdefault(key, [0, 0.0])
        acc[0] += 1
        acc[1] += seconds

    with timed_adapter_calls(adapter, record):
        for _ in range(max(1, repeats)):
            for ids in chunks:
                for name, fn in decoders.items():
                    current[0] = out[name]["calls"]
                    res = fn(ids)
                    out[name]["total"] += res.seconds
                    out[name]["tokens"] += res.n_generated
    return out


def breakdown_section(args, adapter, prompts, run_dir) -> str:
    """The Markdown section of ``--breakdown``: full decoding's and self-speculative decoding's time per
    generated token, split by adapter call (``call_breakdown``), per batch size."""
    from layertrace.lm.generate import SamplingConfig, generate
    from layertrace.lm.speculative import self_speculative_generate

    greedy = SamplingConfig("greedy")
    n = args.new_tokens
    lines = [f"## Where the time goes: full vs self-speculative decoding by adapter call ({args.mode} demo LM)", "",
             f"- command: `HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_speculative.py {' '.join(sys.argv[1:])}`",
             f"- machine: {os.cpu_count()}-core CPU (load average {os.getloadavg()[0]:.1f} at the start), torch "
             f"{torch.__version__}, {torch.get_num_threads()} thread(s); date {datetime.date.today()}",
             f"- model: {run_dir}; {prompts.shape[0]} test prompts of {prompts.shape[1]} tokens, {n} new tokens "
             f"(no eos), greedy, {args.repeats} interleaved passes over the prompts per decoder; calls and ms "
             "per step of the batch (generated tokens / batch size: one token of every row), and the share of "
             "the decoder's time; `block, m = ...`: `adapter.block` on m new positions per row (m = 1: a "
             f"decoding or draft step; m = gamma + 1: a verify window; m = {prompts.shape[1]}: the prefill); loop = the rest (the decoder's own bookkeeping, and a draft "
             "step's sliced embed)", ""]
    k, g = args.k or 1, args.gamma or 2
    for batch in [int(b) for b in args.batch_sizes.split(",")]:
        chunks = [prompts[i:i + batch] for i in range(0, prompts.shape[0], batch)]
        decoders = {"full": lambda i: generate(adapter, i, torch.ones_like(i), max_new_tokens=n, sampling=greedy),
                    f"self-speculative (k = {k}, gamma = {g})": lambda i: self_speculative_generate(
                        adapter, i, torch.ones_like(i), draft_layer=k, gamma=g, max_new_tokens=n, sampling=greedy)}
        res = call_breakdown(adapter, chunks, decoders, args.repeats)
        keys = sorted({key for r in res.values() for key in r["calls"]},
                      key=lambda s: (not s.startswith("block"), int(s.rsplit("= ", 1)[1]) if s.startswith("block") else 0, s))
        names = list(res)
        lines += [f"### batch size {batch}", "",
                  "| call | " + " | ".join(f"{nm}: calls, ms per batch step (share)" for nm in names) + " |",
                  "|---|" + "---|" * len(names)]
        for key in keys + ["loop", "total"]:
            cells = []
            for nm in names:
                r = res[nm]
                inside = sum(s for _, s in r["calls"].values())
                if key == "total":
                    calls, secs = None, r["total"]
                elif key == "loop":
                    calls, secs = None, r["total"] - inside
                else:
                    calls, secs = r["calls"].get(key, [0, 0.0])
                steps = r["tokens"] / batch
                share = secs / r["total"]
                cells.append((f"{calls / steps:.2f}, " if calls is not None else "") + f"{secs / steps * 1e3:.3f} ({share:.0%})")
            lines.append(f"| {key} | " + " | ".join(cells) + " |")
        full, spec = (res[nm] for nm in names)
        lines += ["", f"Self-speculative / full tokens/s: {(spec['tokens'] / spec['total']) / (full['tokens'] / full['total']):.2f}x "
                  "(the instrumented runs, interleaved; the timers add a little to every call, so the "
                  "decoder comparison's ratio is the one to quote).", ""]
        print("\n".join(lines[-(len(keys) + 8):]), flush=True)
    return "\n".join(lines) + "\n"


def sweep_section(args, adapter, prompts, run_dir, eos_id: int | None) -> str:
    """The Markdown section of ``--sweep``: measured speed-up of every (k, gamma) against the cost
    model's (what ``choose_draft`` maximises), per batch size, interleaved like the decoders."""
    import statistics

    from layertrace.lm.generate import SamplingConfig, generate
    from layertrace.lm.speculative import (choose_draft, expected_speedup, measure_acceptance, measure_step_costs,
                                           self_speculative_generate)

    greedy = SamplingConfig("greedy")
    n = args.new_tokens
    eos = None if args.no_eos else eos_id
    configs = [tuple(int(x) for x in c.split(",")) for c in args.sweep.split(";")]
    rates, lengths = measure_acceptance(adapter, prompts, torch.ones_like(prompts), new_tokens=n, per_row=True,
                                        eos_token_id=eos, with_lengths=True)
    lengths = lengths if eos is not None else None
    lines = [f"## Sweep of (k, gamma): measured vs the cost model ({args.mode} demo LM)", "",
             f"- command: `HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_speculative.py {' '.join(sys.argv[1:])}`",
             f"- machine: {os.cpu_count()}-core CPU (load average {os.getloadavg()[0]:.1f} "
             f"at the start), torch {torch.__version__}, {torch.get_num_threads()} thread(s)",
             f"- model: {run_dir}; {prompts.shape[0]} test prompts of {prompts.shape[1]} tokens, {n} new tokens "
             f"({'eos ignored: every row decodes all of them' if eos is None else 'eos stops a row'}), greedy; "
             f"median of {args.repeats} interleaved repeats of full decoding and every "
             "(k, gamma); model = `expected_speedup` with each prompt's acceptance measured on its greedy "
             "continuation (`measure_acceptance(per_row=True)`; the agreement column is their mean"
             + ("" if eos is None else "; with each prompt's length before eos, `lengths`")
             + ") and the costs measured on the first chunk (`measure_step_costs`)",
             ""]
    for batch in [int(b) for b in args.batch_sizes.split(",")]:
        chunks = [prompts[i:i + batch] for i in range(0, prompts.shape[0], batch)]
        costs = measure_step_costs(adapter, chunks[0], torch.ones_like(chunks[0]))
        choice = choose_draft(rates, adapter.n_layers, costs=costs, batch=batch, new_tokens=n, lengths=lengths)
        target = 1.3 if batch == 1 else 1.15  # issue 15's targets
        fns = {"full": lambda i: generate(adapter, i, torch.ones_like(i), max_new_tokens=n, sampling=greedy,
                                          eos_token_id=eos)}
        for k, g in configs:
            fns[(k, g)] = (lambda k, g: lambda i: self_speculative_generate(
                adapter, i, torch.ones_like(i), draft_layer=k, gamma=g, max_new_tokens=n, sampling=greedy,
                eos_token_id=eos))(k, g)
        for fn in fns.values():  # warm-up
            fn(chunks[0])
        speeds = {name: [] for name in fns}
        acc = {name: [] for name in fns}
        same = {name: 0 for name in fns}
        for rep in range(max(1, args.repeats)):
            totals = {name: [0, 0.0] for name in fns}
            for ids in chunks:
                ref = None
                for name, fn in fns.items():
                    res = fn(ids)
                    totals[name][0] += res.n_generated
                    totals[name][1] += res.seconds
                    if name == "full":
                        ref = res.new_tokens * res.new_mask
                    elif rep == 0:
                        acc[name].append(res.stats["acceptance"])
                        got = (res.new_tokens * res.new_mask)[:, :ref.shape[1]]  # full decoding stops when all rows hit eos
                        same[name] += int(((got == ref).all(1) & (res.new_mask[:, ref.shape[1]:] == 0).all(1)).sum())
            for name in fns:
                speeds[name].append(totals[name][0] / totals[name][1])
        lines += [f"### batch size {batch}", "",
                  f"choose_draft picks k = {choice.draft_layer}, gamma = {choice.gamma} (expected "
                  f"{choice.expected_speedup:.2f}x); full decoding {statistics.median(speeds['full']):.0f} tokens/s.", "",
                  "| k, gamma | measured speed-up | model | measured acceptance | rows identical | layer-k agreement | "
                  f"agreement the model needs for {target:.2f}x |", "|---|---|---|---|---|---|---|"]
        for k, g in configs:
            ratio = statistics.median(a / b for a, b in zip(speeds[(k, g)], speeds["full"]))
            model = expected_speedup(rates[k], k, g, adapter.n_layers, costs=costs, batch=batch, new_tokens=n,
                                     lengths=lengths)
            need = acceptance_needed(target, k, g, adapter.n_layers, costs, batch, n, rows=rates[k], lengths=lengths)
            lines.append(f"| {k}, {g} | {ratio:.2f}x | {model:.2f}x | {statistics.fmean(acc[(k, g)]):.3f} | "
                         f"{same[(k, g)]}/{prompts.shape[0]} | {rates[k].mean():.3f} | "
                         + (f"{need:.2f}" if need is not None else "none <= 1") + " |")
        lines.append("")
        print("\n".join(lines[-(len(configs) + 6):]), flush=True)
    return "\n".join(lines) + "\n"


def run(args) -> str:
    from layertrace.data import load_text_corpus
    from layertrace.errors import LayertraceError
    from layertrace.demo.lm_track import find_run, make_prompts, run_lm_track
    from layertrace.lm.speculative import compare_decoders
    from layertrace.models import load_model

    track = Path(args.track)
    try:  # a trained, analysed run of this mode is enough (the whole track is not needed)
        run_dir = find_run(track, args.mode)
        if not (run_dir / "analysis.json").is_file():
            raise FileNotFoundError(run_dir / "analysis.json")
    except (LayertraceError, FileNotFoundError):
        run_lm_track(track, "quick", threads=args.threads)
        run_dir = find_run(track, args.mode)
    torch.set_num_threads(args.threads)
    loaded = load_model(run_dir)
    adapter, tok = loaded.adapter.eval(), loaded.tokenizer
    docs = load_text_corpus(track / "lm-corpus", "test", shuffle=False)
    prompts = make_prompts(tok, docs, args.prompts, args.prompt_tokens, seed=1)
    if args.agreement:
        text = agreement_section(args, adapter, prompts, run_dir)
        print(text, flush=True)
        return text
    if args.sweep:
        return sweep_section(args, adapter, prompts, run_dir, tok.eos_token_id)
    if args.breakdown:
        return breakdown_section(args, adapter, prompts, run_dir)
    load = os.getloadavg()[0]
    analysis = run_dir if args.acceptance == "analysis" else "measure"
    res = compare_decoders(adapter, prompts, draft_layer=args.k, gamma=args.gamma, analysis=analysis, tau=args.tau,
                           batch_sizes=[int(b) for b in args.batch_sizes.split(",")], repeats=args.repeats,
                           max_new_tokens=args.new_tokens, confidence=args.confidence,
                           eos_token_id=None if args.no_eos else int(tok.eos_token_id))
    c = res["choice"]
    lines = [
        f"## Self-speculative decoding vs full, HF assistant_early_exit and CALM-style exit ({args.mode} demo LM)",
        "",
        f"- command: `HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_speculative.py {' '.join(sys.argv[1:])}`",
        f"- machine: {os.cpu_count()}-core CPU, device {adapter.device} (load average {load:.1f} at the start, "
        f"{os.getloadavg()[0]:.1f} at the end), torch {torch.__version__}, {torch.get_num_threads()} thread(s), "
        f"Python {platform.python_version()}; date {datetime.date.today()}",
        f"- model: {run_dir} ({adapter.n_layers} layers, d={adapter.hidden_size}, vocab {adapter.num_outputs}, "
        f"{type(loaded.model).__name__}); greedy; {args.prompts} test prompts of {args.prompt_tokens} tokens, "
        f"{args.new_tokens} new tokens ({'eos ignored: every row decodes all of them' if args.no_eos else 'eos stops a row'}); median of {args.repeats} interleaved repeats",
        ("- draft: k and gamma given with --k / --gamma" if c["source"] == "given" else
         "- draft: k and gamma chosen per batch size by `choose_draft` from the per-layer acceptance ("
         + ("the analysis pass's agreement with the last layer, `final_agreement`"
            if args.acceptance == "analysis" else
            "measured per prompt on its greedy continuation, `measure_acceptance(per_row=True)`"
            + ("" if args.no_eos else ", stopped at eos like decoding, with each prompt's length (`lengths`)"))
         + ") and the cost model calibrated on the first chunk of that batch size (`measure_step_costs`)")
        + f"; ours stops drafting below draft confidence {args.confidence} (0 = off); HF gets ours' batch-1 "
        f"k (with its own draft-length schedule and confidence threshold); CALM tau = {res['tau']}",
    ]
    if res["hf_error"]:
        lines.append(f"- HF assistant_early_exit failed on this model: `{res['hf_error'][:200]}`")
    lines.append("")
    for batch, table in res["batches"].items():
        own = table["self-speculative"]
        ch = own["choice"]
        if own.get("decoder") == "full":
            draft = (f"Draft: none, full decoding (the best, k = {ch['draft_layer']}, gamma = {ch['gamma']}, "
                     f"is expected below 1x)")
        else:
            draft = f"Draft: k = {own['draft_layer']}, gamma = {own['gamma']}"
        if ch["source"] != "given":
            co = ch["costs"]
            blocks = ", ".join(f"{c:.2f}" for c in co.get("block_costs", []))
            draft += (f" (acceptance {ch['acceptance']:.3f} at layer k from the {ch['source']}, expected "
                      f"{ch['expected_speedup']:.2f}x; costs {co['source']}, in blocks: a block on 1..m new tokens "
                      f"[{blocks}], readout {co['readout_cost']:.2f}, embed {co['embed_cost']:.2f}, draft-step embed "
                      f"{co.get('step_embed_cost', 0):.2f}, loop {co.get('loop_cost', 0):.2f} per token, round "
                      f"{co.get('round_cost', 0):.2f}, prefill {co.get('prefill_cost', 0):.1f})")
        lines += [f"### batch size {batch}", "", draft + ".", "",
                  "| decoder | tokens/s | speed-up vs full (median of per-repeat ratios) | rows identical to full greedy |",
                  "|---|---|---|---|"]
        for name, row in table.items():
            lines.append(f"| {NAMES.get(name, name)} | {row['tokens_per_s']:.1f} | {row['speedup']:.2f}x | "
                         f"{row['identical']}/{row['rows']} |")
        if "acceptance" in table.get("self-speculative", {}):
            lines += ["", f"Measured draft acceptance (ours): {table['self-speculative']['acceptance']:.3f}."]
        lines.append("")
        print("\n".join(lines[-(len(table) + 8):]), flush=True)
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--track", default="/tmp/lm-track", help="run_lm_track folder (created if missing)")
    ap.add_argument("--mode", default="aligned", choices=["aligned", "standard"])
    ap.add_argument("--k", type=int, default=None, help="draft layer (default: chosen from analysis.json)")
    ap.add_argument("--gamma", type=int, default=None, help="draft length (default: chosen)")
    ap.add_argument("--acceptance", default="measure", choices=["measure", "analysis"],
                    help="per-layer acceptance for the choice: measured on the prompts' greedy continuation "
                         "(default) or the run's analysis.json agreement with the last layer (on test text)")
    ap.add_argument("--confidence", type=float, default=0.0,
                    help="ours: stop a round's drafting when no row's draft probability reaches it (0 = off)")
    ap.add_argument("--tau", type=float, default=0.4, help="CALM-style exit threshold (softmax confidence)")
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--prompt-tokens", type=int, default=16)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--batch-sizes", default="1,8")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-eos", action="store_true", help="decode max new tokens per row (eos does not stop it)")
    ap.add_argument("--agreement", action="store_true",
                    help="instead of timing decoders: agreement of alternative drafts (layer skipping, top 2) "
                         "with the full model's greedy token and their expected speed-up")
    ap.add_argument("--sweep", default=None, metavar="K,G;K,G;...",
                    help="instead of the decoder comparison: these (k, gamma) side by side with full decoding, "
                         "measured against the cost model (eos stops a row unless --no-eos)")
    ap.add_argument("--breakdown", action="store_true",
                    help="instead of the decoder comparison: full and self-speculative decoding (--k / --gamma, "
                         "default 1 / 2) timed per adapter call (block by new positions, embed, readout, loop)")
    ap.add_argument("--out", default=None, help="write the Markdown section to this file")
    args = ap.parse_args()
    text = run(args)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
