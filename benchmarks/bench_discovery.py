"""Cost of the discovery adapter: tracing vs the model's own forward, and the self-check on load.

Claims checked (issue 13):

* ``adapter.trace(batch)`` on a 12-layer BERT-base-sized classifier and a 12-layer Llama-style
  causal LM, both built from config, costs at most 1.1x the unmodified model's forward with
  ``output_hidden_states=True``. For the LM the trace is timed without per-layer logits
  (``with_logits=False``: the forward computes no per-layer logits either; its single LM-head call
  is in the forward's time), and with them for the classifier (a (B, d) readout per layer).
* The self-check that ``adapt()`` runs on load is a couple of forwards of a tiny batch: its time is
  reported next to one forward of the benchmark batch.

Both paths are timed interleaved (A, B, A, B, ...) in one process under ``torch.no_grad()``, after
warm-up; medians and the ratio of medians are reported (the machine is shared).

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_discovery.py --threads 1 --repeats 15 \
        --out benchmarks/results/models_discovery.md
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import time

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def bert_base():
    import transformers as tf

    torch.manual_seed(0)
    cfg = tf.BertConfig(num_labels=2, attn_implementation="sdpa")  # 12 x 768, 12 heads, vocab 30522
    return tf.BertForSequenceClassification(cfg).eval()


def llama_12():
    import transformers as tf

    torch.manual_seed(0)
    cfg = tf.LlamaConfig(hidden_size=768, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=12,
                         num_key_value_heads=4, vocab_size=32000, max_position_embeddings=512,
                         attn_implementation="sdpa")
    return tf.LlamaForCausalLM(cfg).eval()


def text_batch(batch: int, tokens: int, vocab: int) -> dict:
    """Token ids with every other row padded by a quarter of its length (masks take part)."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, vocab, (batch, tokens), generator=g)
    mask = torch.ones(batch, tokens, dtype=torch.long)
    mask[1::2, -(tokens // 4):] = 0
    ids[mask == 0] = 0
    return {"input_ids": ids, "attention_mask": mask}


def timed(fn) -> tuple[float, float]:
    w, c = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - w, time.process_time() - c


def bench(name: str, build, batch: int, tokens: int, repeats: int) -> dict:
    from layertrace.models import adapt
    from layertrace.models import hf_auto
    from layertrace.models.hf_auto import self_check

    model = build()
    t0 = time.perf_counter()
    adapter = adapt(model, check=False)
    discover_s = time.perf_counter() - t0
    inputs = text_batch(batch, tokens, model.config.vocab_size)
    lm = adapter.kind == "causal_lm"

    def native():
        return model(**inputs, output_hidden_states=True)

    def traced():
        if not lm:
            return adapter.trace(inputs)
        # the same work as the forward: every layer's features, the LM head once on layer L
        trace = adapter.trace(inputs, with_logits=False)
        return trace, adapter.readout(trace.features[-1])

    def embed_only():
        return adapter.embed(inputs)

    with torch.no_grad():
        for _ in range(2):
            native()
            traced()
        wall = {"native": [], "trace": [], "embed": []}
        cpu = {"native": [], "trace": [], "embed": []}
        for i in range(repeats):
            order = (("native", native), ("trace", traced)) if i % 2 == 0 else (("trace", traced), ("native", native))
            for key, fn in order + (("embed", embed_only),):
                w, c = timed(fn)
                wall[key].append(w)
                cpu[key].append(c)
        checks = [timed(lambda: self_check(adapter)) for _ in range(3)]
        one_probe_forward = [timed(lambda: model(**hf_auto.probe_batch(model))) for _ in range(3)]
    med = {k: statistics.median(v) * 1000 for k, v in wall.items()}
    medc = {k: statistics.median(v) * 1000 for k, v in cpu.items()}
    return {
        "model": name, "input": f"({batch}, {tokens})", "layers": adapter.n_layers,
        "params": sum(p.numel() for p in model.parameters()) / 1e6,
        "native": med["native"], "trace": med["trace"], "native_cpu": medc["native"], "trace_cpu": medc["trace"],
        "embed": med["embed"], "ratio": med["trace"] / med["native"], "ratio_cpu": medc["trace"] / medc["native"],
        "check": statistics.median(c[0] for c in checks) * 1000,
        "check_cpu": statistics.median(c[1] for c in checks) * 1000,
        "probe_cpu": statistics.median(c[1] for c in one_probe_forward) * 1000, "discover": discover_s * 1000,
        "logits": "every layer" if not lm else "layer L only (as the forward)",
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = [bench("BERT-base (BertForSequenceClassification)", bert_base, args.batch, args.tokens, args.repeats),
            bench("Llama-style 12 x 768 (LlamaForCausalLM)", llama_12, args.batch, args.tokens, args.repeats)]
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    lines = [
        "# Models: discovery adapter cost (trace and self-check)",
        "",
        f"Command: `HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_discovery.py --threads {args.threads} "
        f"--repeats {args.repeats} --batch {args.batch} --tokens {args.tokens} --out benchmarks/results/models_discovery.md`",
        "",
        f"Machine: {os.cpu_count()}-core CPU, no GPU ({platform.machine()}), torch {torch.__version__}, "
        f"{args.threads} intra-op thread(s), shared with other jobs (load average {load:.1f} at the end). "
        f"Date: {datetime.date.today().isoformat()}.",
        "",
        f"Medians of {args.repeats} interleaved runs (A/B order alternating) under `torch.no_grad()`, after 2 "
        "warm-up runs; models built from config (random weights), sdpa attention, every other row padded by a "
        "quarter. *forward + hidden states* = the unmodified model with `output_hidden_states=True`; *trace* = "
        "`adapter.trace(batch)` (discovery adapter: the model's own blocks replayed one by one), with the shared "
        "readout at every layer for the classifier, and for the LM every layer's features plus the readout at "
        "layer L (the forward's own work: per-layer vocabulary logits would add L LM-head calls). *embed* = "
        "`adapter.embed(batch)` alone (the recording pass that stops at the last block). *self-check* = "
        "`hf_auto.self_check` on its own 2 x 6-token probe (median of 3, wall / CPU), what `adapt()` runs once "
        "per model, beside the CPU time of one plain forward of that probe; *discovery* = "
        "`adapt(model, check=False)` (one block run and one recording pass on the probe).",
        "",
        "| model | params (M) | input | layers | per-layer logits | forward + hidden states, wall / CPU (ms) "
        "| trace, wall / CPU (ms) | ratio wall | ratio CPU | embed (ms) | self-check, wall / CPU (ms) "
        "| one probe forward, CPU (ms) | discovery (ms) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['model']} | {r['params']:.1f} | {r['input']} | {r['layers']} | {r['logits']} "
                     f"| {r['native']:.1f} / {r['native_cpu']:.1f} | {r['trace']:.1f} / {r['trace_cpu']:.1f} "
                     f"| {r['ratio']:.3f} | {r['ratio_cpu']:.3f} | {r['embed']:.1f} | {r['check']:.0f} / {r['check_cpu']:.0f} "
                     f"| {r['probe_cpu']:.1f} | {r['discover']:.1f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        from pathlib import Path

        Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
