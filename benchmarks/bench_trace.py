"""Tracing cost vs the model's own forward with ``output_hidden_states=True``.

Claim checked (issue 3): ``adapter.trace(batch)`` (features of layers 0..L at the prediction token
plus the shared readout's logits at every layer, one block-by-block pass) costs at most 1.1x the
unmodified HF model's forward that returns all hidden states (which gives no per-layer logits).

The two are timed interleaved (A, B, A, B, ...) in one process under ``torch.no_grad()``, after
warm-up, and we report medians and the ratio of medians; the machine is shared, so interleaving
keeps drift out of the ratio.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_trace.py --repeats 30 \
        --out benchmarks/results/models.md
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


def _batch(loaded, batch_size: int, seq_len: int) -> dict:
    pp = loaded.preprocess
    g = torch.Generator().manual_seed(0)
    if pp["modality"] == "image":
        size = pp["image_size"]
        return {"pixel_values": torch.randn(batch_size, pp["channels"], size, size, generator=g)}
    # real sentences of varied length, padded to the longest: masks take part as in real use
    words = ("the film is a quiet , moving portrait of grief and it never once feels false but the "
             "second half drags and the ending is far too neat for what came before").split()
    texts = [" ".join(words[: 4 + (7 * i) % (len(words) - 4)]) for i in range(batch_size)]
    return dict(loaded.tokenizer(texts, padding=True, truncation=True, max_length=seq_len, return_tensors="pt"))


def bench(spec: str, batch_size: int, seq_len: int, repeats: int) -> dict:
    from layertrace.models import load_model

    loaded = load_model(spec, seed=0)
    model, adapter = loaded.model, loaded.adapter
    batch = _batch(loaded, batch_size, seq_len)

    def native():
        return model(**batch, output_hidden_states=True)

    def traced():
        return adapter.trace(batch)

    with torch.no_grad():
        for _ in range(3):  # warm-up both paths
            native()
            traced()
        wall = {"native": [], "trace": []}
        cpu = {"native": [], "trace": []}
        for i in range(repeats):
            order = (("native", native), ("trace", traced)) if i % 2 == 0 else (("trace", traced), ("native", native))
            for name, fn in order:
                c0, t0 = time.process_time(), time.perf_counter()
                fn()
                wall[name].append(time.perf_counter() - t0)
                cpu[name].append(time.process_time() - c0)
    med = {f"{kind}_{name}": 1e3 * statistics.median(times[name])
           for kind, times in (("wall", wall), ("cpu", cpu)) for name in ("native", "trace")}
    tokens = tuple(batch["input_ids"].shape) if "input_ids" in batch else tuple(batch["pixel_values"].shape)
    return {"model": spec, "input": tokens, "n_layers": adapter.n_layers, "repeats": repeats,
            "attn": model.config._attn_implementation, **med,
            "wall_ratio": med["wall_trace"] / med["wall_native"], "cpu_ratio": med["cpu_trace"] / med["cpu_native"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--vit-batch", type=int, default=256)
    parser.add_argument("--text-batch", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--out", default=None, help="write a Markdown results file here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = [
        bench("vit-demo", args.vit_batch, 0, args.repeats),
        bench("minilm-cls", args.text_batch, args.seq_len, args.repeats),
    ]
    header = ("| model | input | layers | attention | forward + hidden states, wall / CPU (ms) | "
              "trace, wall / CPU (ms) | ratio wall | ratio CPU |")
    lines = [header, "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['input']} | {r['n_layers']} | {r['attn']} | "
                     f"{r['wall_native']:.1f} / {r['cpu_native']:.1f} | {r['wall_trace']:.1f} / {r['cpu_trace']:.1f} | "
                     f"{r['wall_ratio']:.3f} | {r['cpu_ratio']:.3f} |")
    table = "\n".join(lines)
    print(table)
    if args.out:
        cmd = "HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_trace.py " + " ".join(argv or sys.argv[1:])
        text = (
            "# Models: tracing cost\n\n"
            f"Command: `{cmd}`\n\n"
            f"Machine: 2-core CPU, no GPU ({platform.processor() or platform.machine()}), torch {torch.__version__}, "
            f"{torch.get_num_threads()} intra-op threads, shared with other jobs. "
            f"Date: {datetime.date.today().isoformat()}.\n\n"
            f"Medians of {args.repeats} interleaved runs each (A/B order alternating), under `torch.no_grad()`, "
            "after 3 warm-up runs. *forward + hidden states* = the unmodified HF model called with "
            "`output_hidden_states=True` (no per-layer logits); *trace* = `adapter.trace(batch)`: one "
            "block-by-block pass giving the prediction-token features of layers 0..L and the shared "
            "readout's logits at every layer. Wall = `time.perf_counter`, CPU = `time.process_time` of "
            "this process (less sensitive to the other jobs on the machine). Ratio = trace median / "
            "forward median (claim: <= 1.1).\n\n"
            f"{table}\n"
        )
        from pathlib import Path

        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
