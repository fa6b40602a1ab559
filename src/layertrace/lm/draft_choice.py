"""Choosing the draft layer k and the draft length gamma of self-speculative decoding
(:mod:`layertrace.lm.speculative`): the acceptance rate per layer (from the analysis pass's
saturation statistic or from the prompts) and the expected speed-up of a simple cost model."""

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


@dataclass
class StepCosts:
    """The constants of :func:`expected_speedup`'s cost model, in units of one block on one new token
    of every row: defaults (measured once on the 6 x 128 demo LM) or :func:`measure_step_costs`'."""

    position_cost: float = 0.25
    readout_cost: float = 0.5
    embed_cost: float = 0.2
    source: str = "default"

    def to_dict(self) -> dict[str, Any]:
        return {"position_cost": self.position_cost, "readout_cost": self.readout_cost,
                "embed_cost": self.embed_cost, "source": self.source}


def measure_step_costs(adapter: Any, ids: Tensor, mask: Tensor, window: int = 4, repeats: int = 15) -> StepCosts:
    """Calibrate the cost model on this model, device and batch: time the pieces of a decoding step.

    After a prefill of the (B, P) prompts, medians of ``repeats`` timings of block 1 on one new token
    and on ``window`` new tokens, of one cached ``embed`` (one new token) and of the readout + argmax
    of (B, d) hidden states; the cache is cropped back after each block call. Returned relative to
    the one-token block: ``position_cost = (t_window / t_1 - 1) / (window - 1)`` (clipped to >= 0).
    """
    import statistics
    import time

    import torch

    def median_ms(fn) -> float:
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return statistics.median(times)

    with torch.no_grad():
        cache = adapter.new_cache()
        adapter.state_at({"input_ids": ids, "attention_mask": mask, "past_key_values": cache}, adapter.n_layers)
        first = cache.layers[0]

        def step_inputs(t: int) -> dict[str, Any]:
            return {"input_ids": ids[:, -1:].expand(-1, t), "attention_mask": torch.cat([mask, mask.new_ones(mask.shape[0], t)], 1),
                    "past_key_values": cache}

        def block_time(t: int) -> float:
            inputs = step_inputs(t)
            for _ in range(2):  # the first cached step of a shape teaches the adapter's decode path
                st = adapter.embed(inputs)
                adapter.block(1, st)
                first.crop(-t)
            st = adapter.embed(inputs)

            def run():
                adapter.block(1, st)
                first.crop(-t)
            return median_ms(run)

        one, wide = block_time(1), block_time(window)
        inputs = step_inputs(1)
        embed = median_ms(lambda: adapter.embed(inputs))
        hidden = adapter.embed(inputs).hidden[:, -1]
        readout = median_ms(lambda: adapter.readout(hidden).float().argmax(-1))
    return StepCosts(position_cost=max(0.0, (wide / one - 1.0) / (window - 1)), readout_cost=readout / one,
                     embed_cost=embed / one, source=f"measured at batch {ids.shape[0]}")


def expected_speedup(acceptance: float, draft_layer: int, gamma: int, n_layers: int,
                     position_cost: float = 0.25, readout_cost: float = 0.5, embed_cost: float = 0.2) -> float:
    """Expected tokens/s of self-speculative decoding over full decoding under a cost model.

    Cost unit: one block on one new token of every row. A block on m new tokens costs
    ``1 + position_cost * (m - 1)`` (small batches are dominated by fixed per-call costs on CPU);
    a readout (final norm + LM head) on one token costs ``readout_cost``; one ``adapter.embed`` call
    ``embed_cost`` (the discovery adapter's decode path, :class:`~layertrace.models.hf_auto.DecodeStep`:
    about 0.2 blocks on the 6 x 128 demo LM; a replayed embed costs about 2-3). Full decoding pays
    ``embed_cost + n_layers + readout_cost`` per token; a round pays ``(gamma + 2) * embed_cost`` (the
    verify window + one per draft step) + ``(gamma + 1) * k`` (single-token draft steps, the last
    feeding the last draft) + ``gamma * readout_cost`` (draft readouts) +
    ``(n_layers - k + readout_cost) * (1 + position_cost * gamma)`` (the verify pass over gamma + 1 positions).
    :func:`measure_step_costs` measures the three constants on a given model and batch.
    """
    k, g, L = int(draft_layer), int(gamma), int(n_layers)
    wide = 1.0 + position_cost * g
    round_cost = (g + 2) * embed_cost + (g + 1) * k + g * readout_cost + (L - k + readout_cost) * wide
    return expected_tokens_per_round(acceptance, g) * (embed_cost + L + readout_cost) / round_cost


def acceptance_by_layer(source: Any, n_layers: int | None = None) -> np.ndarray:
    """Per-layer draft acceptance rate, index l = layer l (0..L), from the analysis pass.

    Args:
        source: an :class:`~layertrace.analysis.result.AnalysisResult` of a causal LM, a folder or
            ``analysis.json`` it wrote (its ``saturation_cumulative``: the fraction of tokens whose
            prediction has settled on the final one at layer l), or a sequence of L + 1 rates.
        n_layers: L, to check the length.
    Returns:
        (L + 1,) float64 in [0, 1]; layers the pass did not trace are filled with the rate of the
        closest traced layer below (a lower bound, as agreement grows with depth).
    """
    from ..analysis.result import AnalysisResult

    if isinstance(source, (str, Path)):
        p = Path(source)
        source = AnalysisResult.from_json(p / "analysis.json" if p.is_dir() else p, load_samples=False)
    if isinstance(source, AnalysisResult):
        if source.saturation_cumulative is None:
            raise LayertraceError("the analysis result has no saturation_cumulative; re-run `layertrace analyze`")
        n = int(source.n_layers)
        rates = np.zeros(n + 1)
        cum = np.asarray(source.saturation_cumulative, dtype=np.float64)
        for l in range(n + 1):
            below = [i for i, t in enumerate(source.layers) if t <= l]
            rates[l] = cum[below[-1]] if below else 0.0
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
    """The (k, gamma) :func:`choose_draft` picked and why."""

    draft_layer: int
    gamma: int
    acceptance: float
    expected_speedup: float
    source: str
    costs: StepCosts | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"draft_layer": self.draft_layer, "gamma": self.gamma, "acceptance": self.acceptance,
                "expected_speedup": self.expected_speedup, "source": self.source,
                "costs": (self.costs or StepCosts()).to_dict()}


def choose_draft(acceptance: Sequence[float], n_layers: int, *, draft_layer: int | None = None,
                 gamma: int | None = None, max_gamma: int = MAX_GAMMA, costs: StepCosts | None = None,
                 source: str = "analysis") -> DraftChoice:
    """The draft layer k in 1..L-1 and draft length gamma in 1..max_gamma maximising
    :func:`expected_speedup` with the per-layer ``acceptance`` (L + 1 rates, index = layer) and the
    cost model's ``costs`` (default :class:`StepCosts`; :func:`measure_step_costs` calibrates them); a
    given ``draft_layer`` or ``gamma`` is kept and only the other one is chosen."""
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
    best = max(((expected_speedup(rates[k], k, g, n_layers, costs.position_cost, costs.readout_cost,
                                  costs.embed_cost), -k, -g) for k in ks for g in gs))
    s, k, g = best[0], -best[1], -best[2]
    return DraftChoice(k, g, float(rates[k]), float(s), source, costs)


def prompt_acceptance(adapter: Any, ids: Tensor, mask: Tensor) -> np.ndarray:
    """Per-layer acceptance estimated on the prompts themselves (when no analysis pass is given):
    the fraction of real prompt positions whose readout at layer l equals the final layer's argmax."""
    trace = adapter.trace({"input_ids": ids, "attention_mask": mask}, with_logits=True)
    preds = trace.logits.argmax(-1)  # (L+1, B, T)
    real = mask.bool()
    agree = (preds == preds[-1:]) & real
    return (agree.flatten(1).sum(1).double() / max(1, int(real.sum()))).cpu().numpy()
