"""Early-exit decoding with the one shared readout (CALM-style, Schuster et al. 2022).

Every generated token runs blocks 1, 2, ... and stops at the first layer l whose confidence passes
``tau``; its token is chosen from the shared readout R(h_l) (final norm -> LM head). Layer L always
answers, so ``tau > 1`` reproduces full-depth decoding token for token.

Skipped layers and the KV cache. Later tokens attend to the keys/values of every earlier token at
every layer, so a token that exited at layer e must still leave keys/values at layers e+1..L. We
follow CALM: the exited hidden state h_e is *copied* to the skipped layers, i.e. the keys/values of
layer l > e are computed from h_e (the layer's input norm and key/value projections only, through
:meth:`~layertrace.models.hf_causal.CausalLMAdapter.fill_cache`; no attention, no MLP). In a batch,
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

import time
from dataclasses import dataclass
from typing import Any, Literal, Sequence

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
        model: an HF causal LM (GPT-2 / Llama layout) or its adapter.
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
    for step in range(max_new_tokens):
        state = adapter.embed({"input_ids": step_input, "attention_mask": mask, "past_key_values": cache})
        prefill = step == 0
        rows_all = torch.arange(batch, device=ids.device)
        # the position that predicts the next token: each prompt's last real token, then the new one
        read_at = last_real_positions(mask) if prefill else torch.zeros(batch, dtype=torch.long, device=ids.device)
        # finished rows need no decision: they count as exited at layer 0 and only keep the cache valid
        exited = ~unfinished
        exit_layer = torch.zeros(batch, dtype=torch.long, device=ids.device)
        exit_hidden = state.hidden[rows_all, read_at].clone()
        step_logits = torch.zeros(batch, vocab, dtype=torch.float32, device=ids.device)
        h_prev = exit_hidden
        for layer in range(1, n_layers + 1):
            if not prefill and bool(exited.all()):
                adapter.fill_cache(layer, state.replace(exit_hidden[:, None]))
                continue
            if not prefill and bool(exited.any()):  # CALM copy: exited rows feed their exit state
                state = state.replace(torch.where(exited[:, None, None], exit_hidden[:, None], state.hidden))
            state = adapter.block(layer, state)
            blocks_run += batch
            h = state.hidden[rows_all, read_at]
            active = (~exited).nonzero().squeeze(1)
            if layer == n_layers:
                step_logits[active] = adapter.readout(h[active]).float()
                exit_layer[active] = layer
            elif layer >= min_layer and active.numel() > 0:
                conf, logits = layer_confidence(adapter, h[active], h_prev[active], confidence)
                leave = conf >= tau
                if bool(leave.any()):
                    rows = active[leave]
                    if logits is None:
                        logits = adapter.readout(h[rows]).float()
                        step_logits[rows] = logits
                    else:
                        step_logits[rows] = logits[leave]
                    exit_layer[rows] = layer
                    exit_hidden[rows] = h[rows]
                    exited = exited.clone()
                    exited[rows] = True
            h_prev = h
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
def sequence_perplexity(model: Any, sequences: Tensor, attention_mask: Tensor, score_mask: Tensor) -> float:
    """Perplexity of the scored tokens of ``sequences`` under the full model.

    Args:
        sequences: (B, T) prompt + generated tokens.
        attention_mask: (B, T) real tokens (prompt padding 0).
        score_mask: (B, T) 1 for the tokens to score (the generated ones); a token is scored only when
            it and the token before it are real (position 0 and a row's first real token never are).
    Returns:
        exp(mean negative log-likelihood over the scored tokens), accumulated in float64.
    """
    adapter = as_causal_adapter(model)
    device = adapter.device
    sequences, attention_mask, score_mask = sequences.to(device), attention_mask.to(device), score_mask.to(device)
    logits = adapter({"input_ids": sequences, "attention_mask": attention_mask})
    logp = torch.log_softmax(logits[:, :-1].double(), dim=-1)
    target = sequences[:, 1:]
    nll = -logp.gather(-1, target[..., None]).squeeze(-1)
    weight = (score_mask[:, 1:] * attention_mask[:, :-1] * attention_mask[:, 1:]).double()  # real context only
    if float(weight.sum()) == 0:
        return float("nan")
    return float(torch.exp((nll * weight).sum() / weight.sum()))


@dataclass
class DecodingPoint:
    """One decoding run summarised: speed, depth and quality of its text."""

    tau: float | None
    tokens_per_s: float
    avg_exit_layer: float
    blocks_fraction: float
    perplexity: float
    diversity: float | None = None
    coherence: float | None = None
    n_tokens: int = 0

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def summarize_run(model: Any, prompt_ids: Tensor, prompt_mask: Tensor, result: GenerationResult,
                  n_layers: int) -> DecodingPoint:
    """Tokens/s, mean exit layer (L for full decoding), fraction of blocks run and full-model perplexity."""
    gen_mask = result.new_mask.to(prompt_mask.device)
    full_mask = torch.cat([prompt_mask, gen_mask], dim=1)
    score = torch.cat([torch.zeros_like(prompt_mask), gen_mask], dim=1)
    ppl = sequence_perplexity(model, result.sequences, full_mask, score)
    n = result.n_generated
    if result.exit_layers is not None:
        avg_exit = float(result.exit_layers[result.new_mask.bool()].double().mean()) if n else float("nan")
    else:
        avg_exit = float(result.layer or n_layers)
    steps = result.new_tokens.shape[1]
    total_blocks = n_layers * prompt_ids.shape[0] * max(steps, 1)
    return DecodingPoint(tau=None, tokens_per_s=result.tokens_per_second, avg_exit_layer=avg_exit,
                         blocks_fraction=result.blocks_run / total_blocks, perplexity=ppl, n_tokens=n)


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
    repeats: int = 1,
    decode: Any = None,
    encoder: Any = None,
) -> dict[str, Any]:
    """Early-exit decoding at several ``tau`` against full-depth decoding, measured side by side.

    For each repeat the full-depth run and every tau run execute interleaved; tokens/s is the median
    over repeats. Quality of each run's text: perplexity under the full model, and when ``decode``
    (token ids -> str) is given, diversity and coherence (prompt vs continuation, ``encoder``).

    Returns:
        ``{"full": DecodingPoint dict, "points": [DecodingPoint dict per tau], "confidence": ...}``.
    """
    import statistics

    from .quality import coherence as coherence_fn
    from .quality import diversity as diversity_fn
    from .generate import generate

    adapter = as_causal_adapter(model)
    sampling = sampling or SamplingConfig(strategy="greedy")
    ids, mask = prepare_prompt(input_ids, attention_mask, adapter.device)
    runs: dict[Any, list[GenerationResult]] = {"full": [], **{t: [] for t in taus}}
    for _ in range(max(1, repeats)):
        runs["full"].append(generate(adapter, ids, mask, max_new_tokens=max_new_tokens, sampling=sampling,
                                     eos_token_id=eos_token_id))
        for t in taus:
            runs[t].append(early_exit_generate(adapter, ids, mask, tau=t, confidence=confidence,
                                               min_layer=min_layer, max_new_tokens=max_new_tokens,
                                               sampling=sampling, eos_token_id=eos_token_id))

    def point(key: Any) -> dict[str, Any]:
        results = runs[key]
        p = summarize_run(adapter, ids, mask, results[0], adapter.n_layers)
        p.tau = None if key == "full" else float(key)
        p.tokens_per_s = statistics.median(r.tokens_per_second for r in results)
        if decode is not None:
            texts = [decode(row[m.bool()].tolist()) for row, m in zip(results[0].new_tokens, results[0].new_mask)]
            prompts = [decode(row[m.bool()].tolist()) for row, m in zip(ids, mask)]
            p.diversity = diversity_fn(texts)
            if encoder is not None:
                p.coherence = coherence_fn(prompts, texts, encoder)
        return p.to_dict()

    return {
        "confidence": confidence,
        "min_layer": min_layer,
        "max_new_tokens": max_new_tokens,
        "batch_size": int(ids.shape[0]),
        "full": point("full"),
        "points": [point(t) for t in taus],
    }
