"""Choosing the draft layer k and the draft length gamma of self-speculative decoding
(:mod:`layertrace.lm.speculative`): the acceptance rate per layer (measured on the prompts' greedy
continuation, from the analysis pass's agreement with the last layer or from the prompts' text) and the
expected speed-up of a cost model (its constants measured by
:func:`~layertrace.lm.speculative.measure_step_costs`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from torch import Tensor

from ..errors import LayertraceError

MAX_GAMMA = 8


# ----------------------------------------------------------------------------- choosing k and gamma
def expected_tokens_per_round(acceptance: float, gamma: int) -> float:
    """Expected tokens a round emits when each draft is accepted independently with ``acceptance``:
    1 + a + a^2 + ... + a^gamma (the accepted prefix plus the full model's own token)."""
    a = min(max(float(acceptance), 0.0), 1.0)
    return float(gamma + 1) if a >= 1.0 else (1.0 - a ** (gamma + 1)) / (1.0 - a)


def expected_rounds(acceptance: float | Sequence[float], gamma: int, new_tokens: int, batch: int = 1,
                    trials: int = 400, seed: int = 0, lengths: Sequence[int] | None = None) -> float:
    """Expected speculative rounds until every one of ``batch`` rows has its tokens.

    The first token comes from the prefill; each round a row emits its accepted drafts (each
    accepted independently with the row's acceptance, up to ``gamma``) plus the full model's own
    token. A batch runs until its slowest row is done, so at batch > 1 this is the mean over
    ``trials`` seeded simulations of the maximum over rows (more rounds than ``(new_tokens - 1) /
    expected_tokens_per_round``: the per-round cost is nearly the same for all rows).

    ``acceptance``: one rate for every row, or per-row rates (e.g. :func:`measure_acceptance` with
    ``per_row=True``): each simulated row draws its rate from them (with replacement). Prompts differ
    (one continuation loops and agrees at .9, another at .4), and a batch waits for its worst row:
    on the 12 x 96 demo LM, 96 greedy tokens at k = 1, gamma = 3 took 57-60 rounds per 8 rows, which
    per-row rates predict (57.5-60.1) and their mean does not (44.1).

    ``lengths``: tokens each of those rows generates before it stops (eos; at most ``new_tokens``),
    drawn together with its rate; ``None``: every row decodes ``new_tokens``
    (:func:`simulate_decoding` also gives full decoding's steps of the same draws).
    """
    return simulate_decoding(acceptance, gamma, new_tokens, batch, trials, seed, lengths)[0]


def simulate_decoding(acceptance: float | Sequence[float], gamma: int, new_tokens: int, batch: int = 1,
                      trials: int = 400, seed: int = 0,
                      lengths: Sequence[int] | None = None) -> tuple[float, float]:
    """(expected speculative rounds, expected full-decoding steps) after the prefill of a batch.

    The simulation of :func:`expected_rounds`; full decoding takes one step per token after the
    first, so a batch takes its longest row's ``length - 1`` steps (``new_tokens - 1`` when
    ``lengths`` is ``None``). Row ``i`` of the draws takes rate ``acceptance[i]`` and length
    ``lengths[i]`` together (per-row rates and lengths of the same prompts), so a batch of short,
    eos-stopped rows and one long row waits for that row's rounds, not for ``new_tokens``.
    """
    rng = np.random.default_rng(seed)
    rows = trials * max(1, int(batch))
    per_row = np.clip(np.asarray(acceptance, dtype=np.float64).reshape(-1), 0.0, 1.0)
    if lengths is None:
        need_of = np.full(per_row.size, max(int(new_tokens) - 1, 0))
    else:
        need_of = np.clip(np.asarray(lengths, dtype=np.int64).reshape(-1), 1, max(int(new_tokens), 1)) - 1
        if per_row.size == 1:
            per_row = np.broadcast_to(per_row, need_of.shape)
        if need_of.size != per_row.size:
            raise LayertraceError(f"{need_of.size} row lengths for {per_row.size} per-row acceptance rates: "
                                  "give one length per row (the same prompts)")
    if need_of.max(initial=0) == 0:
        return 0.0, 0.0
    pick = (np.zeros(rows, dtype=np.int64) if per_row.size == 1 else rng.integers(0, per_row.size, rows))
    a, need = per_row[pick], need_of[pick]
    done = np.zeros(rows)
    rounds = np.zeros(rows)
    active = need > 0
    while active.any():
        # accepted drafts: the first rejection among gamma Bernoulli(a) draws
        ok = rng.random((int(active.sum()), int(gamma))) < a[active][:, None]
        n_ok = np.cumprod(ok, axis=1).sum(axis=1)
        done[active] += n_ok + 1
        rounds[active] += 1
        active &= done < need
    rounds_per_batch = rounds.reshape(trials, -1).max(axis=1).mean()
    steps_per_batch = need.reshape(trials, -1).max(axis=1).mean()
    return float(rounds_per_batch), float(steps_per_batch)


@dataclass
class StepCosts:
    """The constants of :func:`expected_speedup`'s cost model, in units of one block on one new token
    of every row: defaults (measured once on the 6 x 128 demo LM) or :func:`~layertrace.lm.speculative.measure_step_costs`'.

    Attributes:
        position_cost: extra cost of each further new token in a block call (when ``block_costs`` is empty).
        readout_cost: final norm + LM head on one token.
        embed_cost: one cached ``adapter.embed`` (a decoding step's layer 0).
        block_costs: measured cost of a speculative round's block call on m = 1, 2, ... new tokens
            per row (entry 0: a draft step, relative to full decoding's step; above 1 where the
            round's mask has holes and full decoding's has none); past its end it grows by its last
            step. Empty: ``1 + position_cost * (m - 1)``.
        step_embed_cost: a draft step's layer 0 after the first two of a round (a slice of the
            window's embed, :meth:`~layertrace.models.decode_step.DecodeStep.window_steps`);
            default ``embed_cost``.
        loop_cost: full decoding's bookkeeping per token beyond its embed, blocks and readout.
        round_cost: a speculative round's bookkeeping beyond its window embed, blocks and readouts
            (token choice, acceptance, cache cropping, masks; its first two draft steps' embeds
            included); default ``2 * embed_cost``.
        prefill_cost: the prompts' prefill (both decoders pay it once per batch; 0 = left out). It
            changes the expected speed-up, not the choice: every (k, gamma) pays the same prefill.
    """

    position_cost: float = 0.25
    readout_cost: float = 0.5
    embed_cost: float = 0.2
    source: str = "default"
    block_costs: tuple[float, ...] = ()
    step_embed_cost: float | None = None
    loop_cost: float = 0.0
    round_cost: float | None = None
    prefill_cost: float = 0.0

    def __post_init__(self) -> None:
        # unmeasured: a draft step embeds like any step, a round's bookkeeping is its first two embeds
        if self.step_embed_cost is None:
            self.step_embed_cost = self.embed_cost
        if self.round_cost is None:
            self.round_cost = 2 * self.embed_cost

    def block(self, m: int) -> float:
        """Cost of one block call on ``m`` new tokens per row."""
        table = self.block_costs
        if not table:
            return 1.0 + self.position_cost * (m - 1)
        if m <= len(table):
            return float(table[m - 1])
        step = table[-1] - table[-2] if len(table) > 1 else self.position_cost
        return float(table[-1] + max(step, 0.0) * (m - len(table)))

    def to_dict(self) -> dict[str, Any]:
        return {"position_cost": self.position_cost, "readout_cost": self.readout_cost,
                "embed_cost": self.embed_cost, "source": self.source, "block_costs": list(self.block_costs),
                "step_embed_cost": self.step_embed_cost, "loop_cost": self.loop_cost, "round_cost": self.round_cost,
                "prefill_cost": self.prefill_cost}


def measure_acceptance(adapter: Any, ids: Tensor, mask: Tensor, new_tokens: int = 16,
                       per_row: bool = False, eos_token_id: int | list[int] | None = None,
                       with_lengths: bool = False) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Per-layer draft acceptance on the prompts' own greedy continuation (what drafting meets).

    Full greedy decoding continues the (B, P) prompts by ``new_tokens`` (a row stops after
    ``eos_token_id`` when given, as decoding does); one traced pass over prompt + continuation gives
    every layer's readout at the positions of the generated tokens 1..n-2 (each predicting the next
    generated one); the rate at layer l is the fraction of those positions where the layer-l argmax
    equals the last layer's. The analysis pass's saturation (test text, "settled at l") is lower:
    0.39 vs 0.50 at layer 1 of the 8 x 112 quick-preset LM.
    Returns (L + 1,) float64, entry L = 1; ``per_row``: (L + 1, B), each prompt's own rates (what
    :func:`expected_rounds` needs for a batch that waits for its worst row); ``with_lengths``: also
    (B,) int64, the tokens each row generated (``new_tokens`` for a row eos did not stop), the
    ``lengths`` of :func:`choose_draft`.
    """
    import torch

    from .generate import SamplingConfig, generate

    with torch.no_grad():
        res = generate(adapter, ids, mask, max_new_tokens=new_tokens, sampling=SamplingConfig("greedy"),
                       eos_token_id=eos_token_id)
        full_mask = torch.cat([mask.to(res.new_mask.device), res.new_mask], dim=1)
        preds = adapter.trace({"input_ids": res.sequences, "attention_mask": full_mask}, with_logits=True).logits.argmax(-1)
    p, n = ids.shape[1], res.new_tokens.shape[1]  # n < new_tokens when eos stopped every row early
    # position p + i holds generated token i and predicts token i + 1: both must be real
    real = (res.new_mask[:, :-1] * res.new_mask[:, 1:]).bool()
    window = preds[:, :, p:p + n - 1]  # (L + 1, B, n - 1)
    agree = (window == window[-1:]) & real
    rates = (agree.flatten(1).sum(1).double() / max(1, int(real.sum()))).cpu().numpy()
    rates[-1] = 1.0
    lengths = res.new_mask.sum(1).cpu().numpy().astype(np.int64)
    if per_row:
        counts = real.sum(1).cpu().numpy()  # (B,) positions per row; a row without any takes the pooled rate
        rows = agree.sum(2).double().cpu().numpy() / np.maximum(counts, 1)
        rows[:, counts == 0] = rates[:, None]
        rows[-1] = 1.0
        rates = rows
    return (rates, lengths) if with_lengths else rates


def expected_speedup(acceptance: float | Sequence[float], draft_layer: int, gamma: int, n_layers: int,
                     position_cost: float = 0.25, readout_cost: float = 0.5, embed_cost: float = 0.2,
                     costs: StepCosts | None = None, batch: int = 1, new_tokens: int | None = None,
                     draft_blocks: int | None = None, lengths: Sequence[int] | None = None) -> float:
    """Expected tokens/s of self-speculative decoding over full decoding under a cost model.

    Cost unit: one block on one new token of every row. A block on m new tokens costs
    ``block(m)`` (``1 + position_cost * (m - 1)``, or the measured ``costs.block_costs``); a readout
    (final norm + LM head) on one token ``readout_cost``; one ``adapter.embed`` call ``embed_cost``.
    Full decoding pays ``embed_cost + n_layers + readout_cost + loop_cost`` per token; a round pays
    one window embed, ``(gamma + 1) * k`` single-token draft-block calls at ``block(1)`` each (the
    last feeding the last draft), ``gamma`` draft readouts, ``(n_layers - k + readout_cost) * block(gamma + 1)`` (the
    verify pass over gamma + 1 positions), ``round_cost`` (its bookkeeping and first two draft-step
    embeds) and ``step_embed_cost`` per further draft step. ``costs`` (a :class:`StepCosts`) replaces
    the three keyword constants; :func:`~layertrace.lm.speculative.measure_step_costs` measures all of them on a model and batch.
    Without ``costs`` (or with unmeasured ones) every draft step embeds at ``embed_cost`` and the
    bookkeeping costs nothing else.

    Tokens per round: :func:`expected_tokens_per_round` (per-row ``acceptance``: their mean); with
    ``new_tokens`` given, the rounds :func:`expected_rounds` counts instead (one rate or per-row
    rates), ``batch`` rows waiting for the slowest (full decoding takes ``new_tokens - 1`` steps after
    the prefill at any batch size). ``lengths``: per-row tokens before eos, with per-row
    ``acceptance`` of the same prompts (:func:`simulate_decoding`): rows that stop early leave the
    batch, so both decoders run until the longest row is done. With ``new_tokens``, both decoders
    also pay ``costs.prefill_cost`` once. ``draft_blocks``: blocks a
    draft step runs when it is not blocks 1..k alone (a layer-skipping draft, blocks 1..k then
    block L: k + 1; the verify pass still runs blocks k+1..L).
    """
    if costs is None:
        costs = StepCosts(position_cost, readout_cost, embed_cost)
    k, g, L = int(draft_layer), int(gamma), int(n_layers)
    r = costs.readout_cost
    step = k if draft_blocks is None else int(draft_blocks)
    round_cost = (costs.embed_cost + (g + 1) * step * costs.block(1) + g * r + (L - k + r) * costs.block(g + 1) + costs.round_cost
                  + (g - 1) * costs.step_embed_cost)
    full = costs.embed_cost + L + r + costs.loop_cost
    if new_tokens is not None and new_tokens > 1:
        rounds, steps = simulate_decoding(acceptance, g, new_tokens, batch, lengths=lengths)
        prefill = costs.prefill_cost
        return (prefill + steps * full) / (prefill + rounds * round_cost) if rounds else 1.0
    per_round = np.mean([expected_tokens_per_round(a, g) for a in np.asarray(acceptance, dtype=np.float64).reshape(-1)])
    return float(per_round) * full / round_cost


def acceptance_by_layer(source: Any, n_layers: int | None = None) -> np.ndarray:
    """Per-layer draft acceptance rate, index l = layer l (0..L), from the analysis pass.

    Args:
        source: an :class:`~layertrace.analysis.result.AnalysisResult` of a causal LM, a folder or
            ``analysis.json`` it wrote (its ``final_agreement``: the fraction of test tokens whose
            layer-l prediction equals the last layer's, what a greedy draft from layer l meets; an
            ``analysis.json`` written before that field existed gives its ``saturation_cumulative``,
            the fraction settled at layer l for good, a lower bound), or a sequence of L + 1 rates
            (or an (L + 1, R) array of R prompts' own rates, :func:`measure_acceptance` ``per_row``).
        n_layers: L, to check the length.
    Returns:
        (L + 1,) (or (L + 1, R)) float64 in [0, 1]; layers the pass did not trace are filled with the rate of the
        closest traced layer below (agreement grows with depth, nearly always).
    """
    from ..analysis.result import AnalysisResult

    if isinstance(source, (str, Path)):
        p = Path(source)
        source = AnalysisResult.from_json(p / "analysis.json" if p.is_dir() else p, load_samples=False)
    if isinstance(source, AnalysisResult):
        agreement = source.final_agreement
        if agreement is None or not np.all(np.isfinite(agreement)):
            agreement = source.saturation_cumulative
        if agreement is None:
            raise LayertraceError("the analysis result has no saturation_cumulative; re-run `layertrace analyze`")
        n = int(source.n_layers)
        rates = np.zeros(n + 1)
        traced = np.asarray(agreement, dtype=np.float64)
        for l in range(n + 1):
            below = [i for i, t in enumerate(source.layers) if t <= l]
            rates[l] = traced[below[-1]] if below else 0.0
        rates[n] = 1.0
    else:
        rates = np.asarray(list(source), dtype=np.float64)
    if n_layers is not None and rates.shape[0] != n_layers + 1:
        raise LayertraceError(f"acceptance rates have {rates.shape[0]} entries; the model needs L + 1 = {n_layers + 1}")
    if not np.all(np.isfinite(rates)) or rates.min() < 0 or rates.max() > 1:
        raise LayertraceError("acceptance rates must be finite fractions in [0, 1]")
    return rates


@dataclass
class DraftChoice:
    """The (k, gamma) :func:`choose_draft` picked and why.

    ``full``: both were chosen (none given) and the best draft's expected speed-up is below 1, so the
    decoder runs full decoding instead (the same greedy output, the same sampling distribution); a
    given ``draft_layer`` or ``gamma`` always speculates.
    """

    draft_layer: int
    gamma: int
    acceptance: float
    expected_speedup: float
    source: str
    costs: StepCosts | None = None
    full: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"draft_layer": self.draft_layer, "gamma": self.gamma, "acceptance": self.acceptance,
                "expected_speedup": self.expected_speedup, "source": self.source,
                "costs": (self.costs or StepCosts()).to_dict(), "full": self.full}


def choose_draft(acceptance: Sequence[float], n_layers: int, *, draft_layer: int | None = None,
                 gamma: int | None = None, max_gamma: int = MAX_GAMMA, costs: StepCosts | None = None,
                 source: str = "analysis", batch: int = 1, new_tokens: int | None = None,
                 lengths: Sequence[int] | None = None) -> DraftChoice:
    """The draft layer k in 1..L-1 and draft length gamma in 1..max_gamma maximising
    :func:`expected_speedup` with the per-layer ``acceptance`` (L + 1 rates, index = layer, or
    (L + 1, R) per-row rates of R prompts: ``DraftChoice.acceptance`` is then their mean) and the
    cost model's ``costs`` (default :class:`StepCosts`; :func:`~layertrace.lm.speculative.measure_step_costs` calibrates them) at
    ``batch`` rows decoding ``new_tokens`` (``None``: per-round tokens only); a given ``draft_layer``
    or ``gamma`` is kept and only the other one is chosen; ``lengths``: the R prompts' tokens before
    eos (:func:`measure_acceptance` ``eos_token_id``), for rows that stop early. With neither given, a
    best expected speed-up below 1 sets ``full`` (decode without drafting)."""
    costs = costs or StepCosts()
    rates = np.asarray(acceptance, dtype=np.float64)
    if n_layers < 2:
        raise LayertraceError(f"self-speculative decoding needs at least 2 blocks; the model has {n_layers}")
    if draft_layer is not None and not 1 <= int(draft_layer) < n_layers:
        raise LayertraceError(f"draft_layer={draft_layer} must be in 1..{n_layers - 1} (the first k blocks draft)")
    if gamma is not None and not 1 <= int(gamma) <= 64:
        raise LayertraceError(f"gamma={gamma} must be in 1..64 (drafted tokens per round)")
    ks = [int(draft_layer)] if draft_layer is not None else list(range(1, n_layers))
    gs = [int(gamma)] if gamma is not None else list(range(1, max_gamma + 1))
    best = max(((expected_speedup(rates[k], k, g, n_layers, costs=costs, batch=batch, new_tokens=new_tokens,
                                  lengths=lengths), -k, -g)
                for k in ks for g in gs))
    s, k, g = best[0], -best[1], -best[2]
    return DraftChoice(k, g, float(np.mean(rates[k])), float(s), source, costs,
                       full=draft_layer is None and gamma is None and s < 1.0)


def prompt_acceptance(adapter: Any, ids: Tensor, mask: Tensor) -> np.ndarray:
    """Per-layer acceptance estimated on the prompts themselves (when no analysis pass is given):
    the fraction of real prompt positions whose readout at layer l equals the final layer's argmax."""
    trace = adapter.trace({"input_ids": ids, "attention_mask": mask}, with_logits=True)
    preds = trace.logits.argmax(-1)  # (L+1, B, T)
    real = mask.bool()
    agree = (preds == preds[-1:]) & real
    return (agree.flatten(1).sum(1).double() / max(1, int(real.sum()))).cpu().numpy()
