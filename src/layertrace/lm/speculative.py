"""Self-speculative decoding with the one shared readout (LayerSkip-style, lossless).

Every round drafts ``gamma`` tokens with the first ``k`` blocks and the shared readout R(h_k) (final
norm -> LM head), then verifies them with one pass of the full model over the ``gamma + 1``
positions (the pending token and the drafts). The output is the full model's:

* greedy: the longest prefix of drafts equal to the full model's argmax is accepted, then the full
  model's own next token (a correction, or a bonus token when every draft was accepted); the text is
  token for token full greedy decoding;
* sampling: the speculative-sampling rule (Leviathan et al. 2023, Chen et al. 2023): draft d_j ~ q_j
  is accepted with probability min(1, p_j(d_j) / q_j(d_j)); the first rejected position draws from
  norm(max(p_j - q_j, 0)); after gamma acceptances a bonus token draws from p_(gamma+1). p and q are
  the full and draft distributions after the same temperature / top-k / top-p filtering
  (:func:`~layertrace.lm.generate.filter_logits`), so every token is distributed as full decoding's.

KV reuse. The verify pass does not re-run blocks 1..k: the draft already ran them on the pending
token and the drafts (one more single-token step feeds the last draft), left their keys / values in
the cache and its layer-k hidden states are kept; the verify pass runs blocks k+1..L on those
``gamma + 1`` hidden states only, with the masks of one ``embed`` over the window made before the
draft; each draft step's own state is a slice of that embed
(:meth:`~layertrace.models.decode_step.DecodeStep.window_steps`; ``adapter.embed`` per step where the
adapter has no decode path). Blocks 1..k cost ``gamma + 1`` single-token steps per round and blocks
k+1..L one (gamma + 1)-token step.

Batching: padding, not per-row cache lengths. All rows share one rectangular cache (one HF
``DynamicCache``). After verification a row that accepted fewer tokens than the batch's longest keeps
its rejected positions as holes: they are set to 0 in the attention mask (so nothing attends to them
and ``cumsum(mask)`` position ids skip them), and the cache is cropped (``DynamicCache.crop``) only
past the longest accepted prefix. A row that is done (``max_new_tokens`` reached or eos emitted) is
dropped from the batch (``DynamicCache.batch_select_indices``), so it costs nothing afterwards.
Nothing is recomputed for a row that rejected early (every row runs the same window once); what a
batch costs is waiting for its slowest row (:func:`~layertrace.lm.draft_choice.expected_rounds`).
Everything goes through the adapter API (``embed`` / ``block`` / ``readout``, ``new_cache``).

Choosing ``k`` and ``gamma``. A greedy draft token is accepted when the layer-k readout agrees with
the final prediction: measured per prompt on its greedy continuation (``analysis="measure"``,
:func:`measure_acceptance`; a batch waits for its worst prompt), or the analysis pass's ``final_agreement`` on test text (fraction of
tokens whose layer-k prediction equals the last layer's; older files: ``saturation_cumulative``,
the fraction settled at layer k for good, a lower bound).
:func:`choose_draft` picks the (k, gamma) with the best expected speed-up under a cost model
(:func:`expected_speedup`; :func:`measure_step_costs` calibrates it); ``draft_layer=`` / ``gamma=``
override it. With an ``eos_token_id``, the measured continuation stops at eos too and each prompt's
length joins its rate: rows that end early leave the batch, so a batch mostly waits for its long
rows (on the ``draft`` demo LM at batch 8 this moved the choice from k = 3, gamma = 1, 1.11x, to
k = 3, gamma = 2, 1.17-1.18x).
"""

from __future__ import annotations

import contextlib
import time
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from torch import Tensor

from ..errors import LayertraceError
from ..models.decode_step import window_steps
from .generate import (
    GenerationResult, SamplingConfig, _eos_set, as_causal_adapter, choose_tokens, filter_logits, generate,
    last_real_positions, prepare_prompt,
)
# Choosing k and gamma lives in draft_choice.py (its names stay importable from here: the tests, lm/__init__);
# measure_step_costs is here because it times self-speculative decoding itself.
from .draft_choice import (MAX_GAMMA, DraftChoice, StepCosts, acceptance_by_layer, choose_draft,  # noqa: F401
                           expected_speedup, expected_tokens_per_round, measure_acceptance, prompt_acceptance)


# ----------------------------------------------------------------------------- calibration
@contextlib.contextmanager
def timed_adapter_calls(adapter: Any, on_call: Callable[[str, tuple, float], None]) -> Iterator[None]:
    """Inside the block, every ``adapter.embed`` / ``block`` / ``readout`` call also reports
    ``on_call(kind, args, seconds)`` (``kind`` the method's name, ``args`` its positional arguments).

    Instance attributes shadow the methods for the block only (callers that hold the adapter see them;
    nothing is patched on the class); blocks nest (the inner one reports to both, then restores the
    outer one's).
    """
    def wrap(kind, method):
        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                on_call(kind, args, time.perf_counter() - t0)
        return timed

    kinds = ("embed", "block", "readout")
    outer = {kind: adapter.__dict__.get(kind) for kind in kinds}  # an enclosing block's wrappers
    for kind in kinds:
        object.__setattr__(adapter, kind, wrap(kind, getattr(adapter, kind)))
    try:
        yield
    finally:
        for kind in kinds:
            if outer[kind] is None:
                object.__delattr__(adapter, kind)
            else:
                object.__setattr__(adapter, kind, outer[kind])


def _timed(adapter: Any, fn) -> tuple[float, float]:
    """(total seconds of ``fn()``, seconds of it spent outside ``adapter.embed`` / ``block`` / ``readout``)."""
    inside = [0.0]

    def add(kind: str, args: tuple, seconds: float) -> None:
        inside[0] += seconds

    with timed_adapter_calls(adapter, add):
        t0 = time.perf_counter()
        fn()
        total = time.perf_counter() - t0
    return total, total - inside[0]


def measure_step_costs(adapter: Any, ids: Tensor, mask: Tensor, window: int = 5, repeats: int = 21,
                       new_tokens: int = 12) -> StepCosts:
    """Calibrate the cost model on this model, device and batch: time the pieces of decoding.

    The prefill of the (B, P) prompts is timed (median of a few, the first a warm-up); after it,
    medians of ``repeats`` timings (interleaved over m) of a cached step of m = 1..``window`` new
    tokens through all L blocks in order (what a decoding step or a verify pass runs; the cache is
    cropped back after each), of one cached ``embed`` (one new token), of a draft step's sliced embed
    and of the readout + argmax of (B, d) hidden states. The bookkeeping of both
    loops is timed on one short greedy decode each (``new_tokens``; full decoding, and
    self-speculative decoding with k = 1, gamma = 1) as their time outside embed / block / readout.
    At batch > 1 the steps of m = 1..``window`` are timed with a hole in the mask (one masked cached
    position in row 0), as a speculative round meets them from its second round on (rows that
    accepted fewer drafts than the longest leave holes), and full decoding's one-token step with the
    prompts' own mask: ``block_costs[0]`` is then the draft step's cost relative to full decoding's.
    Everything is returned relative to one block on one new token of full decoding.
    """
    import statistics


    def median_s(fn) -> float:
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return statistics.median(times)

    n_layers = adapter.n_layers
    with torch.no_grad():
        prefills = []
        for _ in range(max(3, repeats // 4)):
            cache = adapter.new_cache()
            t0 = time.perf_counter()
            adapter.state_at({"input_ids": ids, "attention_mask": mask, "past_key_values": cache}, n_layers)
            prefills.append(time.perf_counter() - t0)

        # at batch > 1 a round's blocks meet holes, full decoding's steps do not (see above)
        batched = mask.shape[0] > 1
        spec_mask = mask.clone() if batched else mask
        if batched:
            spec_mask[0, -1] = 0

        def step_inputs(t: int, prompt_mask: Tensor = mask) -> dict[str, Any]:
            return {"input_ids": ids[:, -1:].expand(-1, t), "past_key_values": cache,
                    "attention_mask": torch.cat([prompt_mask, mask.new_ones(mask.shape[0], t)], 1)}

        def all_blocks(t: int, prompt_mask: Tensor = mask):
            inputs = step_inputs(t, prompt_mask)
            for _ in range(2):  # the first cached step of a shape teaches the adapter's decode path
                st = adapter.embed(inputs)
                for layer in range(1, n_layers + 1):
                    st = adapter.block(layer, st)
                for layer_cache in cache.layers:
                    layer_cache.crop(-t)
            st0 = adapter.embed(inputs)

            def run():
                st = st0
                for layer in range(1, n_layers + 1):
                    st = adapter.block(layer, st)
                for layer_cache in cache.layers:
                    layer_cache.crop(-t)
            return run

        # interleaved (every m once per repeat), so drifting machine load hits every m alike; the
        # first run is full decoding's step (the unit), then the speculative blocks' (at batch 1 the same)
        runs = ([all_blocks(1)] if batched else []) + [all_blocks(t, spec_mask) for t in range(1, max(2, window) + 1)]
        times: list[list[float]] = [[] for _ in runs]
        for _ in range(repeats):
            for run, acc in zip(runs, times):
                t0 = time.perf_counter()
                run()
                acc.append(time.perf_counter() - t0)
        per_block = [statistics.median(acc) / n_layers for acc in times]
        one = per_block[0]
        per_block = per_block[1:] if batched else per_block
        inputs = step_inputs(1)
        embed = median_s(lambda: adapter.embed(inputs))
        hidden = adapter.embed(inputs).hidden[:, -1]
        readout = median_s(lambda: adapter.readout(hidden).float().argmax(-1))
        wide = step_inputs(2)
        stepper = window_steps(adapter, wide, adapter.embed(wide))
        step_embed = median_s(lambda: stepper(1, ids[:, -1:])) if stepper is not None else embed
        greedy = SamplingConfig("greedy")
        kw = dict(max_new_tokens=new_tokens, sampling=greedy)
        self_speculative_generate(adapter, ids, mask, draft_layer=1, gamma=1, **kw)  # warm-up: learn the cases
        generate(adapter, ids, mask, **kw)
        rounds: list[int] = []
        _, spec_rest = _timed(adapter, lambda: rounds.append(
            self_speculative_generate(adapter, ids, mask, draft_layer=1, gamma=1, **kw).stats["rounds"]))
        _, full_rest = _timed(adapter, lambda: generate(adapter, ids, mask, **kw))
    return StepCosts(position_cost=max(0.0, (per_block[-1] - per_block[0]) / one / (len(per_block) - 1)),
                     readout_cost=readout / one, embed_cost=embed / one, source=f"measured at batch {ids.shape[0]}",
                     block_costs=tuple(t / one for t in per_block), step_embed_cost=step_embed / one,
                     loop_cost=full_rest / new_tokens / one, round_cost=spec_rest / max(1, rounds[0]) / one,
                     prefill_cost=statistics.median(prefills[1:]) / one)


# ----------------------------------------------------------------------------- decoding
def _choice(adapter: Any, ids: Tensor, mask: Tensor, draft_layer: int | None, gamma: int | None, analysis: Any,
            costs: StepCosts | str | None, new_tokens: int | None = None, eos_token_id: Any = None,
            lengths: np.ndarray | None = None) -> DraftChoice:
    """(k, gamma) as given, or chosen from ``analysis`` (else the (B, P) prompts) and ``costs`` for the
    batch of ``ids`` decoding ``new_tokens``; ``lengths``: per-row tokens before eos of the per-row
    rates in ``analysis`` (``analysis="measure"`` measures them where ``eos_token_id`` is given)."""
    n_layers = adapter.n_layers
    if draft_layer is not None and gamma is not None:
        choice = choose_draft(np.ones(n_layers + 1), n_layers, draft_layer=draft_layer, gamma=gamma, source="given")
        choice.acceptance, choice.expected_speedup, choice.costs = float("nan"), float("nan"), None
        return choice
    if isinstance(analysis, str) and analysis == "measure":
        measured = 16  # tokens of greedy continuation: enough for the rates, a fraction of a decode's cost
        rates, lengths = measure_acceptance(adapter, ids, mask, new_tokens=measured, per_row=True,
                                            eos_token_id=eos_token_id, with_lengths=True)
        source = "greedy continuation"
        if eos_token_id is None or new_tokens is None:
            lengths = None
        else:  # a row eos did not stop within the measured tokens may decode all of new_tokens
            lengths = np.where(lengths < measured, np.minimum(lengths, new_tokens), new_tokens)
    elif analysis is not None:
        rates, source = acceptance_by_layer(analysis, n_layers), "analysis"
    else:
        rates, source = prompt_acceptance(adapter, ids, mask), "prompts"
    if isinstance(costs, str):
        if costs != "measure":
            raise LayertraceError(f"costs={costs!r}: use 'measure', a StepCosts or None (the defaults)")
        costs = measure_step_costs(adapter, ids, mask)
    if lengths is not None and (rates.ndim != 2 or rates.shape[1] != len(lengths)):
        lengths = None  # lengths belong to per-row rates of the same prompts
    return choose_draft(rates, n_layers, draft_layer=draft_layer, gamma=gamma, costs=costs, source=source,
                        batch=int(ids.shape[0]), new_tokens=new_tokens, lengths=lengths)


def _draw(probs: Tensor, generator: torch.Generator) -> Tensor:
    """One multinomial draw per row of (b, V) probabilities -> (b,) long."""
    return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(1)


def _probs(logits: Tensor, sampling: SamplingConfig) -> Tensor:
    """Filtered softmax of (..., V) logits, as full sampling draws from."""
    shape = logits.shape
    flat = filter_logits(logits.reshape(-1, shape[-1]).float(), sampling)
    return torch.softmax(flat, dim=-1).reshape(shape)


@torch.no_grad()
def self_speculative_generate(
    model: Any,
    input_ids: Tensor,
    attention_mask: Tensor | None = None,
    *,
    draft_layer: int | None = None,
    gamma: int | None = None,
    analysis: Any = None,
    max_new_tokens: int = 32,
    sampling: SamplingConfig | None = None,
    eos_token_id: int | list[int] | None = None,
    pad_token_id: int | None = None,
    confidence: float = 0.0,
    costs: StepCosts | str | None = None,
) -> GenerationResult:
    """Decode with self-speculation: draft with blocks 1..k + the shared readout, verify with all L.

    Args:
        model: any Hugging Face causal LM adapt() serves (docs/models.md) or its adapter.
        input_ids, attention_mask: (B, P) prompts (left or right padding), as for
            :func:`~layertrace.lm.generate.generate`.
        draft_layer: k in 1..L-1; ``None`` = chosen by :func:`choose_draft`.
        gamma: drafted tokens per round; ``None`` = chosen by :func:`choose_draft`.
        analysis: where the per-layer acceptance comes from when k or gamma is chosen: an
            ``AnalysisResult``, its folder / ``analysis.json``, or L + 1 rates (or (L + 1, R) per
            prompt); ``"measure"`` measures it per prompt on the prompts' own greedy continuation
            (:func:`measure_acceptance`, 16 tokens, stopping at ``eos_token_id`` like decoding: what
            drafting meets, how much the rows differ, which a batch waiting for its worst row pays,
            and which rows end early; the analysis pass reads test text, where agreement is a little
            lower); ``None``
            estimates it on the prompts' text (:func:`prompt_acceptance`).
        max_new_tokens, sampling, eos_token_id, pad_token_id: as for ``generate``. Greedy output is
            full greedy decoding's; sampled output has full sampling's distribution (not its random
            stream: the draws differ).
        confidence: stop a round's drafting early when no row's draft token has a (filtered)
            probability >= this under the draft readout (0 = always draft ``gamma``). Lossless either
            way: the decision depends on the draft only.
        costs: the cost model's constants when k or gamma is chosen: a :class:`StepCosts`,
            ``"measure"`` (:func:`measure_step_costs` on these prompts: the choice then depends on
            timings; greedy output does not) or ``None`` (the defaults).

    Returns:
        :class:`GenerationResult`; ``stats`` holds ``draft_layer``, ``gamma``, ``rounds``,
        ``acceptance`` (accepted / drafted tokens), ``tokens_per_round``, ``decoder``
        (``"speculative"``, or ``"full"`` when the choice's ``full`` is set: with k and gamma both
        chosen and the cost model expecting the best draft to run slower than full decoding, the
        prompts are decoded fully; give ``draft_layer`` and ``gamma`` to speculate anyway) and
        ``choice`` (the :class:`DraftChoice` as a dict).
    """
    adapter = as_causal_adapter(model)
    n_layers = adapter.n_layers
    sampling = sampling or SamplingConfig()
    ids, mask = prepare_prompt(input_ids, attention_mask, adapter.device)
    choice = _choice(adapter, ids, mask, draft_layer, gamma, analysis, costs, max_new_tokens, eos_token_id)
    if choice.full:
        return full_decoding_instead(generate(adapter, ids, mask, max_new_tokens=max_new_tokens, sampling=sampling,
                                              eos_token_id=eos_token_id, pad_token_id=pad_token_id), choice)
    k, g = choice.draft_layer, choice.gamma
    eos = _eos_set(eos_token_id, ids.device)
    pad = pad_token_id if pad_token_id is not None else (int(eos[0]) if eos is not None else 0)
    generator = torch.Generator(device=ids.device).manual_seed(int(sampling.seed))
    batch, device = ids.shape[0], ids.device
    width = max_new_tokens + g + 1  # room for a round's overshoot
    out = torch.full((batch, width + 1), -1, dtype=torch.long, device=device)  # last column: discarded writes
    steps = torch.arange(g + 1, device=device)

    start = time.perf_counter()
    # prefill: the full model over the prompts, the first token from each prompt's last real position
    cache = adapter.new_cache()
    state = adapter.state_at({"input_ids": ids, "attention_mask": mask, "past_key_values": cache}, n_layers)
    blocks_run = n_layers * batch
    last = state.hidden[torch.arange(batch, device=device), last_real_positions(mask)]
    pending = choose_tokens(adapter.readout(last), sampling, generator)
    out[:, 0] = pending
    pend = pending[:, None]  # (b, 1): the token each active row feeds next
    rows = torch.arange(batch, device=device)  # original row of each active row
    cnt = torch.ones(batch, dtype=torch.long, device=device)  # tokens each active row has
    hit = torch.isin(pending, eos) if eos is not None else None  # active rows that emitted eos
    drafted = accepted = rounds = row_rounds = 0
    # The attention mask lives in a buffer of ones wide enough for every round (each adds at most
    # gamma + 1 columns): a round's mask is a view, rejected drafts of a batch are written as holes.
    past = mask.shape[1]
    mask_buf = torch.cat([mask, mask.new_ones(batch, max_new_tokens * (g + 1) + g + 1)], dim=1)
    # per-layer cache lengths are known (no get_seq_length): blocks 1..k hold the draft steps'
    # positions, blocks k+1..L the verify window's
    shallow, deep = cache.layers[:k], cache.layers[k:]
    f32 = torch.float32

    while True:
        lo, hi = (int(c) for c in cnt.aminmax())
        if hi >= max_new_tokens or (hit is not None and bool(hit.any())):
            finished = cnt >= max_new_tokens
            if hit is not None:
                finished |= hit
            keep = (~finished).nonzero().squeeze(1)
            if keep.numel() == 0:
                break
            rows, mask_buf, pend, cnt = rows[keep], mask_buf[keep], pend[keep], cnt[keep]
            hit = hit[keep] if hit is not None else None
            cache.batch_select_indices(keep)
            lo = int(cnt.min())
        b = rows.shape[0]
        # no row can use more than its remaining tokens: shorter drafts near the end
        g_now = max(0, min(g, max_new_tokens - lo - 1))
        wide_mask = mask_buf[:, :past + g_now + 1]
        # The verify pass's state (masks and positions of the window: the pending token, then the
        # drafts) is embedded first, while every layer's cache still holds `past` tokens (embed reads
        # the cache length, which the draft steps change); its layer-0 hidden is replaced below.
        # Each draft step embeds one token; with the adapter's decode path its positions, masks and
        # rotary tables are slices of the window's (window_steps), so a step costs an embedding lookup.
        window = {"input_ids": pend.expand(b, g_now + 1), "attention_mask": wide_mask, "past_key_values": cache}
        verify = adapter.embed(window)
        stepper = window_steps(adapter, window, verify)
        hidden_k: list[Tensor] = []  # (b, 1, d) layer-k states of the pending token and the drafts
        draft_tokens: list[Tensor] = []  # (b, 1) each
        draft_probs: list[Tensor] = []
        token = pend
        for j in range(g_now + 1):
            if stepper is not None:
                st = stepper(j, token)
            else:
                st = adapter.embed({"input_ids": token, "attention_mask": wide_mask[:, :past + j + 1],
                                    "past_key_values": cache})
            for layer in range(1, k + 1):
                st = adapter.block(layer, st)
            hidden_k.append(st.hidden)
            if j == g_now:
                break
            logits = adapter.readout(st.hidden)  # (b, 1, V)
            if logits.dtype != f32:
                logits = logits.float()
            if sampling.do_sample:
                q = _probs(logits[:, 0], sampling)
                token = _draw(q, generator)[:, None]
                confident = q.max(-1).values >= confidence if confidence > 0 else None
            else:
                token = logits.argmax(-1)
                confident = torch.softmax(logits[:, 0], -1).max(-1).values >= confidence if confidence > 0 else None
            if confident is not None and not bool(confident.any()):
                # no row's draft is confident: stop drafting (this draft is dropped; hidden_k already
                # holds the last kept draft's layer-k state, so the verify pass gets g_eff + 1 positions)
                break
            if sampling.do_sample:
                draft_probs.append(q)
            draft_tokens.append(token)
        g_win, g_now = g_now, len(draft_tokens)  # the verify window was embedded for g_win + 1 positions
        blocks_run += (g_now + 1) * k * b + (n_layers - k) * b
        # positions past g_now (a draft stopped early) are filler: causal attention keeps them out of
        # the kept positions, their logits are not read and their cache entries are cropped below
        hidden = torch.cat(hidden_k + hidden_k[-1:] * (g_win - g_now), dim=1)
        st = verify.replace(hidden)
        for layer in range(k + 1, n_layers + 1):
            st = adapter.block(layer, st)
        full_logits = adapter.readout(st.hidden if g_now == g_win else st.hidden[:, :g_now + 1])  # (b, g_now + 1, V)
        if full_logits.dtype != f32:
            full_logits = full_logits.float()
        drafts = torch.cat(draft_tokens, dim=1) if draft_tokens else pend.new_zeros(b, 0)
        if sampling.do_sample:
            p = _probs(full_logits, sampling)
            if g_now:
                q = torch.stack(draft_probs, dim=1)
                p_d = p[:, :g_now].gather(-1, drafts[..., None]).squeeze(-1)
                q_d = q.gather(-1, drafts[..., None]).squeeze(-1)
                u = torch.rand(b, g_now, generator=generator, device=device)
                ok = u * q_d < p_d  # u < p/q without dividing
                n_ok = ok.long().cumprod(1).sum(1)
            else:
                n_ok = torch.zeros(b, dtype=torch.long, device=device)
            at = n_ok.clamp(max=max(g_now - 1, 0))
            p_n = p[torch.arange(b, device=device), n_ok]
            if g_now:
                resid = (p[torch.arange(b, device=device), at] - q[torch.arange(b, device=device), at]).clamp(min=0)
                rejected = (n_ok < g_now)[:, None]
                mass = resid.sum(-1, keepdim=True)
                resid = torch.where(mass > 0, resid / mass.clamp(min=1e-30), p_n)
                p_n = torch.where(rejected, resid, p_n)
            last_token = _draw(p_n, generator)
            emitted = torch.cat([drafts, last_token[:, None]], dim=1)
            emitted[torch.arange(b, device=device), n_ok] = last_token
        else:
            full_tokens = full_logits.argmax(-1)  # (b, g_now + 1)
            n_ok = (drafts == full_tokens[:, :g_now]).cumprod(1).sum(1) if g_now else full_tokens.new_zeros(b)
            emitted = full_tokens  # equal to the drafts on the accepted prefix
        rounds += 1
        row_rounds += b
        drafted += g_now * b
        n_max = int(n_ok.max())
        longest = n_max + 1
        if b == 1:  # one row keeps tokens 0..n_ok: plain slices, no holes
            accepted += n_max
            c = int(cnt)
            out[rows, c:c + longest] = emitted[:, :longest]
            if hit is not None:
                hit = torch.isin(emitted[:, :longest], eos).any(1)
        else:
            accepted += int(n_ok.sum())
            # write tokens 0..n_ok of each row after what it has; positions past n_ok go to the dump column
            keep_tok = steps[: g_now + 1] <= n_ok[:, None]
            dest = torch.where(keep_tok, cnt[:, None] + steps[: g_now + 1], width)
            out[rows[:, None], dest] = emitted
            if hit is not None:
                hit = hit | (torch.isin(emitted, eos) & keep_tok).any(1)
            # rejected drafts of rows that accepted fewer than the longest become holes
            mask_buf[:, past:past + longest] = keep_tok[:, :longest]
        cnt = cnt + n_ok + 1
        pend = emitted.gather(1, n_ok[:, None])
        # the cache holds pending + drafts (g_now + 1 positions; g_win + 1 in blocks k+1..L); a row
        # keeps 0..n_ok (the pending token and its accepted drafts); every layer is cropped past the
        # longest kept prefix
        past += longest
        for layers, held in ((shallow, g_now + 1), (deep, g_win + 1)):
            if held > longest:
                for layer_cache in layers:
                    layer_cache.crop(longest - held)
    seconds = time.perf_counter() - start

    tokens = out[:, :max_new_tokens].clone()
    new_mask = torch.ones_like(tokens)
    if eos is not None:  # a row stops after its first eos: later slots are padding
        hit = torch.isin(tokens, eos).long()
        after = (hit.cumsum(1) - hit) > 0
        new_mask[after] = 0
    tokens[new_mask == 0] = pad
    stats = {"draft_layer": k, "gamma": g, "choice": choice.to_dict(), "rounds": rounds, "drafted": drafted,
             "accepted": accepted, "acceptance": accepted / drafted if drafted else float("nan"),
             "tokens_per_round": (accepted + row_rounds) / max(1, row_rounds), "decoder": "speculative"}
    return GenerationResult(
        sequences=torch.cat([ids, tokens], dim=1), new_tokens=tokens, new_mask=new_mask, layer=None,
        blocks_run=blocks_run, seconds=seconds, stats=stats,
    )


def full_decoding_instead(result: GenerationResult, choice: DraftChoice) -> GenerationResult:
    """``result`` of full decoding, with the self-speculative ``stats`` saying why it ran: no draft
    (``draft_layer`` None, ``gamma`` 0), one token per step, the rejected ``choice``."""
    result.stats = {"draft_layer": None, "gamma": 0, "choice": choice.to_dict(), "rounds": 0, "drafted": 0,
                    "accepted": 0, "acceptance": float("nan"), "tokens_per_round": 1.0, "decoder": "full"}
    return result


def _hf_generate(model: Any, ids: Tensor, mask: Tensor, max_new_tokens: int, eos: int | None, **extra: Any):
    """HF ``model.generate`` greedy (``extra``: e.g. ``assistant_early_exit=k``, HF's self-speculative
    decoding, batch 1 only): (new tokens (B, n), their real-token mask, seconds)."""
    config = model.config
    n_layers = config.num_hidden_layers  # HF sets it to k while drafting and does not restore it on an error
    start = time.perf_counter()
    try:
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False,
                             eos_token_id=eos, pad_token_id=eos if eos is not None else 0, **extra)
    finally:
        config.num_hidden_layers = n_layers
    seconds = time.perf_counter() - start
    new = out[:, ids.shape[1]:]
    if eos is None:
        return new, torch.ones_like(new), seconds
    hit = (new == eos).long()
    return new, ((hit.cumsum(1) - hit) == 0).long(), seconds


@torch.no_grad()
def compare_decoders(model: Any, prompts: Tensor, *, draft_layer: int | None = None, gamma: int | None = None,
                     analysis: Any = None, tau: float = 0.4, batch_sizes: Sequence[int] = (1, 8), repeats: int = 3,
                     max_new_tokens: int = 32, eos_token_id: int | None = None, hf: bool = True,
                     confidence: float = 0.0, costs: StepCosts | str | None = "measure") -> dict[str, Any]:
    """Greedy decoding side by side: full, self-speculative (ours), CALM-style early exit (ours, ``tau``),
    HF ``model.generate`` (plain greedy: what users run) and, at batch 1, HF
    ``generate(..., assistant_early_exit=k)`` with the same k.

    For every repeat and every chunk of ``batch_size`` prompts all decoders run back to back
    (interleaved), so machine noise hits them alike. tokens/s of a decoder in a repeat = its real
    generated tokens / its decoding time; its speed-up = that over full decoding's in the same repeat;
    medians over repeats. ``identical`` counts rows whose tokens equal full decoding's.

    Args:
        model: an HF causal LM (its adapter is built here); prompts: (N, P) unpadded prompts.
        draft_layer, gamma, analysis, costs: as for :func:`self_speculative_generate`; what is not
            given is chosen per batch size (``"measure"``: the cost model calibrated on the first
            chunk of that batch size, before any decoder is timed; ``analysis="measure"``: the
            acceptance measured once on the greedy continuation of all ``prompts``, with each
            prompt's length before ``eos_token_id`` when given).
        hf: include HF's decoders (assistant_early_exit is skipped when it fails on this model, e.g.
            GPT-2 in transformers 5: its early-exit assistant builds a cache of k layers and the model
            runs all L into it).
    Returns:
        ``{"draft_layer", "gamma", "choice", "tau", "repeats", "max_new_tokens", "n_prompts",
        "batches": {"<batch size>": {decoder: {tokens_per_s, speedup, identical, rows}}}, "hf_error"}``;
        the top-level choice is the first batch size's (HF gets its k), each batch's
        ``"self-speculative"`` entry holds its own ``draft_layer``, ``gamma``, ``decoder`` (``"full"``
        where that batch size's choice expects no gain: the row then times the full decoding
        :func:`self_speculative_generate` falls back to), ``choice`` and ``acceptance``.
    """
    import statistics

    from .early_exit import early_exit_generate

    adapter = as_causal_adapter(model)
    hf_model = adapter.model
    chunks_of = {int(b): [prompts[i:i + int(b)].to(adapter.device) for i in range(0, prompts.shape[0], int(b))]
                 for b in batch_sizes}
    measured = isinstance(analysis, str) and analysis == "measure"
    lengths = None
    if measured and (draft_layer is None or gamma is None):  # one estimate over all prompts, not per chunk
        analysis, lengths = measure_acceptance(adapter, prompts.to(adapter.device),
                                               torch.ones_like(prompts).to(adapter.device), new_tokens=max_new_tokens,
                                               per_row=True, eos_token_id=eos_token_id, with_lengths=True)
    choices = {b: _choice(adapter, c[0], torch.ones_like(c[0]), draft_layer, gamma, analysis, costs, max_new_tokens,
                          eos_token_id, lengths if eos_token_id is not None else None)
               for b, c in chunks_of.items()}
    if measured:
        for c in choices.values():
            c.source = "greedy continuation" if c.source == "analysis" else c.source
    choice = choices[int(batch_sizes[0])]
    k = choice.draft_layer
    greedy = SamplingConfig("greedy")
    common = dict(max_new_tokens=max_new_tokens, sampling=greedy, eos_token_id=eos_token_id)
    hf_error = None
    if hf:
        try:
            _hf_generate(hf_model, prompts[:1], torch.ones_like(prompts[:1]), max_new_tokens, eos_token_id,
                         assistant_early_exit=k)
        except Exception as exc:  # noqa: BLE001 - HF's own limitation, reported in the result
            hf_error = f"{type(exc).__name__}: {exc}"
    out: dict[str, Any] = {"draft_layer": k, "gamma": choice.gamma, "choice": choice.to_dict(), "tau": float(tau),
                           "repeats": int(repeats), "max_new_tokens": int(max_new_tokens),
                           "n_prompts": int(prompts.shape[0]), "batches": {}, "hf_error": hf_error}
    for batch in batch_sizes:
        chosen = choices[int(batch)]
        kb, gb = chosen.draft_layer, chosen.gamma
        decoders: dict[str, Any] = {
            "full": lambda i, m: generate(adapter, i, m, **common),
            # what self_speculative_generate runs with this choice made inside it
            "self-speculative": ((lambda i, m: full_decoding_instead(generate(adapter, i, m, **common), chosen))
                                 if chosen.full else
                                 (lambda i, m: self_speculative_generate(adapter, i, m, draft_layer=kb, gamma=gb,
                                                                         confidence=confidence, **common))),
            "calm": lambda i, m: early_exit_generate(adapter, i, m, tau=tau, **common),
        }
        if hf:  # what users run: HF's own greedy decoding (any batch size)
            decoders["hf-generate"] = lambda i, m: _hf_generate(hf_model, i, m, max_new_tokens, eos_token_id)
        if hf and hf_error is None and batch == 1:
            decoders["hf-assistant-early-exit"] = lambda i, m: _hf_generate(hf_model, i, m, max_new_tokens,
                                                                           eos_token_id, assistant_early_exit=k)
        chunks = chunks_of[int(batch)]
        speeds: dict[str, list[float]] = {n: [] for n in decoders}
        first: dict[str, list[Tensor]] = {n: [] for n in decoders}
        acceptance: list[float] = []
        for fn in decoders.values():  # warm-up
            fn(chunks[0], torch.ones_like(chunks[0]))
        for rep in range(max(1, repeats)):
            totals = {n: [0, 0.0] for n in decoders}
            for ids in chunks:
                mask = torch.ones_like(ids)
                for name, fn in decoders.items():
                    res = fn(ids, mask)
                    if isinstance(res, tuple):
                        new, real, secs = res
                    else:
                        new, real, secs = res.new_tokens, res.new_mask, res.seconds
                        if rep == 0 and res.stats and res.stats["drafted"]:
                            acceptance.append(res.stats["acceptance"])
                    totals[name][0] += int(real.sum())
                    totals[name][1] += secs
                    if rep == 0:
                        first[name].append(new * real)
            for name in decoders:
                speeds[name].append(totals[name][0] / totals[name][1])
        table = {}
        for name in decoders:
            same = rows = 0
            for got, ref in zip(first[name], first["full"]):
                w = min(got.shape[1], ref.shape[1])
                same += int((got[:, :w] == ref[:, :w]).all(1).sum())
                rows += got.shape[0]
            table[name] = {"tokens_per_s": statistics.median(speeds[name]),
                           "speedup": statistics.median(a / b for a, b in zip(speeds[name], speeds["full"])),
                           "identical": same, "rows": rows}
        table["self-speculative"].update(draft_layer=None if chosen.full else kb, gamma=0 if chosen.full else gb,
                                         decoder="full" if chosen.full else "speculative", choice=chosen.to_dict())
        if acceptance:
            table["self-speculative"]["acceptance"] = float(np.mean(acceptance))
        out["batches"][str(int(batch))] = table  # str keys: the dict is written as JSON
    return out


__all__ = ["DraftChoice", "StepCosts", "acceptance_by_layer", "choose_draft", "compare_decoders", "expected_speedup",
           "expected_tokens_per_round", "full_decoding_instead", "measure_acceptance", "measure_step_costs",
           "prompt_acceptance", "self_speculative_generate"]
