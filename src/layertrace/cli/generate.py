"""``layertrace generate``: decode text from a causal LM, fully or self-speculatively.

Examples::

    layertrace generate --model lm-out/corpus-llama-aligned --prompt "The film is" --max_new_tokens 32
    layertrace generate --model RUN --prompt "The film is" --decoder full --strategy nucleus
    layertrace generate --model RUN --prompt "a,b" --draft_layer 2 --gamma 4   # override the choice

``--decoder speculative`` (the default) drafts with the first k blocks and the shared head and
verifies with the full model (layertrace.lm.speculative): the text equals full decoding (greedy) or
has its distribution (sampling). k and gamma come from the run folder's ``analysis.json`` (its
per-layer agreement with the last layer = the draft acceptance rate) or, without one, from the
prompts; ``--draft_layer`` / ``--gamma`` override them. When the cost model expects even the best
draft to be slower than full decoding, the prompts are decoded fully (same output) and the summary
line says so.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from .. import run_folder
from ..config import add_config_args, config_from_args
from ..errors import LayertraceError

HELP = "decode text from a causal LM: self-speculative (lossless, the default) or full decoding"


@dataclass
class GenerateConfig:
    """Options of ``layertrace generate``."""

    model: str = field(default="", metadata={"help": "causal-LM run folder, save_pretrained folder or preset"})
    prompt: list[str] | None = field(default=None, metadata={
        "help": "comma list of prompts (one row each; batched with left padding)"})
    decoder: str = field(default="speculative", metadata={"help": "speculative | full", "choices": ("speculative", "full")})
    draft_layer: Optional[int] = field(default=None, metadata={
        "help": "k: blocks that draft (default: chosen from analysis.json or the prompts)", "check": ">= 1"})
    gamma: Optional[int] = field(default=None, metadata={"help": "drafted tokens per round (default: chosen)", "check": ">= 1"})
    confidence: float = field(default=0.0, metadata={
        "help": "stop a round's drafting when no row's draft probability reaches this (0 = off; lossless)",
        "check": "[0, 1]"})
    analysis: Optional[str] = field(default=None, metadata={
        "help": "analysis.json (or its folder) giving per-layer acceptance (default: the model folder's); "
                "'measure': measured per prompt on its greedy continuation (a batch waits for its worst prompt)"})
    costs: str = field(default="default", metadata={
        "help": "the cost model choosing k and gamma: default (fixed constants) | measure (time the blocks, "
                "readout, embed and bookkeeping on this model and batch first, ~1-2 s on the demo LM; "
                "worth it for long generations)", "choices": ("default", "measure")})
    max_new_tokens: int = field(default=32, metadata={"help": "tokens generated per prompt", "check": ">= 1"})
    stop_at_eos: bool = field(default=True, metadata={
        "help": "a row stops after the tokenizer's eos token (false: every row decodes max_new_tokens)"})
    strategy: str = field(default="greedy", metadata={"help": "greedy | nucleus | top_k | sample",
                                                           "choices": ("greedy", "nucleus", "top_k", "sample")})
    top_p: float = field(default=0.95, metadata={"help": "nucleus mass (nucleus / sample)", "check": "(0, 1]"})
    top_k: int = field(default=50, metadata={"help": "top-k candidates (top_k / sample)", "check": ">= 1"})
    temperature: float = field(default=1.0, metadata={"help": "softmax temperature (sampling)", "check": "> 0"})
    seed: int = field(default=0, metadata={"help": "seed of the sampling generator"})
    out: Optional[str] = field(default=None, metadata={"help": "also write generate.json into this folder"})


def generate_from_config(cfg: GenerateConfig) -> dict:
    """Run ``layertrace generate``; returns ``{"texts", "decoder", "stats", "seconds", "tokens_per_s"}``."""
    from ..lm.generate import SamplingConfig, generate
    from ..lm.speculative import self_speculative_generate
    from ..models import load_model

    if not cfg.model:
        raise LayertraceError("no model given: pass --model (a causal-LM run folder or save_pretrained folder)")
    if not cfg.prompt:
        raise LayertraceError("no prompt given: pass --prompt TEXT (or a comma list for a batch)")
    if cfg.decoder not in ("speculative", "full"):
        raise LayertraceError(f"decoder={cfg.decoder!r}: use speculative or full")
    if cfg.costs not in ("default", "measure"):
        raise LayertraceError(f"costs={cfg.costs!r}: use default or measure")
    if cfg.out:
        from ..io import check_out_dir

        check_out_dir(cfg.out)
    loaded = load_model(cfg.model)
    adapter = loaded.adapter.eval()
    if adapter.kind != "causal_lm":
        raise LayertraceError(f"model {cfg.model!r} is a {adapter.kind}; `layertrace generate` needs a causal LM")
    tok = loaded.tokenizer
    if tok is None:
        raise LayertraceError(f"model {cfg.model!r} has no tokenizer saved beside it; save one with the model")
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    enc = tok(list(cfg.prompt), return_tensors="pt", padding=True, add_special_tokens=False)
    sampling = SamplingConfig(cfg.strategy, top_p=cfg.top_p, top_k=cfg.top_k, temperature=cfg.temperature,
                              seed=cfg.seed)
    eos = tok.eos_token_id if cfg.stop_at_eos else None
    if cfg.decoder == "full":
        res = generate(adapter, enc["input_ids"], enc["attention_mask"], max_new_tokens=cfg.max_new_tokens,
                       sampling=sampling, eos_token_id=eos)
    else:
        analysis = cfg.analysis
        if analysis is None and cfg.draft_layer is None or analysis is None and cfg.gamma is None:
            found = Path(cfg.model) / run_folder.ANALYSIS
            analysis = str(found) if found.is_file() else None
        res = self_speculative_generate(adapter, enc["input_ids"], enc["attention_mask"], draft_layer=cfg.draft_layer,
                                        gamma=cfg.gamma, analysis=analysis, max_new_tokens=cfg.max_new_tokens,
                                        sampling=sampling, confidence=cfg.confidence, eos_token_id=eos,
                                        costs="measure" if cfg.costs == "measure" else None)
    texts = [tok.decode(r[m.bool()].tolist(), skip_special_tokens=True) for r, m in zip(res.new_tokens, res.new_mask)]
    body = {"decoder": cfg.decoder, "prompts": list(cfg.prompt), "texts": texts, "stats": res.stats,
            "seconds": res.seconds, "tokens_per_s": res.tokens_per_second}
    if cfg.out:
        from ..config import config_to_dict
        from ..io import write_json

        write_json(Path(cfg.out) / "generate.json", {**body, "config": config_to_dict(cfg)})
    return body


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_args(parser, GenerateConfig)


def run(args: argparse.Namespace) -> int:
    body = generate_from_config(config_from_args(GenerateConfig, args))
    for prompt, text in zip(body["prompts"], body["texts"]):
        print(f"{prompt}{text}")
    stats = body["stats"]
    if stats and stats["decoder"] == "full":
        choice = stats["choice"]
        print(f"[speculative] decoded fully: the best draft (k {choice['draft_layer']}, gamma {choice['gamma']}, "
              f"{choice['source']}) is expected at {choice['expected_speedup']:.2f}x of full decoding; "
              f"--draft_layer and --gamma speculate anyway; {body['tokens_per_s']:.1f} tokens/s")
    elif stats:
        print(f"[{body['decoder']}] draft layer {stats['draft_layer']}, gamma {stats['gamma']} "
              f"({stats['choice']['source']}), acceptance {stats['acceptance']:.2f}, "
              f"{stats['tokens_per_round']:.2f} tokens/round, {body['tokens_per_s']:.1f} tokens/s")
    else:
        print(f"[{body['decoder']}] {body['tokens_per_s']:.1f} tokens/s")
    return 0
