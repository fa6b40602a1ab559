"""Figures of the LM track, read from ``lm.json`` only (matplotlib imported lazily).

``lm_figures(lm_json)`` returns ``[(title, matplotlib Figure, caption), ...]`` for the report:

1. next-token accuracy of the shared readout per layer, standard vs aligned (paper's GPT-2 points);
2. perplexity per layer (log scale);
3. diversity and coherence of text generated from every layer;
4. early-exit decoding: measured speed-up and perplexity ratio against tau, per model;
5. the decoding comparison (full, self-speculative, CALM-style exit, HF's early-exit assistant).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from ..io import read_json
from ..run_folder import LM_TRACK

COLORS = {"standard": "#4C72B0", "aligned": "#DD8452"}


def _load(lm_json: Mapping[str, Any] | str | Path) -> Mapping[str, Any]:
    if isinstance(lm_json, (str, Path)):
        path = Path(lm_json)
        return read_json(path / LM_TRACK if path.is_dir() else path)
    return lm_json


def _nan(values: list) -> list[float]:
    return [float("nan") if v is None else float(v) for v in values]


def lm_figures(lm_json: Mapping[str, Any] | str | Path) -> list[tuple[str, Any, str]]:
    """The LM-track figures from an ``lm.json`` dict or path: list of (title, Figure, caption)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    lm = _load(lm_json)
    runs = lm["runs"]
    n_layers = int(lm["model"]["n_layers"])
    family = {"gpt2": "GPT-2", "llama": "Llama-layout"}.get(lm["model"].get("family"), lm["model"].get("family"))
    model_desc = (f"{family} {n_layers} x {lm['model']['hidden_size']} ({lm['model']['params'] / 1e6:.1f}M parameters, "
                  f"vocab {lm['tokenizer']['vocab_size']}) trained {runs['standard']['train_steps']} steps per mode on "
                  f"the embedded Rotten Tomatoes + BBC News text")
    figures: list[tuple[str, Any, str]] = []

    # 1. accuracy per layer
    fig, ax = plt.subplots(figsize=(6.0, 3.6))
    for mode, run in runs.items():
        ax.plot(run["layers"], run["accuracy"], "o-", color=COLORS.get(mode), label=mode)
    ax.set_xlabel("layer (0 = embeddings)")
    ax.set_ylabel("next-token accuracy")
    ax.set_xticks(runs["standard"]["layers"])
    ax.grid(alpha=0.3)
    ax.legend()
    comp = lm.get("paper_comparison", {})
    paper = comp.get("paper_gpt2_wikitext103")
    caption = (f"Next-token accuracy of the shared readout (final norm + LM head) at every layer, {model_desc}; "
               f"{lm['corpus']['eval_tokens']} test tokens. ")
    if comp:
        caption += (f"Mean gain of aligned training over layers {comp['shallow_layers']}: "
                    f"{comp['mean_shallow_accuracy_gain']:+.3f}; at the last layer: {comp['last_layer_accuracy_gap']:+.3f}. ")
    if paper:
        caption += (f"Paper (GPT-2 small, WikiText-103): layer 1 {paper['standard'][0]:.3f} vs {paper['aligned'][0]:.3f}, "
                    f"layer 11 {paper['standard'][1]:.3f} vs {paper['aligned'][1]:.3f}, last {paper['standard'][2]:.3f} vs "
                    f"{paper['aligned'][2]:.3f} (standard vs aligned).")
    fig.tight_layout()
    figures.append(("LM: next-token accuracy per layer", fig, caption))

    # 2. perplexity per layer
    fig, ax = plt.subplots(figsize=(6.0, 3.6))
    for mode, run in runs.items():
        ax.plot(run["layers"], _nan(run["perplexity"]), "o-", color=COLORS.get(mode), label=mode)
    ax.set_yscale("log")
    ax.set_xlabel("layer (0 = embeddings)")
    ax.set_ylabel("perplexity (log scale)")
    ax.set_xticks(runs["standard"]["layers"])
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    last = {m: r["perplexity"][-1] for m, r in runs.items()}
    fig.tight_layout()
    figures.append(("LM: perplexity per layer", fig,
                    "Perplexity of the shared readout at every layer on the test blocks (lower is better); last layer: "
                    + ", ".join(f"{m} {v:.1f}" for m, v in last.items()) + "."))

    # 3. diversity and coherence of generated text
    fig, axes = plt.subplots(1, 2, figsize=(9.0, 3.4))
    for mode, run in runs.items():
        gen = run["generation"]
        axes[0].plot(gen["layers"], _nan(gen["diversity"]), "o-", color=COLORS.get(mode), label=mode)
        axes[1].plot(gen["layers"], _nan(gen["coherence"]), "o-", color=COLORS.get(mode), label=mode)
    for ax, name in zip(axes, ("diversity", "coherence")):
        ax.set_xlabel("generation layer k")
        ax.set_ylabel(name)
        ax.set_xticks(runs["standard"]["generation"]["layers"])
        ax.grid(alpha=0.3)
    axes[0].legend()
    gen = runs["standard"]["generation"]
    fig.tight_layout()
    figures.append(("LM: quality of text generated from each layer", fig,
                    f"Text generated from layer k (first k blocks + shared final norm + LM head; nucleus p = "
                    f"{gen['sampling']['top_p']}, seed {gen['sampling']['seed']}, {gen['max_new_tokens']} new tokens "
                    f"after {lm['preset']['prompt_tokens']}-token test prompts). Diversity: product over n = 2..4 of "
                    f"unique / total n-grams; coherence: cosine of MiniLM sentence embeddings (mean pooling) of prompt "
                    f"and continuation."))

    # 4. early-exit decoding
    fig, axes = plt.subplots(1, 2, figsize=(9.0, 3.4))
    notes = []
    for mode, sweep in lm.get("early_exit", {}).items():
        taus = [p["tau"] for p in sweep["points"]]
        axes[0].plot(taus, [p["speedup_measured"] for p in sweep["points"]], "o-", color=COLORS.get(mode), label=mode)
        axes[0].plot(taus, [p["layer_speedup"] for p in sweep["points"]], ":", color=COLORS.get(mode), alpha=0.7)
        axes[1].plot(taus, [p["perplexity_ratio"] for p in sweep["points"]], "o-", color=COLORS.get(mode), label=mode)
        sel = sweep.get("selected")
        if sel:
            notes.append(f"{mode}: tau {sel['tau']} gives {sel['speedup_measured']:.2f}x measured "
                         f"({sel['layer_speedup']:.2f}x in layers, mean exit layer {sel['avg_exit_layer']:.2f} of "
                         f"{sweep['n_layers']}) at perplexity x{sel['perplexity_ratio']:.2f}")
        else:
            notes.append(f"{mode}: no tau keeps perplexity within +{sweep['max_ppl_increase']:.0%}")
    axes[0].axhline(1.0, color="grey", lw=0.8)
    axes[0].set_xlabel("confidence threshold tau")
    axes[0].set_ylabel("speed-up vs full decoding")
    axes[1].axhline(1.1, color="grey", lw=0.8, ls="--")
    axes[1].set_xlabel("confidence threshold tau")
    axes[1].set_ylabel("perplexity / full decoding's")
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[0].legend()
    sweep = next(iter(lm.get("early_exit", {}).values()), None)
    caption = "Early-exit decoding (CALM-style, copied states fill the skipped layers' KV cache)"
    if sweep:
        caption += (f": greedy, batch {sweep['batch_size']}, {sweep['n_prompts']} prompts x {sweep['max_new_tokens']} "
                    f"tokens; solid = measured tokens/s ratio (median of {sweep['repeats']} interleaved repeats), "
                    f"dotted = layer-count speed-up; perplexity of the output under the full model. ")
    caption += "; ".join(notes) + "."
    fig.tight_layout()
    figures.append(("LM: early-exit decoding", fig, caption))

    # 5. decoding comparison: full vs self-speculative vs CALM vs HF (lm.json "decoding")
    dec = lm.get("decoding")
    if dec and dec.get("batches"):
        names = {"full": "full", "self-speculative": "self-speculative\n(ours, lossless)",
                 "calm": "CALM exit\n(ours, lossy)", "hf-generate": "HF generate\n(greedy)",
                 "hf-assistant-early-exit": "HF assistant\nearly exit"}
        batches = list(dec["batches"])
        fig, ax = plt.subplots(figsize=(7.0, 3.4))
        width = 0.8 / max(1, len(batches))
        order = [n for n in names if any(n in dec["batches"][b] for b in batches)]
        for j, b in enumerate(batches):
            table = dec["batches"][b]
            xs = [i + j * width for i, n in enumerate(order) if n in table]
            ys = [table[n]["speedup"] for n in order if n in table]
            ax.bar(xs, ys, width=width, label=f"batch {b}")
            for x, n in zip(xs, [n for n in order if n in table]):
                ax.text(x, table[n]["speedup"], f"{table[n]['speedup']:.2f}x", ha="center", va="bottom", fontsize=7)
        ax.set_xticks([i + width * (len(batches) - 1) / 2 for i in range(len(order))], [names[n] for n in order],
                      fontsize=8)
        ax.axhline(1.0, color="grey", lw=0.8)
        ax.set_ylabel("tokens/s vs full decoding")
        ax.legend(frameon=False, fontsize=8)
        fig.tight_layout()
        per_batch = {b: dec["batches"][b].get("self-speculative", {}) for b in batches}
        if all("draft_layer" in t for t in per_batch.values()):  # chosen per batch size (lm.json since 2026-12-02)
            draft = ", ".join((f"none (full decoding: the best draft expected at "
                               f"{t['choice']['expected_speedup']:.2f}x)" if t.get("decoder") == "full"
                               else f"{t['draft_layer']}, {t['gamma']}") + f" at batch {b}"
                              for b, t in per_batch.items())
        else:
            draft = f"{dec['draft_layer']}, {dec['gamma']}"
        sources = {t.get("choice", {}).get("source", "analysis") for t in per_batch.values()}
        chosen = ("from the acceptance measured on the prompts' greedy continuation" if sources == {"greedy continuation"}
                  else "from the analysis pass's agreement with the last layer")
        same = "; ".join(f"batch {b}: " + ", ".join(f"{n} {t['identical']}/{t['rows']}" for n, t in dec["batches"][b].items())
                         for b in batches)
        caption = (f"Greedy decoding of the aligned model, {dec['n_prompts']} test prompts x {dec['max_new_tokens']} "
                   f"tokens, median of {dec['repeats']} interleaved repeats. Self-speculative: draft layer "
                   f"k and draft length gamma {draft} (chosen {chosen} and the measured cost model), "
                   f"verified by the full model, output identical to full decoding; CALM: tau "
                   f"{dec['tau']}. Rows identical to full greedy decoding: {same}."
                   + (f" HF assistant_early_exit failed on this model ({dec['hf_error'][:80]})." if dec.get("hf_error") else ""))
        figures.append(("LM: decoding comparison", fig, caption))
    return figures
