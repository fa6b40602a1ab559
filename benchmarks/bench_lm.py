"""Early-exit decoding vs full-depth decoding on the demo LM, measured side by side.

Claim checked (issue 9): on the demo LM (the aligned GPT-2 of ``run_lm_track``), early-exit decoding
(CALM-style: each token stops at the first layer whose readout confidence reaches tau; the skipped
layers' KV cache is filled from the copied exit state) decodes faster than full-depth decoding at
the tau where the perplexity of its output (under the full model) rises by at most 10%.

Method: nucleus sampling (p = 0.95, seeded; the paper's generation setting) or greedy decoding of
test-set prompts, batch 1 (and optionally a larger batch). For every
repeat and every prompt, the full-depth run and one run per tau execute back to back, so machine
noise hits all settings alike; tokens/s per setting and repeat = its tokens / its decoding time, the
speed-up per repeat = its tokens/s over full decoding's in the same repeat, reported as the median
over repeats. Nothing else is timed (tokenisation, perplexity scoring).

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_lm.py --track /tmp/lm-track --repeats 5 \
        --out benchmarks/results/lm.md

``--track`` is the folder of ``layertrace.demo.lm_track.run_lm_track`` (created with the quick preset
when it does not hold ``lm.json`` yet).
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


def _fmt(x, nd=3):
    return "n/a" if x is None else (f"{x:.{nd}f}" if isinstance(x, float) else str(x))


def run(args) -> str:
    from layertrace.data import load_text_corpus
    from layertrace.demo.lm_track import find_run, make_prompts, run_lm_track
    from layertrace.lm.early_exit import early_exit_sweep
    from layertrace.lm.generate import SamplingConfig
    from layertrace.models import load_model

    track = Path(args.track)
    if not (track / "lm.json").is_file():
        run_lm_track(track, "quick", threads=args.threads)
    if args.threads:
        torch.set_num_threads(args.threads)
    loaded = load_model(find_run(track, args.mode))
    tok = loaded.tokenizer
    docs = load_text_corpus(track / "lm-corpus", "test", shuffle=False)
    prompts = make_prompts(tok, docs, args.prompts, args.prompt_tokens, seed=1)
    taus = [float(t) for t in args.taus.split(",")]
    lines = [
        f"## Early-exit decoding vs full decoding ({args.mode} demo LM)",
        "",
        f"- command: `HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_lm.py {' '.join(sys.argv[1:])}`",
        f"- machine: 2-core CPU, no GPU (shared with other jobs), torch {torch.__version__}, "
        f"{torch.get_num_threads()} thread(s), Python {platform.python_version()}; date {datetime.date.today()}",
        f"- model: {find_run(track, args.mode)} ({loaded.adapter.n_layers} layers, "
        f"d={loaded.adapter.hidden_size}, vocab {loaded.adapter.num_outputs}); {args.sampling} decoding "
        f"({'p = 0.95, seed 0, the same draws for every setting' if args.sampling == 'nucleus' else 'argmax'}); "
        f"{args.prompts} test prompts of "
        f"{args.prompt_tokens} tokens, {args.new_tokens} new tokens; confidence = {args.confidence}; "
        f"median of {args.repeats} interleaved repeats",
        "",
    ]
    for batch_size in [int(b) for b in args.batch_sizes.split(",")]:
        sampling = SamplingConfig(args.sampling, top_p=0.95, seed=0)
        sweep = early_exit_sweep(loaded.adapter, prompts, taus=taus, confidence=args.confidence, sampling=sampling,
                                 max_new_tokens=args.new_tokens, batch_size=batch_size, repeats=args.repeats,
                                 decode=lambda ids: tok.decode(ids, skip_special_tokens=True))
        full = sweep["full"]
        lines += [f"### batch size {batch_size}", "",
                  "| tau | tokens/s | speed-up (measured) | mean exit layer | layer speed-up | perplexity | ppl ratio | diversity |",
                  "|---|---|---|---|---|---|---|---|",
                  f"| full | {full['tokens_per_s']:.1f} | 1.00 | {full['avg_exit_layer']:.2f} | 1.00 | "
                  f"{full['perplexity']:.2f} | 1.00 | {_fmt(full['diversity'])} |"]
        for p in sweep["points"]:
            lines.append(f"| {p['tau']} | {p['tokens_per_s']:.1f} | {p['speedup_measured']:.2f} | "
                         f"{p['avg_exit_layer']:.2f} | {p['layer_speedup']:.2f} | {p['perplexity']:.2f} | "
                         f"{p['perplexity_ratio']:.2f} | {_fmt(p['diversity'])} |")
        sel = sweep["selected"]
        lines += ["", (f"**Selected** (highest measured speed with perplexity <= 1.10x full): tau = {sel['tau']}: "
                       f"{sel['speedup_measured']:.2f}x tokens/s ({sel['tokens_per_s']:.1f} vs {full['tokens_per_s']:.1f}), "
                       f"mean exit layer {sel['avg_exit_layer']:.2f} of {sweep['n_layers']}, perplexity x"
                       f"{sel['perplexity_ratio']:.2f}." if sel else
                       "**No tau** keeps perplexity within 1.10x of full decoding."), ""]
        print("\n".join(lines[-(len(sweep['points']) + 6):]), flush=True)
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--track", default="/tmp/lm-track", help="run_lm_track folder (created if missing)")
    ap.add_argument("--mode", default="aligned", choices=["aligned", "standard"])
    ap.add_argument("--taus", default="0.02,0.05,0.1,0.2,0.4,0.8")
    ap.add_argument("--sampling", default="nucleus", choices=["nucleus", "greedy"])
    ap.add_argument("--confidence", default="softmax", choices=["softmax", "state"])
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--prompt-tokens", type=int, default=24)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--batch-sizes", default="1")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None, help="append the Markdown table to this file")
    args = ap.parse_args()
    text = run(args)
    if args.out:
        with open(args.out, "a") as fh:
            fh.write(text)


if __name__ == "__main__":
    main()
