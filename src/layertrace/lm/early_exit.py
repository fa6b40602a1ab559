"""Early-exit decoding with the one shared readout (CALM-style, Schuster et al. 2022).

Every generated token runs blocks 1, 2, ... and stops at the first layer l whose confidence passes
``tau``; its token is chosen from the shared readout R(h_l) (final norm -> LM head). Layer L always
answers, so ``tau > 1`` reproduces full-depth decoding token for token.

Skipped layers and the KV cache. Later tokens attend to the keys/values of every earlier token at
every layer, so a token that exited at layer e must still leave keys/values at layers e+1..L. We
follow CALM: the exited hidden state h_e is *copied* to the skipped layers, i.e. the keys/values of
layer l > e are computed from h_e (the layer's input norm and key/value projections only, through
:meth:`~layertrace.models.hf_auto.HFAutoAdapter.fill_cache`; no attention, no MLP). In a batch,
rows are decided independently; a layer's full block is skipped once every row has exited (rows
that exited earlier ride along with their copied state until then, which keeps the cache
rectangular), so the saving is largest at batch size 1, CALM's setting.

Confidence measures:

* ``"softmax"``: the maximum softmax probability of R(h_l) (the paper's rule for classifiers; costs
  one LM-head application per tried layer);
* ``"state"``: cosine similarity between h_l and h_(l-1) (CALM's hidden-state saturation; costs O(d)).

The prompt (prefill) always runs at full depth; the first new token exits like the others (the
readout is tried on the last prompt position layer by layer).
"""

from __future__ import annotations

import math
import time
from typing import Any, Callable, Literal, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import LayertraceError
from .generate import (
    GenerationResult, SamplingConfig, _eos_set, as_causal_adapter, choose_tokens, last_real_positions,
    prepare_prompt,
)

Confidence = Literal["softmax", "state"]


def layer_confidence(adapter: Any, h: Tensor, h_prev: Tensor | None, measure: Confidence) -> tuple[Tensor, Tensor | None]:
    """Confidence of each row at one layer.

    Args:
        h: (b, d) hidden state of the current token at this layer.
        h_prev: (b, d) the same token at the previous layer (``state`` measure).
    Returns:
        (confidence (b,), logits (b, V) or ``None`` when the measure did not need them).
    """
    if measure == "softmax":
        logits = adapter.readout(h).float()
        return torch.softmax(logits, dim=-1).amax(dim=-1), logits
    if measure == "state":
        return F.cosine_similarity(h.float(), h_prev.float(), dim=-1), None
    raise LayertraceError(f"confidence measure {measure!r} is unknown: use 'softmax' or 'state'")


@torch.no_grad()
def early_exit_generate(
    model: Any,
    input_ids: Tensor,
    attention_mask: Tensor | None = None,
    *,
    tau: float = 0.9,
    confidence: Confidence = "softmax",
    min_layer: int = 1,
    max_new_tokens: int = 32,
    sampling: SamplingConfig | None = None,
    eos_token_id: int | list[int] | None = None,
    pad_token_id: int | None = None,
) -> GenerationResult:
    """Decode with per-token early exit at the first layer whose confidence is >= ``tau``.

    Args:
        model: any Hugging Face causal LM adapt() serves (docs/models.md) or its adapter.
        input_ids, attention_mask: (B, P) prompts, as for :func:`~layertrace.lm.generate.generate`.
        tau: exit threshold; any value > 1 never exits early (full-depth decoding).
        confidence: ``"softmax"`` (max probability of the shared readout) or ``"state"`` (cosine
            between consecutive layers' hidden states).
        min_layer: first layer allowed to exit (1..L).
        max_new_tokens, sampling, eos_token_id, pad_token_id: as for ``generate``. The token of an
            exited row is drawn from its exit layer's logits; all rows share one draw per step, so
            with ``tau > 1`` the random stream (and every token) equals full decoding.

    Returns:
        :class:`GenerationResult` with ``exit_layers`` (B, n) and ``blocks_run`` (full blocks
        executed, rows that ride along counted; ``fill_cache`` calls not counted).
    """
    adapter = as_causal_adapter(model)
    if confidence not in ("softmax", "state"):
        raise LayertraceError(f"confidence measure {confidence!r} is unknown: use 'softmax' or 'state'")
    n_layers = adapter.n_layers
    if not 1 <= min_layer <= n_layers:
        raise LayertraceError(f"min_layer={min_layer} must be in 1..{n_layers}")
    sampling = sampling or SamplingConfig()
    ids, mask = prepare_prompt(input_ids, attention_mask, adapter.device)
    eos = _eos_set(eos_token_id, ids.device)
    pad = pad_token_id if pad_token_id is not None else (int(eos[0]) if eos is not None else 0)
    generator = torch.Generator(device=ids.device).manual_seed(int(sampling.seed))
    batch = ids.shape[0]
    vocab = adapter.num_outputs

    start = time.perf_counter()
    cache = adapter.new_cache()
    unfinished = torch.ones(batch, dtype=torch.bool, device=ids.device)
    step_input = ids
    tokens_out: list[Tensor] = []
    mask_out: list[Tensor] = []
    exits_out: list[Tensor] = []
    blocks_run = 0
    rows_all = torch.arange(batch, device=ids.device)
    for step in range(max_new_tokens):
        state = adapter.embed({"input_ids": step_input, "attention_mask": mask, "past_key_values": cache})
        prefill = step == 0
        # the position that predicts the next token: each prompt's last real token, then the new token
        read_at = last_real_positions(mask) if prefill else None
        # finished rows need no decision: they count as exited at layer 0 and only keep the cache valid
        exited = ~unfinished
        n_exited = batch - int(unfinished.sum())
        exit_layer = torch.zeros(batch, dtype=torch.long, device=ids.device)
        h = state.hidden[rows_all, read_at] if prefill else state.hidden[:, -1]
        exit_hidden = h.clone()
        step_logits = torch.zeros(batch, vocab, dtype=torch.float32, device=ids.device)
        for layer in range(1, n_layers + 1):
            if not prefill and n_exited == batch:  # everyone exited: only fill the skipped layers' cache
                adapter.fill_cache(layer, state.replace(exit_hidden[:, None]))
                continue
            if not prefill and n_exited:  # CALM copy: exited rows feed their exit state to this layer
                state = state.replace(torch.where(exited[:, None, None], exit_hidden[:, None], state.hidden))
            state = adapter.block(layer, state)
            blocks_run += batch
            h_prev = h
            h = state.hidden[rows_all, read_at] if prefill else state.hidden[:, -1]
            if n_exited == batch:  # (prefill only) every row decided; deeper blocks only build the cache
                continue
            if n_exited == 0:  # common case: no indexing
                active, h_act, h_prev_act = rows_all, h, h_prev
            else:
                active = (~exited).nonzero().squeeze(1)
                h_act, h_prev_act = h[active], h_prev[active]
            if layer == n_layers:
                step_logits[active] = adapter.readout(h_act).float()
                exit_layer[active] = layer
            elif layer >= min_layer:
                conf, logits = layer_confidence(adapter, h_act, h_prev_act, confidence)
                if batch == 1:  # one comparison in Python instead of tensor ops
                    if float(conf) < tau:
                        continue
                    leave = torch.ones(1, dtype=torch.bool, device=conf.device)
                    n_leave = 1
                else:
                    leave = conf >= tau
                    n_leave = int(leave.sum())
                if n_leave:
                    rows = active[leave]
                    step_logits[rows] = adapter.readout(h[rows]).float() if logits is None else logits[leave]
                    exit_layer[rows] = layer
                    exit_hidden[rows] = h[rows]
                    exited = exited.clone()
                    exited[rows] = True
                    n_exited += n_leave
        token = choose_tokens(step_logits, sampling, generator)
        token = torch.where(unfinished, token, torch.full_like(token, pad))
        tokens_out.append(token)
        mask_out.append(unfinished.long())
        exits_out.append(torch.where(unfinished, exit_layer, torch.zeros_like(exit_layer)))
        if eos is not None:
            unfinished = unfinished & ~torch.isin(token, eos)
        if not bool(unfinished.any()):
            break
        step_input = token[:, None]
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
    seconds = time.perf_counter() - start
    tokens = torch.stack(tokens_out, dim=1)
    return GenerationResult(
        sequences=torch.cat([ids, tokens], dim=1), new_tokens=tokens, new_mask=torch.stack(mask_out, dim=1),
        layer=None, exit_layers=torch.stack(exits_out, dim=1), blocks_run=blocks_run, seconds=seconds,
    )


@torch.no_grad()
def sequence_nll(model: Any, sequences: Tensor, attention_mask: Tensor, score_mask: Tensor) -> tuple[float, int]:
    """(sum of negative log-likelihoods in nats, number of scored tokens) under the full model.

    Args:
        sequences: (B, T) prompt + generated tokens.
        attention_mask: (B, T) real tokens (prompt padding 0).
        score_mask: (B, T) 1 for the tokens to score (the generated ones); a token is scored only when
            it and the token before it are real (position 0 and a row's first real token never are).
    """
    adapter = as_causal_adapter(model)
    device = adapter.device
    sequences, attention_mask, score_mask = sequences.to(device), attention_mask.to(device), score_mask.to(device)
    logits = adapter({"input_ids": sequences, "attention_mask": attention_mask})
    logp = torch.log_softmax(logits[:, :-1].double(), dim=-1)
    nll = -logp.gather(-1, sequences[:, 1:, None]).squeeze(-1)
    weight = (score_mask[:, 1:] * attention_mask[:, :-1] * attention_mask[:, 1:]).double()  # real context only
    return float((nll * weight).sum()), int(weight.sum())


def sequence_perplexity(model: Any, sequences: Tensor, attention_mask: Tensor, score_mask: Tensor) -> float:
    """exp(mean NLL) of the scored tokens under the full model (see :func:`sequence_nll`); NaN if none."""
    total, count = sequence_nll(model, sequences, attention_mask, score_mask)
    return math.exp(total / count) if count else float("nan")


def early_exit_sweep(
    model: Any,
    input_ids: Tensor,
    attention_mask: Tensor | None = None,
    *,
    taus: Sequence[float] = (0.5, 0.7, 0.8, 0.9, 0.95, 0.99),
    confidence: Confidence = "softmax",
    min_layer: int = 1,
    max_new_tokens: int = 32,
    sampling: SamplingConfig | None = None,
    eos_token_id: int | None = None,
    batch_size: int | None = None,
    repeats: int = 1,
    max_ppl_increase: float = 0.10,
    decode: Callable[[list[int]], str] | None = None,
    encoder: Any = None,
) -> dict[str, Any]:
    """Early-exit decoding at several ``tau`` against full-depth decoding, measured side by side.

    The prompts are decoded in chunks of ``batch_size`` (default all at once). For every repeat and
    every chunk, the full-depth run and each tau run execute back to back (interleaved), so machine
    noise hits all settings alike; tokens/s of a setting is (its tokens) / (its decoding time) per
    repeat, and the reported value is the median over repeats. Quality of each setting's text
    (first repeat): perplexity under the full model, mean exit layer, and with ``decode`` (ids ->
    str) diversity and, with ``encoder`` too, coherence of prompt and continuation.

    Returns:
        ``{"full": point, "points": [point per tau], "selected": point or None, ...}``, a point being
        ``{tau, tokens_per_s, speedup_measured, avg_exit_layer, layer_speedup, blocks_fraction,
        perplexity, perplexity_ratio, diversity, coherence, n_tokens}``; ``selected`` is the point
        with the highest measured speed among those whose perplexity is at most
        ``(1 + max_ppl_increase)`` times full decoding's.
    """
    import statistics

    from .generate import generate
    from .quality import coherence as coherence_fn
    from .quality import diversity as diversity_fn

    adapter = as_causal_adapter(model)
    n_layers = adapter.n_layers
    sampling = sampling or SamplingConfig(strategy="greedy")
    ids, mask = prepare_prompt(input_ids, attention_mask, adapter.device)
    step = int(batch_size or ids.shape[0])
    chunks = [(ids[i:i + step], mask[i:i + step]) for i in range(0, ids.shape[0], step)]
    keys: list[Any] = ["full", *taus]
    timing: dict[Any, list[tuple[int, float]]] = {k: [] for k in keys}
    first: dict[Any, list[tuple[Tensor, Tensor, GenerationResult]]] = {k: [] for k in keys}

    def run(key: Any, cid: Tensor, cmask: Tensor) -> GenerationResult:
        if key == "full":
            return generate(adapter, cid, cmask, max_new_tokens=max_new_tokens, sampling=sampling,
                            eos_token_id=eos_token_id)
        return early_exit_generate(adapter, cid, cmask, tau=key, confidence=confidence, min_layer=min_layer,
                                   max_new_tokens=max_new_tokens, sampling=sampling, eos_token_id=eos_token_id)

    for rep in range(max(1, repeats)):
        totals = {k: [0, 0.0] for k in keys}
        for cid, cmask in chunks:
            for key in keys:
                res = run(key, cid, cmask)
                totals[key][0] += res.n_generated
                totals[key][1] += res.seconds
                if rep == 0:
                    first[key].append((cid, cmask, res))
        for key in keys:
            timing[key].append((totals[key][0], totals[key][1]))

    def point(key: Any) -> dict[str, Any]:
        speeds = [n / s for n, s in timing[key] if s > 0]
        nll = count = exit_sum = blocks = slots = 0.0
        texts: list[str] = []
        prompts: list[str] = []
        for cid, cmask, res in first[key]:
            gen_mask = res.new_mask.to(cmask.device)
            total, n = sequence_nll(adapter, res.sequences, torch.cat([cmask, gen_mask], 1),
                                    torch.cat([torch.zeros_like(cmask), gen_mask], 1))
            nll += total
            count += n
            layers = res.exit_layers if res.exit_layers is not None else torch.full_like(res.new_tokens, n_layers)
            exit_sum += float(layers[res.new_mask.bool()].sum())
            blocks += res.blocks_run
            slots += n_layers * cid.shape[0] * max(1, res.new_tokens.shape[1])
            if decode is not None:
                texts += [decode(r[m.bool()].tolist()) for r, m in zip(res.new_tokens, res.new_mask)]
                prompts += [decode(r[m.bool()].tolist()) for r, m in zip(cid, cmask)]
        n_tok = sum(int(res.new_mask.sum()) for _, _, res in first[key])
        avg_exit = exit_sum / n_tok if n_tok else float("nan")
        out = {
            "tau": None if key == "full" else float(key),
            "tokens_per_s": statistics.median(speeds) if speeds else float("nan"),
            "avg_exit_layer": avg_exit,
            "layer_speedup": n_layers / avg_exit if n_tok else float("nan"),
            "blocks_fraction": blocks / slots if slots else float("nan"),
            "perplexity": math.exp(nll / count) if count else float("nan"),
            "diversity": diversity_fn(texts) if decode is not None else None,
            "coherence": coherence_fn(prompts, texts, encoder) if (decode is not None and encoder is not None) else None,
            "n_tokens": n_tok,
        }
        return out

    full = point("full")
    points = [point(t) for t in taus]
    full_speeds = [n / s for n, s in timing["full"]]
    for p_, t in zip(points, taus):
        ratios = [(n / s) / fs for (n, s), fs in zip(timing[t], full_speeds)]
        p_["speedup_measured"] = statistics.median(ratios)
        p_["perplexity_ratio"] = p_["perplexity"] / full["perplexity"]
    full["speedup_measured"] = 1.0
    full["perplexity_ratio"] = 1.0
    ok = [p_ for p_ in points if p_["perplexity_ratio"] <= 1.0 + max_ppl_increase]
    selected = max(ok, key=lambda p_: p_["speedup_measured"]) if ok else None
    return {
        "confidence": confidence, "min_layer": min_layer, "max_new_tokens": max_new_tokens,
        "sampling": sampling.strategy, "batch_size": step, "n_prompts": int(ids.shape[0]), "repeats": repeats,
        "n_layers": n_layers, "max_ppl_increase": max_ppl_increase,
        "full": full, "points": points, "selected": selected,
    }
