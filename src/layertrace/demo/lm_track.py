"""The embedded LM demo: a small causal LM (GPT-2 or Llama layout) trained standard vs aligned on the bundled text corpus.

``run_lm_track(out_dir)`` does, in order (every stage reuses its output when it is already there):

1. corpus: the embedded Rotten Tomatoes + BBC News documents (``load_text_corpus("embedded")``,
   the classification splits), a seeded subset of the train split sized to the training budget,
   written as ``lm-corpus/corpus.{train,valid,test}.txt``;
2. tokenizer: byte-level BPE trained offline on the train file (``lm-tokenizer/``);
3. base model: a GPT-2- or Llama-layout model (the preset's ``family``; quick: Llama) built from config, seeded, saved with the tokenizer
   (``lm-base/``); both runs start from these same weights;
4. training: ``layertrace.training.train_from_config`` in the modes ``standard`` and ``aligned``
   (the aligned run with the preset's ``layer_weights`` and ``distill``: quick, the paper's linear
   weights and no distillation; quick-draft and draft, uniform and 0.25) -> run folders
   ``corpus-<family>-standard`` / ``corpus-<family>-aligned``;
5. per run: the analysis pass on test blocks (``analysis.json``: per-layer next-token accuracy,
   perplexity, saturation, COS / CKA), text generated from every layer k (nucleus p = 0.95,
   seeded) scored for diversity and coherence (bundled MiniLM), and early-exit decoding at several
   tau against full decoding (``lm_eval.json``);
6. ``lm.json`` in ``out_dir``: everything above side by side plus the comparison with the paper's
   GPT-2 trends (schema: docs/lm.md).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from .. import run_folder
from ..run_folder import LM_TRACK
from ..errors import LayertraceError
from ..io import read_json, write_json
# The presets live in lm_presets.py; the names stay importable from here (the tests, the docs).
from .lm_presets import MODES, PAPER_GPT2, PRESETS, LMTrackPreset, get_preset  # noqa: F401


LM_JSON = LM_TRACK
SCHEMA = "layertrace.lm/1"
DATA_NAME = "rt-bbc-corpus"
RUN_NAME = "corpus-{family}-{mode}"
FAMILIES = ("gpt2", "llama")


def run_name(p: "LMTrackPreset", mode: str) -> str:
    """The run folder name of one mode: ``corpus-<family>-<mode>`` (e.g. ``corpus-llama-aligned``)."""
    return RUN_NAME.format(family=p.family, mode=mode)


def find_run(track: str | Path, mode: str) -> Path:
    """The run folder of ``mode`` in a finished LM-track folder, whatever its family."""
    for family in FAMILIES:
        folder = Path(track) / RUN_NAME.format(family=family, mode=mode)
        if folder.is_dir():
            return folder
    raise LayertraceError(f"{track} has no corpus-<family>-{mode} run; run `python -m layertrace.demo.lm_track --out {track}`")


def _reporter(progress: Any) -> Callable[[str], None]:
    if callable(progress):
        return progress
    if progress is False:
        return lambda msg: None
    return lambda msg: print(f"[lm] {msg}", flush=True)


# --------------------------------------------------------------------------- stages 1-3
def prepare_corpus(folder: Path, p: LMTrackPreset) -> dict[str, Any]:
    """Write the corpus files (train / valid / test) of the preset; returns their document counts."""
    from ..data import load_text_corpus

    folder.mkdir(parents=True, exist_ok=True)
    counts = {}
    for split, fname, limit in (("train", "corpus.train.txt", p.train_docs),
                                ("validation", "corpus.valid.txt", max(1, p.test_docs // 4)),
                                ("test", "corpus.test.txt", p.test_docs)):
        path = folder / fname
        if not path.is_file():
            docs = load_text_corpus("embedded", split, seed=p.seed)[:limit]
            # one document per blank-line-separated block: inner blank lines would split documents
            text = "\n\n".join(" ".join(line.strip() for line in d.splitlines() if line.strip()) for d in docs)
            from ..io import atomic_path

            with atomic_path(path) as tmp:
                tmp.write_text(text + "\n")
        counts[split] = sum(1 for block in path.read_text().split("\n\n") if block.strip())
    return counts


def prepare_tokenizer(folder: Path, corpus_dir: Path, p: LMTrackPreset) -> Any:
    """The byte-level BPE tokenizer of the preset (trained once, then loaded from ``folder``)."""
    from transformers import AutoTokenizer

    from ..data import load_text_corpus
    from ..data.tokenizer import train_bpe_tokenizer

    if not (folder / "tokenizer.json").is_file():
        docs = load_text_corpus(corpus_dir, "train", shuffle=False)
        train_bpe_tokenizer(docs, vocab_size=p.vocab_size, out_dir=folder)
    return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)


def prepare_base_model(folder: Path, tokenizer: Any, p: LMTrackPreset) -> Path:
    """Build the seeded model of the preset (GPT-2 or Llama layout, no dropout: short CPU runs) and
    save it with the tokenizer."""
    if (folder / "config.json").is_file():
        return folder
    if p.family not in FAMILIES:
        raise LayertraceError(f"LM-track family {p.family!r} is unknown; use one of {', '.join(FAMILIES)}")
    eos = int(tokenizer.eos_token_id)
    if p.family == "gpt2":
        from transformers import GPT2Config, GPT2LMHeadModel

        cfg = GPT2Config(n_layer=p.n_layers, n_embd=p.hidden, n_head=p.heads, n_positions=p.block_size,
                         vocab_size=len(tokenizer), bos_token_id=eos, eos_token_id=eos, pad_token_id=eos,
                         resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                         tie_word_embeddings=p.tie_embeddings)
        model_cls = GPT2LMHeadModel
    else:
        from transformers import LlamaConfig, LlamaForCausalLM

        # SwiGLU width 8/3 d (rounded to 32) keeps the MLP's parameters at GPT-2's 4 d
        cfg = LlamaConfig(num_hidden_layers=p.n_layers, hidden_size=p.hidden, num_attention_heads=p.heads,
                          num_key_value_heads=p.heads, intermediate_size=32 * round(p.hidden * 8 / 3 / 32),
                          max_position_embeddings=p.block_size, vocab_size=len(tokenizer), bos_token_id=eos,
                          eos_token_id=eos, pad_token_id=eos, tie_word_embeddings=p.tie_embeddings, attention_dropout=0.0)
        model_cls = LlamaForCausalLM
    torch.manual_seed(p.seed)
    model = model_cls(cfg)
    model.save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    return folder


def train_config(base: Path, corpus_dir: Path, mode: str, p: LMTrackPreset, threads: int | None,
                 device: str = "auto"):
    """The ``TrainConfig`` of one run (also written as the run's ``config.yaml``)."""
    from ..training.config import DataSection, ModelSection, TrainConfig, TrainSection

    return TrainConfig(
        model=ModelSection(spec=str(base)),
        data=DataSection(name=DATA_NAME, root=str(corpus_dir), eval_split="test", max_length=p.block_size,
                         eval_limit=min(p.eval_blocks, 32)),
        train=TrainSection(mode=mode, steps=p.steps, batch_size=p.batch_size, lr=p.lr, weight_decay=0.01,
                           warmup_ratio=0.05, schedule="cosine", seed=p.seed, eval_batch_size=16,
                           log_every=10, checkpoint_every=0 if p.steps < 1000 else 500, progress=False,
                           threads=threads, device=device, distill=p.distill if mode == "aligned" else 0.0,
                           layer_weights=p.layer_weights if mode == "aligned" else "linear"),
    )


def _train_one(base: Path, corpus_dir: Path, run_dir: Path, mode: str, p: LMTrackPreset, threads: int | None,
               device: str) -> tuple[Any, float]:
    """One mode's training (also the worker of :func:`train_modes`' processes): its ``RunSummary`` and
    the CPU seconds this process spent on it (on a shared machine the wall time overstates the cost)."""
    from ..training import train_from_config

    if threads is not None:
        torch.set_num_threads(int(threads))
    cpu = time.process_time()
    summary = train_from_config(train_config(base, corpus_dir, mode, p, threads, device), run_dir)
    return summary, time.process_time() - cpu


def train_modes(base: Path, corpus_dir: Path, out: Path, p: LMTrackPreset, threads: int | None, device: str,
                say: Callable[[str], None], seconds: dict[str, float]) -> dict[str, Any]:
    """Train (or reuse) the standard and the aligned run; ``{mode: RunSummary}``.

    With ``p.train_parallel`` on CPU the two modes train at once in two spawned processes with half
    of ``threads`` (default: torch's current setting) each, at least 1; ``seconds["train_<mode>"]``
    is then the wall time of both together. Otherwise (or when a run is already finished) one after
    the other, in this process.
    ``seconds["train_<mode>_cpu"]``: the CPU time of that mode's training process (all its threads).
    """
    say(f"training {' and '.join(MODES)} ({p.steps} steps, batch {p.batch_size} x {p.block_size} tokens"
        + (", both at once" if p.train_parallel and device == "cpu" else "") + ")")
    dirs = {mode: out / run_name(p, mode) for mode in MODES}
    summaries: dict[str, Any] = {}
    # finished runs are reused in-process (no processes to spawn for a reuse)
    to_train = [mode for mode in MODES if not (dirs[mode] / run_folder.TRAIN_SUMMARY).is_file()]
    if p.train_parallel and device == "cpu" and len(to_train) > 1:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        each = max(1, int(threads if threads is not None else torch.get_num_threads()) // len(MODES))
        t0 = time.perf_counter()
        with ProcessPoolExecutor(len(MODES), mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = {mode: pool.submit(_train_one, base, corpus_dir, dirs[mode], mode, p, each, device)
                       for mode in MODES}
            for mode, future in futures.items():
                summaries[mode], seconds[f"train_{mode}_cpu"] = future.result()
        for mode in MODES:
            seconds[f"train_{mode}"] = time.perf_counter() - t0
        return summaries
    for mode in MODES:
        t0 = time.perf_counter()
        summaries[mode], seconds[f"train_{mode}_cpu"] = _train_one(base, corpus_dir, dirs[mode], mode, p, threads,
                                                                    device)
        seconds[f"train_{mode}"] = time.perf_counter() - t0
    return summaries


# --------------------------------------------------------------------------- stage 5
def _encode_docs(tokenizer: Any, docs: list[str]) -> list[list[int]]:
    return tokenizer(docs, add_special_tokens=False)["input_ids"]


def eval_blocks_of(tokenizer: Any, docs: list[str], block_size: int, n_blocks: int) -> torch.Tensor:
    """(n, block_size) token blocks of the test documents joined by eos (the training layout)."""
    from ..data import token_blocks

    return torch.from_numpy(token_blocks(tokenizer, docs, block_size, max_blocks=n_blocks))


def make_prompts(tokenizer: Any, docs: list[str], n: int, length: int, seed: int) -> torch.Tensor:
    """(n, length) prompts: the first ``length`` tokens of a seeded choice of long-enough test documents."""
    encoded = [ids for ids in _encode_docs(tokenizer, docs) if len(ids) >= length + 4]
    if not encoded:
        raise LayertraceError(f"no test document has {length + 4} tokens for the prompts; lower prompt_tokens")
    order = np.random.default_rng(seed).permutation(len(encoded))[:n]
    return torch.tensor([encoded[i][:length] for i in order], dtype=torch.long)


def generation_by_layer(adapter: Any, tokenizer: Any, prompts: torch.Tensor, p: LMTrackPreset,
                        encoder: Any) -> dict[str, Any]:
    """Text generated from every layer k = 1..L (nucleus sampling), scored for diversity and coherence."""
    from ..lm.generate import SamplingConfig, generate
    from ..lm.quality import diversity, paired_cosine

    sampling = SamplingConfig("nucleus", top_p=p.top_p, seed=p.seed)
    prompt_text = tokenizer.batch_decode(prompts, skip_special_tokens=True)
    out: dict[str, Any] = {"layers": [], "diversity": [], "coherence": [], "coherence_std": [], "samples": [],
                           "sampling": asdict(sampling), "max_new_tokens": p.new_tokens}
    continuations: list[list[str]] = []
    for k in range(1, adapter.n_layers + 1):
        res = generate(adapter, prompts, layer=k, max_new_tokens=p.new_tokens, sampling=sampling)
        texts = tokenizer.batch_decode(res.new_tokens, skip_special_tokens=True)
        continuations.append(texts)
        out["layers"].append(k)
        out["diversity"].append(diversity(texts))
        out["samples"].append({"layer": k, "prompt": prompt_text[0], "continuation": texts[0]})
    if encoder is not None:  # one encoder call for the prompts, one for every continuation of every layer
        e_prompts = np.asarray(encoder(prompt_text), dtype=np.float64)
        e_conts = np.asarray(encoder([t for texts in continuations for t in texts]), dtype=np.float64)
        n = len(prompt_text)
        for i in range(len(continuations)):
            coh = paired_cosine(e_prompts, e_conts[i * n:(i + 1) * n])
            out["coherence"].append(float(coh.mean()))
            out["coherence_std"].append(float(coh.std()))
    else:
        out["coherence"] = [None] * len(continuations)
        out["coherence_std"] = [None] * len(continuations)
    return out


def evaluate_run(run_dir: Path, tokenizer: Any, blocks: torch.Tensor, prompts: torch.Tensor, p: LMTrackPreset,
                 encoder: Any, say: Callable[[str], None], device: str = "cpu") -> dict[str, Any]:
    """Analysis pass + generation per layer + early-exit sweep of one trained run (writes its files)."""
    from ..analysis import analyze
    from ..models import load_model
    from ..lm.early_exit import early_exit_sweep
    from ..lm.generate import SamplingConfig

    loaded = load_model(run_dir)
    adapter = loaded.adapter.to(device).eval()
    batches = [{"input_ids": blocks[i:i + 16], "attention_mask": torch.ones_like(blocks[i:i + 16])}
               for i in range(0, blocks.shape[0], 16)]
    t0 = time.perf_counter()
    result = analyze(adapter, batches, model_name=run_dir.name, data_name=DATA_NAME + ":test", seed=p.seed)
    result.save(run_dir)
    say(f"{run_dir.name}: analysis done ({time.perf_counter() - t0:.1f} s)")
    t0 = time.perf_counter()
    generation = generation_by_layer(adapter, tokenizer, prompts, p, encoder)
    say(f"{run_dir.name}: generation from every layer done ({time.perf_counter() - t0:.1f} s)")
    t0 = time.perf_counter()

    def decode(ids: list[int]) -> str:
        return tokenizer.decode(ids, skip_special_tokens=True)

    sweep = early_exit_sweep(adapter, prompts[: p.exit_prompts], taus=p.taus, max_new_tokens=p.new_tokens,
                             sampling=SamplingConfig("nucleus", top_p=p.top_p, seed=p.seed),
                             batch_size=p.exit_batch_size, repeats=p.exit_repeats, decode=decode, encoder=encoder)
    say(f"{run_dir.name}: early-exit sweep done ({time.perf_counter() - t0:.1f} s)")
    evaluation = {
        "layers": list(result.layers),
        "accuracy": result.accuracy.tolist(),
        "perplexity": result.perplexity.tolist(),
        "cross_entropy": result.cross_entropy.tolist(),
        "saturation_hist": result.saturation_hist.tolist() if result.saturation_hist is not None else None,
        "cos_to_last": result.cos_to_last.tolist() if getattr(result, "cos_to_last", None) is not None else None,
        "n_tokens": int(result.n_predictions),
        "generation": generation,
        "early_exit": sweep,
    }
    write_json(run_dir / run_folder.LM_EVAL, evaluation)
    return evaluation


# --------------------------------------------------------------------------- stage 6
def compare_with_paper(standard: dict[str, Any], aligned: dict[str, Any]) -> dict[str, Any]:
    """The paper's GPT-2 trends checked on our runs: aligned better at shallow layers, ~equal at the last.

    Shallow layers = 1..ceil(L/2). "About equal" at the last layer: accuracy within 0.02 absolute.
    """
    layers = standard["layers"]
    n_layers = max(layers)
    acc_s, acc_a = np.asarray(standard["accuracy"]), np.asarray(aligned["accuracy"])
    ppl_s, ppl_a = np.asarray(standard["perplexity"]), np.asarray(aligned["perplexity"])
    shallow = [i for i, l in enumerate(layers) if 1 <= l <= math.ceil(n_layers / 2)]
    last = layers.index(n_layers)
    gap = acc_a - acc_s
    return {
        "shallow_layers": [layers[i] for i in shallow],
        "accuracy_gain_per_layer": gap.tolist(),
        "perplexity_ratio_per_layer": (ppl_a / ppl_s).tolist(),
        "mean_shallow_accuracy_gain": float(gap[shallow].mean()),
        "last_layer_accuracy_gap": float(gap[last]),
        "aligned_better_at_shallow_layers": bool((gap[shallow] > 0).all()),
        "about_equal_at_last_layer": bool(abs(gap[last]) <= 0.02),
        "paper_gpt2_wikitext103": PAPER_GPT2,
    }


def _check_loss_settings(p: LMTrackPreset) -> None:
    """Fail before any work (and before the training processes start) on a preset whose aligned-run
    loss settings the trainer would reject."""
    from ..training.losses import check_distill, weights_for_layers

    checks = {"layer_weights": lambda: weights_for_layers(p.layer_weights, p.n_layers, range(1, p.n_layers + 1)),
              "distill": lambda: check_distill(p.distill)}
    for name, check in checks.items():
        try:
            check()
        except (LayertraceError, TypeError, ValueError) as exc:
            raise LayertraceError(f"LM-track preset field {name}={getattr(p, name)!r}: {exc}") from None


def run_lm_track(out_dir: str | Path, preset: str | LMTrackPreset = "quick", progress: Any = None,
                 threads: int | None = None, encoder: Any = "default", device: str = "auto",
                 **overrides: Any) -> dict[str, Any]:
    """Train the demo LM standard vs aligned and evaluate both; writes ``lm.json`` into ``out_dir``.

    Args:
        out_dir: folder for the corpus, tokenizer, base model, the two run folders and ``lm.json``.
        preset: ``"quick"`` (~20 min on 2 idle CPU cores, estimated; 19.75 min measured on a
            shared one), ``"quick-draft"`` (quick trained for self-speculative drafts), ``"draft"``
            (12 x 96 trained for them, ~16 min), ``"full"``
            (~1 h on CPU), ``"paper"`` (GPT-2 small shape, for a GPU) or ``"smoke"``
            (seconds), or an :class:`LMTrackPreset`.
        progress: ``None`` / ``True`` prints ``[lm] ...`` lines, ``False`` is silent, a callable gets
            each message.
        threads: torch CPU threads for training and evaluation (``None``: leave torch's setting).
        device: ``"auto"`` (CUDA when available), ``"cpu"`` or ``"cuda"``; timings in ``lm.json`` are
            measured there.
        encoder: sentence encoder for coherence: ``"default"`` (bundled MiniLM, mean pooling),
            ``None`` (skip coherence) or any callable ``list[str] -> (n, d)``.
        overrides: fields of the preset to change (e.g. ``steps=300``).

    Returns:
        the ``lm.json`` content (schema in docs/lm.md).
    """
    p = replace(get_preset(preset), **overrides) if overrides else get_preset(preset)
    _check_loss_settings(p)
    say = _reporter(progress)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if threads is not None:
        torch.set_num_threads(int(threads))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    start = time.perf_counter()
    seconds: dict[str, float] = {}

    t0 = time.perf_counter()
    corpus_dir = out / "lm-corpus"
    docs_count = prepare_corpus(corpus_dir, p)
    tokenizer = prepare_tokenizer(out / "lm-tokenizer", corpus_dir, p)
    base = prepare_base_model(out / f"lm-base-{p.family}", tokenizer, p)
    seconds["prepare"] = time.perf_counter() - t0
    say(f"corpus {docs_count}, tokenizer vocab {len(tokenizer)}, base model {base} ({seconds['prepare']:.1f} s)")

    from ..data import load_text_corpus

    test_docs = load_text_corpus(corpus_dir, "test", shuffle=False)
    blocks = eval_blocks_of(tokenizer, test_docs, p.block_size, p.eval_blocks)
    prompts = make_prompts(tokenizer, test_docs, p.n_prompts, p.prompt_tokens, p.seed)
    if encoder == "default":
        from ..lm.quality import default_encoder

        try:
            encoder = default_encoder()
        except LayertraceError as exc:
            say(f"coherence skipped: {exc}")
            encoder = None

    runs: dict[str, Any] = {}
    summaries = train_modes(base, corpus_dir, out, p, threads, device, say, seconds)
    for mode in MODES:
        run_dir = out / run_name(p, mode)
        summary = summaries[mode]
        t0 = time.perf_counter()
        evaluation = evaluate_run(run_dir, tokenizer, blocks, prompts, p, encoder, say, device)
        seconds[f"evaluate_{mode}"] = time.perf_counter() - t0
        runs[mode] = {
            "run_dir": str(run_dir),
            "train_steps": int(summary.steps),
            "train_wall_time_s": float(summary.wall_time_s),
            "reused": bool(summary.reused),
            **{k: v for k, v in evaluation.items() if k != "early_exit"},
        }
        acc = evaluation["accuracy"]
        say(f"{mode}: next-token accuracy per layer " + " ".join(f"{a:.3f}" for a in acc))

    decoding = None
    if p.decoding:  # greedy decoders side by side on the aligned model (lm.json "decoding")
        from ..models import load_model
        from ..lm.speculative import compare_decoders

        t0 = time.perf_counter()
        aligned_dir = out / run_name(p, "aligned")
        sel = read_json(aligned_dir / run_folder.LM_EVAL)["early_exit"].get("selected")
        adapter = load_model(aligned_dir).adapter.to(device).eval()
        decoding = compare_decoders(adapter, prompts[: p.exit_prompts], analysis="measure",
                                    tau=float(sel["tau"]) if sel else float(max(p.taus)),
                                    batch_sizes=tuple(p.decode_batch_sizes), repeats=p.exit_repeats,
                                    max_new_tokens=p.new_tokens, eos_token_id=int(tokenizer.eos_token_id))
        seconds["decoding"] = time.perf_counter() - t0
        b1 = decoding["batches"].get("1", {}).get("self-speculative")
        say(f"decoding comparison done ({seconds['decoding']:.1f} s)"
            + (f": self-speculative {b1['speedup']:.2f}x full at batch 1" if b1 else ""))
    n_params = sum(t.numel() for t in _load_params(base))
    seconds["total"] = time.perf_counter() - start
    lm = {
        "schema": SCHEMA,
        "preset": asdict(p),
        "corpus": {"source": "embedded: Rotten Tomatoes sentences + BBC News articles (classification splits)",
                   "documents": docs_count, "test_blocks": int(blocks.shape[0]), "block_size": p.block_size,
                   "eval_tokens": runs["standard"]["n_tokens"]},
        "tokenizer": {"kind": "byte-level BPE (tokenizers), trained on the train split", "vocab_size": len(tokenizer),
                      "dir": str(out / "lm-tokenizer")},
        "model": {"family": p.family, "n_layers": p.n_layers, "hidden_size": p.hidden, "heads": p.heads,
                  "positions": p.block_size, "params": n_params, "base_dir": str(base)},
        "layers": runs["standard"]["layers"],
        "runs": runs,
        "early_exit": {mode: read_json(Path(runs[mode]["run_dir"]) / run_folder.LM_EVAL)["early_exit"] for mode in MODES},
        "paper_comparison": compare_with_paper(runs["standard"], runs["aligned"]),
        "decoding": decoding,
        "seconds": seconds,
        "threads": torch.get_num_threads(),
        "device": device,
    }
    write_json(out / LM_JSON, lm)
    say(f"wrote {out / LM_JSON} ({seconds['total']:.0f} s)")
    return lm


def _load_params(base: Path):
    from safetensors.torch import load_file

    files = sorted(base.glob("*.safetensors"))
    state: dict[str, torch.Tensor] = {}
    for f in files:
        state.update(load_file(str(f)))
    return state.values()


def main(argv: list[str] | None = None) -> int:
    """``python -m layertrace.demo.lm_track --out DIR [--preset quick|quick-draft|draft|full|paper|smoke|FILE.yaml]``."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m layertrace.demo.lm_track", description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="output folder (reused stage by stage when it exists)")
    parser.add_argument("--preset", default="quick",
                        help="quick | quick-draft | draft | full | paper | smoke | a YAML file of preset fields")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--no-coherence", action="store_true", help="skip the MiniLM coherence score")
    args = parser.parse_args(argv)
    try:
        run_lm_track(args.out, args.preset, threads=args.threads, device=args.device,
                     encoder=None if args.no_coherence else "default")
    except LayertraceError as exc:
        print(f"error: {exc}")
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
