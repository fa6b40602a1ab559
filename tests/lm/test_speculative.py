"""Self-speculative decoding: lossless against full decoding (greedy token for token, sampling in
distribution), KV reuse, the choice of k and gamma. Tiny GPT-2 / Llama built from config."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from tiny_models import padded_batch, tiny_gpt2, tiny_llama  # noqa: E402

from layertrace.errors import LayertraceError  # noqa: E402
from layertrace.lm.generate import SamplingConfig, generate  # noqa: E402
from layertrace.lm.speculative import (  # noqa: E402
    acceptance_by_layer, choose_draft, expected_speedup, expected_tokens_per_round, prompt_acceptance,
    self_speculative_generate,
)
from layertrace.models import adapt  # noqa: E402

GREEDY = SamplingConfig("greedy")
# init_std 0.2 makes the tiny GPT-2's shallow readouts disagree often with its last layer (many
# rejections); the default Llama agrees more (many acceptances): both paths get exercised
FAMILIES = {"gpt2": lambda: tiny_gpt2(n_layers=4, init_std=0.2), "llama": lambda: tiny_llama(n_layers=4)}


@pytest.fixture(params=sorted(FAMILIES), scope="module")
def lm(request):
    return FAMILIES[request.param]()


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("k,gamma", [(1, 1), (1, 4), (2, 3), (3, 6)])
def test_greedy_batch4_padded_equals_full_greedy(lm, side, k, gamma):
    batch = padded_batch(lm.config.vocab_size, side)
    full = generate(lm, batch["input_ids"], batch["attention_mask"], max_new_tokens=16, sampling=GREEDY)
    spec = self_speculative_generate(lm, batch["input_ids"], batch["attention_mask"], draft_layer=k, gamma=gamma,
                                     max_new_tokens=16, sampling=GREEDY)
    assert torch.equal(spec.new_tokens, full.new_tokens)
    assert torch.equal(spec.sequences, full.sequences)
    assert spec.stats["draft_layer"] == k and spec.stats["gamma"] == gamma
    assert 0.0 <= spec.stats["acceptance"] <= 1.0


@pytest.mark.parametrize("k,gamma", [(1, 2), (2, 5)])
def test_greedy_batch1_equals_full_greedy(lm, k, gamma):
    batch = padded_batch(lm.config.vocab_size, "left")
    for row in range(4):
        real = batch["attention_mask"][row].bool()
        prompt = batch["input_ids"][row][real][None]
        full = generate(lm, prompt, max_new_tokens=20, sampling=GREEDY)
        spec = self_speculative_generate(lm, prompt, draft_layer=k, gamma=gamma, max_new_tokens=20, sampling=GREEDY)
        assert torch.equal(spec.new_tokens, full.new_tokens), row


@pytest.mark.parametrize("quantile", [0.7, 0.95])
def test_confidence_stops_drafting_early_and_stays_lossless(lm, quantile):
    """Drafting stops when no row's draft is confident: fewer drafts, the same greedy tokens. The
    threshold is a quantile of the draft layer's max probability on the prompts (so both happen)."""
    batch = padded_batch(lm.config.vocab_size, "left")
    with torch.no_grad():
        logits = adapt(lm).trace(batch).logits[2]  # (B, T, V) at the draft layer
    top = torch.softmax(logits.float(), -1).max(-1).values[batch["attention_mask"].bool()]
    confidence = float(torch.quantile(top, quantile))
    full = generate(lm, batch["input_ids"], batch["attention_mask"], max_new_tokens=16, sampling=GREEDY)
    plain = self_speculative_generate(lm, batch["input_ids"], batch["attention_mask"], draft_layer=2, gamma=4,
                                      max_new_tokens=16, sampling=GREEDY)
    spec = self_speculative_generate(lm, batch["input_ids"], batch["attention_mask"], draft_layer=2, gamma=4,
                                     max_new_tokens=16, sampling=GREEDY, confidence=confidence)
    assert torch.equal(spec.new_tokens, full.new_tokens)
    per_round = spec.stats["drafted"] / spec.stats["rounds"]
    assert per_round < plain.stats["drafted"] / plain.stats["rounds"]  # some rounds stopped early


def test_greedy_with_eos_stops_rows_like_full_decoding(lm):
    batch = padded_batch(lm.config.vocab_size, "left")
    free = generate(lm, batch["input_ids"], batch["attention_mask"], max_new_tokens=12, sampling=GREEDY)
    eos = int(free.new_tokens[0, 3])  # row 0 stops after its 4th token, others maybe later or never
    full = generate(lm, batch["input_ids"], batch["attention_mask"], max_new_tokens=12, sampling=GREEDY,
                    eos_token_id=eos, pad_token_id=5)
    spec = self_speculative_generate(lm, batch["input_ids"], batch["attention_mask"], draft_layer=2, gamma=3,
                                     max_new_tokens=12, sampling=GREEDY, eos_token_id=eos, pad_token_id=5)
    width = full.new_tokens.shape[1]  # full decoding stops when every row is done
    assert torch.equal(spec.new_tokens[:, :width], full.new_tokens)
    assert torch.equal(spec.new_mask[:, :width], full.new_mask)
    assert bool((spec.new_mask[:, width:] == 0).all()) and bool((spec.new_tokens[:, width:] == 5).all())


@pytest.mark.parametrize("k,gamma", [(1, 3), (2, 2)])
def test_greedy_with_eos_at_batch_1_stops_like_full_decoding(lm, k, gamma):
    """Batch 1 takes its own path (plain slices, no holes): eos mid-round stops the row there."""
    batch = padded_batch(lm.config.vocab_size, "left")
    for row in range(4):
        prompt = batch["input_ids"][row][batch["attention_mask"][row].bool()][None]
        free = generate(lm, prompt, max_new_tokens=14, sampling=GREEDY)
        eos = int(free.new_tokens[0, 5])
        full = generate(lm, prompt, max_new_tokens=14, sampling=GREEDY, eos_token_id=eos, pad_token_id=7)
        spec = self_speculative_generate(lm, prompt, draft_layer=k, gamma=gamma, max_new_tokens=14, sampling=GREEDY,
                                         eos_token_id=eos, pad_token_id=7)
        width = full.new_tokens.shape[1]
        assert torch.equal(spec.new_tokens[:, :width], full.new_tokens), row
        assert torch.equal(spec.new_mask[:, :width], full.new_mask)
        assert int(spec.new_mask.sum()) == int(full.new_mask.sum())
        unstopped = self_speculative_generate(lm, prompt, draft_layer=k, gamma=gamma, max_new_tokens=14,
                                              sampling=GREEDY)
        assert spec.stats["rounds"] < unstopped.stats["rounds"]  # decoding stopped at the eos


def test_verify_pass_reuses_the_draft_blocks(lm):
    """Blocks 1..k run once per draft step (gamma + 1 per round), blocks k+1..L once per round."""
    adapter = adapt(lm)
    calls = {l: 0 for l in range(1, adapter.n_layers + 1)}
    original = adapter.block

    def counting(layer, state):
        calls[layer] += 1
        return original(layer, state)

    adapter.block = counting
    try:
        ids = padded_batch(lm.config.vocab_size, "left")["input_ids"][:1]
        res = self_speculative_generate(adapter, ids, draft_layer=2, gamma=3, max_new_tokens=10, sampling=GREEDY)
    finally:
        del adapter.block
    rounds = res.stats["rounds"]
    deep = {calls[l] for l in range(3, adapter.n_layers + 1)}
    assert deep == {1 + rounds}  # prefill + one verify pass per round
    shallow = {calls[l] for l in (1, 2)}
    assert len(shallow) == 1
    assert 1 + rounds < shallow.pop() <= 1 + 4 * rounds  # up to gamma + 1 single-token steps per round


def _chi2_pvalue(counts: np.ndarray, probs: np.ndarray) -> float:
    """Pearson chi-square p-value of ``counts`` against ``probs``, cells with expectation < 5 pooled."""
    from scipy.stats import chisquare

    n = counts.sum()
    expected = probs * n
    big = expected >= 5
    obs = np.append(counts[big], counts[~big].sum())
    exp = np.append(expected[big], expected[~big].sum())
    if exp[-1] < 5:  # pool the remainder into the smallest big cell instead
        obs, exp = obs[:-1], exp[:-1]
        obs[np.argmin(exp)] += counts[~big].sum()
        exp[np.argmin(exp)] += expected[~big].sum()
    return float(chisquare(obs, exp * obs.sum() / exp.sum()).pvalue)


def _exact_joint(adapter, prompt: torch.Tensor, cfg: SamplingConfig, n_tokens: int, layer: int | None = None):
    """Exact distribution of the first ``n_tokens`` sampled tokens (dict: tuple -> prob) under the
    filtered readout of ``layer`` (default the full model), by enumerating the filtered supports."""
    from layertrace.lm.generate import filter_logits

    paths = {(): 1.0}
    for _ in range(n_tokens):
        seqs = list(paths)
        ids = torch.stack([torch.cat([prompt, torch.tensor(s, dtype=torch.long)]) for s in seqs])
        logits = adapter({"input_ids": ids}, upto=layer)[:, -1].float()
        probs = torch.softmax(filter_logits(logits, cfg), -1).double()
        nxt = {}
        for s, row in zip(seqs, probs):
            for t in row.nonzero().squeeze(1).tolist():
                nxt[s + (t,)] = paths[s] * float(row[t])
        paths = nxt
    return paths


def test_sampled_tokens_follow_the_full_models_distribution():
    """Chi-square on the joint counts of the first 3 tokens (t1 from the prefill, t2 and t3 from the
    first speculative round) of 4000 rows, against the full model's exact filtered distribution; the
    same counts reject the draft layer's own distribution (the test can fail)."""
    lm = tiny_gpt2(n_layers=3, init_std=0.2, seed=2)
    adapter = adapt(lm)
    cfg = SamplingConfig("sample", top_k=4, top_p=1.0, temperature=1.3, seed=11)
    prompt = torch.tensor([5, 17, 42, 8], dtype=torch.long)
    n_rows = 4000
    with torch.no_grad():
        res = self_speculative_generate(adapter, prompt[None].expand(n_rows, -1), draft_layer=1, gamma=2,
                                        max_new_tokens=3, sampling=cfg)
    assert 0.2 < res.stats["acceptance"] < 0.9  # both acceptance and rejection happen
    with torch.no_grad():
        full = _exact_joint(adapter, prompt, cfg, 3)
        draft = _exact_joint(adapter, prompt, cfg, 3, layer=1)
    cells = sorted(set(full) | set(draft))
    index = {c: i for i, c in enumerate(cells)}
    counts = np.zeros(len(cells))
    for row in res.new_tokens.tolist():
        assert tuple(row) in full  # never a token outside the full model's filtered support
        counts[index[tuple(row)]] += 1
    p_full = np.array([full.get(c, 0.0) for c in cells])
    p_draft = np.array([draft.get(c, 0.0) for c in cells])
    assert abs(p_full.sum() - 1) < 1e-6
    assert _chi2_pvalue(counts, p_full) > 1e-3
    mixed = np.where(p_draft > 0, p_draft, 0)  # cells of the draft's support only
    assert _chi2_pvalue(counts[mixed > 0], mixed[mixed > 0] / mixed.sum()) < 1e-6


def test_choice_of_k_and_gamma_follows_acceptance():
    L = 6
    sure = np.ones(L + 1)
    c = choose_draft(sure, L)
    assert c.draft_layer == 1 and c.gamma == 8  # perfect shallow drafts: draft cheap and long
    never = np.zeros(L + 1)
    never[L] = 1.0
    c = choose_draft(never, L)
    assert c.gamma == 1 and c.expected_speedup < 1.0
    rising = np.linspace(0.0, 1.0, L + 1)
    c = choose_draft(rising, L, gamma=3)
    assert c.gamma == 3 and 1 <= c.draft_layer < L
    assert c.expected_speedup == max(expected_speedup(rising[k], k, 3, L) for k in range(1, L))
    assert choose_draft(rising, L, draft_layer=2).draft_layer == 2
    assert expected_tokens_per_round(1.0, 4) == 5.0 and expected_tokens_per_round(0.0, 4) == 1.0
    assert expected_tokens_per_round(0.5, 2) == pytest.approx(1.75)
    with pytest.raises(LayertraceError, match="draft_layer"):
        choose_draft(rising, L, draft_layer=L)
    with pytest.raises(LayertraceError, match="gamma"):
        choose_draft(rising, L, gamma=0)


def test_cost_model_constants_steer_the_choice():
    """Costlier verify positions make shorter drafts; a costlier readout and embed too; the defaults
    are StepCosts()."""
    from layertrace.lm.speculative import StepCosts

    L = 6
    rates = np.array([0.0, 0.7, 0.8, 0.85, 0.9, 0.95, 1.0])
    cheap = choose_draft(rates, L, costs=StepCosts(position_cost=0.0, readout_cost=0.0, embed_cost=0.0))
    dear = choose_draft(rates, L, costs=StepCosts(position_cost=1.0, readout_cost=2.0, embed_cost=1.0))
    assert cheap.gamma > dear.gamma and cheap.expected_speedup > dear.expected_speedup
    assert choose_draft(rates, L).to_dict() == choose_draft(rates, L, costs=StepCosts()).to_dict()
    assert cheap.to_dict()["costs"]["position_cost"] == 0.0


def test_block_cost_table_and_bookkeeping_steer_the_model():
    """A measured per-token-count block cost replaces the linear position cost (extrapolated by its
    last step); dearer verify windows or round bookkeeping lower the expected speed-up."""
    from layertrace.lm.speculative import StepCosts

    table = StepCosts(block_costs=(1.0, 1.5, 2.5))
    assert [table.block(m) for m in (1, 2, 3, 4, 5)] == [1.0, 1.5, 2.5, 3.5, 4.5]
    assert StepCosts(position_cost=0.5).block(3) == 2.0
    assert StepCosts().step_embed_cost == StepCosts().embed_cost and StepCosts().round_cost == 2 * StepCosts().embed_cost
    L, rates = 8, np.linspace(0.5, 1.0, 9)
    flat = StepCosts(block_costs=(1.0, 1.0, 1.0), readout_cost=0.1, embed_cost=0.1, round_cost=0.0)
    steep = StepCosts(block_costs=(1.0, 2.0, 3.0), readout_cost=0.1, embed_cost=0.1, round_cost=0.0)
    assert choose_draft(rates, L, costs=flat).gamma > choose_draft(rates, L, costs=steep).gamma
    busy = StepCosts(block_costs=(1.0, 1.0, 1.0), readout_cost=0.1, embed_cost=0.1, round_cost=3.0)
    assert expected_speedup(0.8, 2, 2, L, costs=busy) < expected_speedup(0.8, 2, 2, L, costs=flat)
    # a layer-skipping draft step (blocks 1..k, then block L) runs k + 1 blocks: dearer than blocks 1..k
    assert expected_speedup(0.8, 2, 2, L, costs=flat, draft_blocks=2) == expected_speedup(0.8, 2, 2, L, costs=flat)
    assert expected_speedup(0.8, 2, 2, L, costs=flat, draft_blocks=3) < expected_speedup(0.8, 2, 2, L, costs=flat)
    # the keyword constants are the unmeasured StepCosts
    assert expected_speedup(0.7, 2, 3, L, 0.3, 0.4, 0.2) == expected_speedup(0.7, 2, 3, L, costs=StepCosts(0.3, 0.4, 0.2))


def test_expected_rounds_wait_for_the_slowest_row():
    """Certain drafts: ceil((n - 1) / (gamma + 1)) rounds; none: n - 1; in between about
    (n - 1) / tokens-per-round at batch 1, more at batch 8 (the slowest of 8 rows)."""
    from layertrace.lm.draft_choice import expected_rounds

    assert expected_rounds(1.0, 3, 32, batch=8) == 8.0  # 31 tokens, 4 per round
    assert expected_rounds(0.0, 3, 32, batch=8) == 31.0
    one = expected_rounds(0.6, 2, 32, batch=1)
    assert one == pytest.approx(31 / expected_tokens_per_round(0.6, 2), rel=0.1)
    assert expected_rounds(0.6, 2, 32, batch=8) > one * 1.1
    assert expected_speedup(0.6, 2, 2, 8, batch=8, new_tokens=32) < expected_speedup(0.6, 2, 2, 8, batch=1, new_tokens=32)


def test_measured_acceptance_is_the_agreement_on_the_greedy_continuation(lm):
    """measure_acceptance against a naive loop: every layer's readout at each generated position
    (prompt + the tokens so far, run alone) against the last layer's argmax."""
    from layertrace.lm.speculative import measure_acceptance

    adapter = adapt(lm)
    ids = padded_batch(lm.config.vocab_size, "left")["input_ids"][[0, 2]]
    n = 6
    rates = measure_acceptance(adapter, ids, torch.ones_like(ids), new_tokens=n)
    seq = generate(adapter, ids, max_new_tokens=n, sampling=GREEDY).sequences
    hits = np.zeros(adapter.n_layers + 1)
    p, count = ids.shape[1], 0
    with torch.no_grad():
        for row in range(seq.shape[0]):
            for t in range(p, p + n - 1):  # position t holds generated token t - p, predicts the next
                prefix = {"input_ids": seq[row:row + 1, :t + 1]}
                last = adapter(prefix, upto=adapter.n_layers)[0, -1].argmax()
                for layer in range(adapter.n_layers + 1):
                    hits[layer] += int(adapter(prefix, upto=layer)[0, -1].argmax() == last)
                count += 1
    assert np.allclose(rates, hits / count)
    assert rates[-1] == 1.0
    rows = measure_acceptance(adapter, ids, torch.ones_like(ids), new_tokens=n, per_row=True)
    assert rows.shape == (adapter.n_layers + 1, 2) and np.allclose(rows.mean(1), rates)  # equal counts per row
    assert bool((rows[-1] == 1.0).all())


def test_rows_stopped_by_eos_leave_the_batch_in_the_simulation():
    """simulate_decoding with per-row lengths: certain drafts of gamma 3 need ceil((n - 1) / 4) rounds
    and full decoding n - 1 steps; a batch runs until its longest row is done; lengths of
    new_tokens everywhere are the plain simulation (same draws); lengths belong to per-row rates."""
    from layertrace.lm.draft_choice import expected_rounds, simulate_decoding

    assert simulate_decoding(1.0, 3, 32, lengths=[9]) == (2.0, 8.0)
    assert simulate_decoding(0.0, 3, 32, lengths=[9]) == (8.0, 8.0)
    assert simulate_decoding(1.0, 3, 32, lengths=[40]) == (8.0, 31.0)  # a length past new_tokens is new_tokens
    # batch 2 drawn from a long row (32 tokens) and a short one (2): both short with probability 1/4
    rounds, steps = simulate_decoding([1.0, 1.0], 3, 32, batch=2, lengths=[32, 2], trials=8000)
    assert rounds == pytest.approx(0.75 * 8 + 0.25 * 1, rel=0.03) and steps == pytest.approx(0.75 * 31 + 0.25, rel=0.03)
    rates = [0.9, 0.4, 0.6]
    assert simulate_decoding(rates, 2, 32, batch=4, lengths=[32, 32, 32]) == simulate_decoding(rates, 2, 32, batch=4)
    assert expected_rounds(rates, 2, 32, batch=4) == simulate_decoding(rates, 2, 32, batch=4)[0]
    with pytest.raises(LayertraceError, match="lengths"):
        simulate_decoding(rates, 2, 32, lengths=[5, 6])


def test_expected_speedup_with_lengths_and_prefill():
    """With lengths, both decoders stop at the longest row: certain drafts of gamma 3 on a 9-token
    row take 2 rounds for full decoding's 8 steps; a prefill paid by both pulls the ratio toward 1
    and never changes which draft is best."""
    from layertrace.lm.draft_choice import StepCosts

    L = 6
    costs = StepCosts(position_cost=0.1, readout_cost=0.3, embed_cost=0.2)
    full = costs.embed_cost + L + costs.readout_cost + costs.loop_cost
    round_cost = (costs.embed_cost + 4 * 2 * costs.block(1) + 3 * costs.readout_cost
                  + (L - 2 + costs.readout_cost) * costs.block(4) + costs.round_cost + 2 * costs.step_embed_cost)
    assert expected_speedup(1.0, 2, 3, L, costs=costs, new_tokens=32, lengths=[9]) == pytest.approx(8 * full / (2 * round_cost))
    with_prefill = dataclasses.replace(costs, prefill_cost=20.0)
    assert expected_speedup(1.0, 2, 3, L, costs=with_prefill, new_tokens=32, lengths=[9]) == pytest.approx(
        (20 + 8 * full) / (20 + 2 * round_cost))
    rates = np.array([[0.0, 0.0], [0.9, 0.3], [0.95, 0.5], [0.97, 0.6], [0.98, 0.8], [0.99, 0.9], [1.0, 1.0]])
    for lengths in (None, [32, 4]):
        plain = choose_draft(rates, L, costs=costs, batch=4, new_tokens=32, lengths=lengths)
        paid = choose_draft(rates, L, costs=with_prefill, batch=4, new_tokens=32, lengths=lengths)
        assert (plain.draft_layer, plain.gamma) == (paid.draft_layer, paid.gamma)
        # between 1 and the steps' ratio (below 1 without lengths: the batch waits for the .3 row)
        assert (paid.expected_speedup - 1) * (plain.expected_speedup - 1) > 0
        assert abs(paid.expected_speedup - 1) < abs(plain.expected_speedup - 1)
    # the long row agrees at .9-.99 and the short one at .3-.9: with the short row stopping at 4
    # tokens, the batch mostly waits for the long, confident row, and drafts longer
    waits = choose_draft(rates, L, costs=costs, batch=4, new_tokens=32)
    stops = choose_draft(rates, L, costs=costs, batch=4, new_tokens=32, lengths=[32, 4])
    assert stops.expected_speedup > 1.0 > waits.expected_speedup and stops.gamma >= waits.gamma


def test_measured_acceptance_stops_rows_at_eos(lm):
    """With eos, measure_acceptance counts only the positions before each row's eos (a naive loop
    over the truncated continuation) and returns each row's length, as greedy decoding makes it."""
    from layertrace.lm.speculative import measure_acceptance

    adapter = adapt(lm)
    ids = padded_batch(lm.config.vocab_size, "left")["input_ids"][[0, 2]]
    n = 8
    free = generate(adapter, ids, max_new_tokens=n, sampling=GREEDY).new_tokens
    eos = int(free[0, 3])  # row 0 emits it as its 4th token (or earlier): it stops there
    res = generate(adapter, ids, max_new_tokens=n, sampling=GREEDY, eos_token_id=eos)
    rates, lengths = measure_acceptance(adapter, ids, torch.ones_like(ids), new_tokens=n, per_row=True,
                                        eos_token_id=eos, with_lengths=True)
    assert lengths.tolist() == res.new_mask.sum(1).tolist() and lengths[0] <= 4
    p = ids.shape[1]
    for row in range(2):
        seq = torch.cat([ids[row], res.new_tokens[row, :lengths[row]]])[None]
        hits, count = np.zeros(adapter.n_layers + 1), 0
        with torch.no_grad():
            for t in range(p, p + int(lengths[row]) - 1):  # generated token t - p predicts the next real one
                prefix = {"input_ids": seq[:, :t + 1]}
                last = adapter(prefix, upto=adapter.n_layers)[0, -1].argmax()
                for layer in range(adapter.n_layers + 1):
                    hits[layer] += int(adapter(prefix, upto=layer)[0, -1].argmax() == last)
                count += 1
        if count:
            assert np.allclose(rates[:, row], hits / count), row
    plain = measure_acceptance(adapter, ids, torch.ones_like(ids), new_tokens=n)
    assert plain.shape == (adapter.n_layers + 1,)


def test_the_measured_choice_knows_where_eos_stops_rows(monkeypatch):
    """analysis="measure" with eos: choose_draft gets each prompt's length before eos (a row eos did
    not stop within the measured tokens: max_new_tokens); compare_decoders measures all prompts'
    lengths once; without eos no lengths; the output stays full greedy decoding's."""
    import layertrace.lm.speculative as spec_module

    adapter = adapt(tiny_llama(n_layers=4))
    ids = padded_batch(adapter.num_outputs, "left")["input_ids"][[0, 2]]
    free = generate(adapter, ids, max_new_tokens=20, sampling=GREEDY).new_tokens
    eos = int(free[0, 2])  # row 0 stops at its 3rd token (or earlier)
    seen = []
    real_choose = spec_module.choose_draft
    monkeypatch.setattr(spec_module, "choose_draft", lambda *a, **kw: seen.append(kw.get("lengths")) or real_choose(*a, **kw))
    res = self_speculative_generate(adapter, ids, analysis="measure", max_new_tokens=20, sampling=GREEDY, eos_token_id=eos)
    full = generate(adapter, ids, max_new_tokens=20, sampling=GREEDY, eos_token_id=eos)
    assert torch.equal(res.new_tokens[:, :full.new_tokens.shape[1]] * full.new_mask, full.new_tokens * full.new_mask)
    stopped = generate(adapter, ids, max_new_tokens=16, sampling=GREEDY, eos_token_id=eos).new_mask.sum(1)
    expect = [int(n) if n < 16 else 20 for n in stopped]
    assert list(seen[-1]) == expect and expect[0] <= 3
    self_speculative_generate(adapter, ids, analysis="measure", max_new_tokens=20, sampling=GREEDY)
    assert seen[-1] is None
    prompts = ids[:, -5:]
    spec_module.compare_decoders(adapter, prompts, analysis="measure", batch_sizes=(2,), repeats=1, max_new_tokens=10,
                                 hf=False, eos_token_id=eos, costs=None)
    exact = generate(adapter, prompts, max_new_tokens=10, sampling=GREEDY, eos_token_id=eos).new_mask.sum(1)
    assert list(seen[-1]) == exact.tolist()


def test_rows_that_differ_cost_more_rounds_than_their_mean():
    """A batch waits for its worst row: per-row acceptance [0.9, 0.3] takes more rounds at batch 2
    than every row at their mean 0.6; one repeated rate is the scalar model (up to its draws); at
    batch 1 a row is one of them, so the rounds average theirs."""
    from layertrace.lm.draft_choice import expected_rounds

    mixed = expected_rounds([0.9, 0.3], 2, 32, batch=2)
    assert mixed > expected_rounds(0.6, 2, 32, batch=2) * 1.05
    assert expected_rounds([0.6, 0.6, 0.6], 2, 32, batch=4) == pytest.approx(expected_rounds(0.6, 2, 32, batch=4), rel=0.03)
    alone = (expected_rounds(0.9, 2, 32) + expected_rounds(0.3, 2, 32)) / 2
    assert expected_rounds([0.9, 0.3], 2, 32, batch=1, trials=4000) == pytest.approx(alone, rel=0.03)
    rates = np.array([[0.0, 0.0], [0.9, 0.3], [0.95, 0.5], [1.0, 1.0]])  # (L + 1, R) for L = 3
    choice = choose_draft(rates, 3, batch=8, new_tokens=32)
    assert choice.acceptance == pytest.approx(rates[choice.draft_layer].mean())
    assert choice.expected_speedup == pytest.approx(
        expected_speedup(rates[choice.draft_layer], choice.draft_layer, choice.gamma, 3, batch=8, new_tokens=32))


def test_draft_agreement_of_the_benchmark_matches_measured_acceptance():
    """benchmarks/bench_speculative.py --agreement: the plain draft's agreement equals
    measure_acceptance (another code path); blocks 1..L-1 then block L is the full model (1.0)."""
    from layertrace.lm.speculative import measure_acceptance

    bench = _bench_speculative()
    adapter = adapt(tiny_llama(n_layers=4))
    ids = padded_batch(adapter.num_outputs, "left")["input_ids"][[0, 2]]
    res = bench.draft_agreement(adapter, ids, 6, [(1,), (2,), (3, 4), (1, 4)])
    rates = measure_acceptance(adapter, ids, torch.ones_like(ids), new_tokens=6)
    assert res["positions"] == 2 * 5
    assert res["drafts"]["1"] == pytest.approx(rates[1]) and res["drafts"]["2"] == pytest.approx(rates[2])
    assert res["drafts"]["3+4"] == 1.0 and 0.0 <= res["drafts"]["1+4"] <= 1.0
    assert all(0.0 <= v <= 1.0 for v in res["top2"].values())


def test_measured_step_costs_and_lossless_choice_with_them(lm):
    """measure_step_costs leaves no state behind: decoding with the measured choice (a timing-dependent
    k, gamma) is still token for token full greedy decoding."""
    from layertrace.lm.speculative import measure_step_costs

    adapter = adapt(lm)
    batch = padded_batch(lm.config.vocab_size, "left")
    costs = measure_step_costs(adapter, batch["input_ids"], batch["attention_mask"], repeats=3)
    values = [costs.position_cost, costs.readout_cost, costs.embed_cost, costs.step_embed_cost, costs.loop_cost,
              costs.round_cost, *costs.block_costs]
    assert all(np.isfinite(v) and v >= 0 for v in values) and costs.source.startswith("measured at batch")
    # the prefill runs every block on all prompt positions: more than one block on one token
    assert np.isfinite(costs.prefill_cost) and costs.prefill_cost > 1.0
    # batch 4: entry 0 is the draft step (holed mask) relative to full decoding's step, both timed
    assert len(costs.block_costs) == 5 and 0 < costs.block_costs[0] < 10
    res = self_speculative_generate(adapter, batch["input_ids"], batch["attention_mask"], costs="measure",
                                    max_new_tokens=8, sampling=GREEDY)
    full = generate(adapter, batch["input_ids"], batch["attention_mask"], max_new_tokens=8, sampling=GREEDY)
    assert torch.equal(res.new_tokens, full.new_tokens)
    assert res.stats["choice"]["costs"]["source"].startswith("measured")
    with pytest.raises(LayertraceError, match="measure"):
        self_speculative_generate(adapter, batch["input_ids"], costs="fast", max_new_tokens=2)


@pytest.mark.parametrize("rows", [1, 3])
def test_step_costs_time_speculative_blocks_with_a_hole_and_full_steps_without(rows):
    """At batch > 1 a round's blocks meet holes (rejected drafts of rows that accepted fewer), full
    decoding's steps do not: the calibration times one-token steps both ways. At batch 1 there are
    no holes, and entry 0 of the table is full decoding's step itself."""
    from layertrace.lm.speculative import measure_step_costs, timed_adapter_calls

    adapter = adapt(tiny_llama(n_layers=3))
    ids = torch.randint(2, adapter.num_outputs, (rows, 6), generator=torch.Generator().manual_seed(0))
    first_steps = []  # (holed?) of every one-token embed on the prompt + 1 columns: the calibration's

    def record(kind, args, seconds):
        batch = args[0] if kind == "embed" else None
        if batch is not None and batch["input_ids"].shape[1] == 1 and batch["attention_mask"].shape[1] == 7:
            first_steps.append(bool((batch["attention_mask"] == 0).any()))

    with timed_adapter_calls(adapter, record):
        costs = measure_step_costs(adapter, ids, torch.ones_like(ids), repeats=2)  # nests its own timers
    assert not {"embed", "block", "readout"} & adapter.__dict__.keys()  # both blocks undone
    if rows == 1:
        assert not any(first_steps) and costs.block_costs[0] == 1.0
    else:
        assert any(first_steps) and not all(first_steps)
        assert costs.block_costs[0] > 0


def test_acceptance_from_analysis_pass_and_prompts(lm, tmp_path):
    from layertrace import analyze

    adapter = adapt(lm)
    batch = padded_batch(lm.config.vocab_size, "left")
    result = analyze(adapter, [{**batch, "labels": batch["input_ids"]}], seed=0)
    rates = acceptance_by_layer(result, adapter.n_layers)
    # the pass's agreement with the last layer, written naively from its per-token predictions
    pred = result.samples["pred"]  # (scored tokens, S)
    naive = (pred == pred[:, -1:]).mean(axis=0)
    assert np.allclose(result.final_agreement, naive) and np.allclose(rates[result.layers], naive)
    assert np.all(result.final_agreement >= np.asarray(result.saturation_cumulative) - 1e-12)
    result.to_json(tmp_path / "analysis.json")
    assert np.allclose(acceptance_by_layer(tmp_path, adapter.n_layers), rates)
    # an analysis.json from before final_agreement existed: its saturation curve (a lower bound)
    old = dataclasses.replace(result, final_agreement=None)
    cum = np.asarray(result.saturation_cumulative)
    assert np.allclose(acceptance_by_layer(old, adapter.n_layers)[result.layers],
                       np.where(np.asarray(result.layers) == adapter.n_layers, 1.0, cum))
    # the prompt estimate: naive per-layer agreement with the last layer's argmax on real tokens
    est = prompt_acceptance(adapter, batch["input_ids"], batch["attention_mask"])
    with torch.no_grad():
        tr = adapter.trace(batch)
    preds = tr.logits.argmax(-1)
    real = batch["attention_mask"].bool()
    naive = [float(((preds[l] == preds[-1]) & real).sum()) / float(real.sum()) for l in range(adapter.n_layers + 1)]
    assert np.allclose(est, naive)
    res = self_speculative_generate(adapter, batch["input_ids"], batch["attention_mask"], analysis=result,
                                    max_new_tokens=8, sampling=GREEDY)
    full = generate(adapter, batch["input_ids"], batch["attention_mask"], max_new_tokens=8, sampling=GREEDY)
    assert torch.equal(res.new_tokens, full.new_tokens)
    assert res.stats["choice"]["source"] == "analysis"


def test_errors_are_one_line(lm):
    ids = torch.tensor([[3, 4, 5]])
    with pytest.raises(LayertraceError, match="draft_layer"):
        self_speculative_generate(lm, ids, draft_layer=0, gamma=2)
    with pytest.raises(LayertraceError, match="entries"):
        acceptance_by_layer([0.5, 1.0], n_layers=4)


def test_a_draft_expected_to_lose_decodes_fully_and_a_given_one_always_speculates():
    lm = tiny_llama(n_layers=4)
    ids = torch.randint(2, 100, (2, 6), generator=torch.Generator().manual_seed(1))
    never = np.zeros(5)
    never[-1] = 1.0
    full = generate(lm, ids, max_new_tokens=10, sampling=GREEDY)
    res = self_speculative_generate(lm, ids, analysis=never, max_new_tokens=10, sampling=GREEDY)
    assert res.stats["decoder"] == "full" and res.stats["drafted"] == 0 and res.stats["draft_layer"] is None
    assert res.stats["choice"]["full"] and res.stats["choice"]["expected_speedup"] < 1.0
    assert torch.equal(res.sequences, full.sequences)
    for given in ({"draft_layer": 2}, {"gamma": 2}):  # one of them given: speculate with it
        res = self_speculative_generate(lm, ids, analysis=never, max_new_tokens=10, sampling=GREEDY, **given)
        assert res.stats["decoder"] == "speculative" and res.stats["drafted"] > 0
        assert torch.equal(res.sequences, full.sequences)
    sure = np.ones(5)
    res = self_speculative_generate(lm, ids, analysis=sure, max_new_tokens=10, sampling=GREEDY)
    assert res.stats["decoder"] == "speculative" and not res.stats["choice"]["full"]
    assert torch.equal(res.sequences, full.sequences)
    # the benchmark's comparison times what the decoder runs
    from layertrace.lm.speculative import compare_decoders

    table = compare_decoders(lm, ids, analysis=never, batch_sizes=(2,), repeats=1, max_new_tokens=6,
                             hf=False)["batches"]["2"]["self-speculative"]
    assert table["decoder"] == "full" and table["draft_layer"] is None and table["identical"] == 2
    assert "acceptance" not in table


def test_cli_generate_speculative_equals_full(tmp_path, capsys):
    """`layertrace generate` on a saved tiny GPT-2 + BPE tokenizer: same greedy text both decoders."""
    from transformers import AutoTokenizer

    from layertrace.cli.main import main
    from layertrace.io import read_json
    from layertrace.data.tokenizer import train_bpe_tokenizer

    texts = ["the film is good and the plot is fine", "the government said the plan is good"] * 20
    train_bpe_tokenizer(texts, vocab_size=300, out_dir=tmp_path / "tok")
    tok = AutoTokenizer.from_pretrained(str(tmp_path / "tok"), local_files_only=True)
    model = tiny_gpt2(n_layers=3, vocab=len(tok), init_std=0.2)
    model.save_pretrained(str(tmp_path / "m"))
    tok.save_pretrained(str(tmp_path / "m"))
    outs = {}
    for decoder, extra in (("speculative", ["--draft_layer", "1", "--gamma", "2"]), ("full", [])):
        assert main(["generate", "--model", str(tmp_path / "m"), "--prompt", "the film,the plan is",
                     "--decoder", decoder, "--max_new_tokens", "9", "--out", str(tmp_path / decoder), *extra]) == 0
        outs[decoder] = read_json(tmp_path / decoder / "generate.json")
    assert outs["speculative"]["texts"] == outs["full"]["texts"] and len(outs["full"]["texts"]) == 2
    assert outs["speculative"]["stats"]["decoder"] == "speculative" and outs["speculative"]["stats"]["drafted"] > 0
    assert "tokens/round" in capsys.readouterr().out
    # chosen from the prompts: this random model's shallow layers agree too rarely for any draft to pay,
    # so it decodes fully (and says so)
    assert main(["generate", "--model", str(tmp_path / "m"), "--prompt", "the film,the plan is",
                 "--max_new_tokens", "9", "--out", str(tmp_path / "chosen")]) == 0
    chosen = read_json(tmp_path / "chosen" / "generate.json")
    assert chosen["texts"] == outs["full"]["texts"] and chosen["stats"]["choice"]["source"] == "prompts"
    assert chosen["stats"]["decoder"] == "full" and chosen["stats"]["choice"]["expected_speedup"] < 1.0
    assert "decoded fully" in capsys.readouterr().out
    assert main(["generate", "--model", str(tmp_path / "m"), "--prompt", "the film,the plan is", "--analysis",
                 "measure", "--max_new_tokens", "9", "--out", str(tmp_path / "measured")]) == 0
    measured = read_json(tmp_path / "measured" / "generate.json")
    assert measured["texts"] == outs["full"]["texts"] and measured["stats"]["choice"]["source"] == "greedy continuation"
    # the cost model calibrated on this model (what --costs measure adds): the same text, costs marked measured
    assert main(["generate", "--model", str(tmp_path / "m"), "--prompt", "the film,the plan is", "--costs",
                 "measure", "--max_new_tokens", "9", "--out", str(tmp_path / "costs")]) == 0
    timed = read_json(tmp_path / "costs" / "generate.json")
    assert timed["texts"] == outs["full"]["texts"]
    assert timed["stats"]["choice"]["costs"]["source"] == "measured at batch 2"
    assert outs["speculative"]["stats"]["choice"]["costs"]["source"] != "measured at batch 2"
    assert main(["generate", "--model", str(tmp_path / "m"), "--prompt", "x", "--decoder", "fast"]) == 2
    # eos: the tokenizer's eos token made one row 0 emits early; rows stop there (both decoders), or not
    free = generate(model, tok(["the film"], return_tensors="pt")["input_ids"], max_new_tokens=9, sampling=GREEDY)
    tok.eos_token = tok.convert_ids_to_tokens(int(free.new_tokens[0, 2]))
    tok.save_pretrained(str(tmp_path / "m"))
    stopped = {}
    for decoder, extra in (("speculative", ["--draft_layer", "1", "--gamma", "2"]), ("full", []),
                           ("ignored", ["--stop_at_eos", "false"])):
        assert main(["generate", "--model", str(tmp_path / "m"), "--prompt", "the film,the plan is",
                     "--decoder", "full" if decoder == "ignored" else decoder, "--max_new_tokens", "9",
                     "--out", str(tmp_path / f"eos-{decoder}"), *extra]) == 0
        stopped[decoder] = read_json(tmp_path / f"eos-{decoder}" / "generate.json")["texts"]
    assert stopped["speculative"] == stopped["full"]
    # the eos token itself is special now (skipped in the text): the stopped row is a prefix
    assert len(stopped["full"][0]) < len(stopped["ignored"][0]) and stopped["ignored"][0].startswith(stopped["full"][0])


def test_compare_decoders_side_by_side_on_llama_and_gpt2():
    """The benchmark's comparison: ours identical to full greedy, so is HF's plain greedy generate (at
    every batch size); HF's early-exit assistant runs on the Llama layout and its GPT-2 failure
    (transformers 5) is reported, not raised."""
    from layertrace.lm.speculative import compare_decoders

    prompts = torch.randint(2, 100, (4, 6), generator=torch.Generator().manual_seed(0))
    res = compare_decoders(tiny_llama(n_layers=4), prompts, draft_layer=2, gamma=3, batch_sizes=(1, 2),
                           repeats=1, max_new_tokens=8)
    assert res["hf_error"] is None and res["draft_layer"] == 2
    b1, b2 = res["batches"]["1"], res["batches"]["2"]
    assert set(b1) == {"full", "self-speculative", "calm", "hf-generate", "hf-assistant-early-exit"}
    assert set(b2) == {"full", "self-speculative", "calm", "hf-generate"}
    assert b1["hf-generate"]["identical"] == b2["hf-generate"]["identical"] == 4
    assert b1["self-speculative"]["identical"] == b1["self-speculative"]["rows"] == 4
    assert b2["self-speculative"]["identical"] == 4 and b1["hf-assistant-early-exit"]["identical"] == 4
    assert b1["full"]["speedup"] == 1.0 and all(r["tokens_per_s"] > 0 for r in b1.values())
    assert b2["self-speculative"]["draft_layer"] == 2 and b2["self-speculative"]["gamma"] == 3
    # chosen per batch size from the prompts with measured costs: each batch records its own choice
    res = compare_decoders(tiny_llama(n_layers=4), prompts, batch_sizes=(1, 2), repeats=1, max_new_tokens=6, hf=False)
    for b in ("1", "2"):
        own = res["batches"][b]["self-speculative"]
        assert own["choice"]["costs"]["source"] == f"measured at batch {b}" and own["identical"] == 4
        assert own["choice"]["source"] == "prompts" and len(own["choice"]["costs"]["block_costs"]) == 5
    assert res["draft_layer"] == res["batches"]["1"]["self-speculative"]["choice"]["draft_layer"]  # HF's k
    res = compare_decoders(tiny_llama(n_layers=4), prompts, analysis="measure", batch_sizes=(2,), repeats=1,
                           max_new_tokens=6, hf=False)
    assert res["batches"]["2"]["self-speculative"]["choice"]["source"] == "greedy continuation"
    res = compare_decoders(tiny_gpt2(n_layers=4), prompts, draft_layer=2, gamma=2, batch_sizes=(1,), repeats=1,
                           max_new_tokens=4)
    assert res["batches"]["1"]["self-speculative"]["identical"] == 4
    if res["hf_error"] is None:  # a transformers release that fixed it
        assert res["batches"]["1"]["hf-assistant-early-exit"]["identical"] == 4


def _bench_speculative():
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "bench_speculative", Path(__file__).resolve().parents[2] / "benchmarks" / "bench_speculative.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


def test_call_breakdown_of_the_benchmark_counts_every_block_call():
    """benchmarks/bench_speculative.py --breakdown: full decoding runs L blocks on the P prompt
    positions once and L one-token blocks per further token; self-speculative decoding's draft and
    verify calls add up to what its stats say (k one-token calls per drafted position and L - k
    window calls per round); the timed calls fit inside each decoder's own time."""
    from layertrace.lm.generate import SamplingConfig, generate

    bench = _bench_speculative()
    adapter = adapt(tiny_llama(n_layers=4))
    ids = padded_batch(adapter.num_outputs, "left")["input_ids"][:2]
    greedy, n, (k, g) = SamplingConfig("greedy"), 6, (1, 2)
    rounds = []

    def spec(i):
        res = self_speculative_generate(adapter, i, torch.ones_like(i), draft_layer=k, gamma=g, max_new_tokens=n,
                                        sampling=greedy)
        rounds.append(res.stats["rounds"])
        return res

    res = bench.call_breakdown(adapter, [ids[:1], ids[1:]], {
        "full": lambda i: generate(adapter, i, torch.ones_like(i), max_new_tokens=n, sampling=greedy),
        "spec": spec}, repeats=2)
    L, p = adapter.n_layers, ids.shape[1]
    full = res["full"]["calls"]
    assert full[f"block, m = {p}"][0] == 2 * 2 * L and full["block, m = 1"][0] == 2 * 2 * L * (n - 1)
    assert res["full"]["tokens"] == 2 * 2 * n
    calls = res["spec"]["calls"]
    window = sum(c for key, (c, _) in calls.items() if key not in (f"block, m = {p}", "block, m = 1")
                 and key.startswith("block"))
    assert window == (L - k) * sum(rounds[2:])  # the timed runs only (the first two are the warm-up)
    for r in res.values():
        assert 0 < sum(s for _, s in r["calls"].values()) <= r["total"]


def test_acceptance_needed_is_the_smallest_grid_point_reaching_the_target():
    """bench_speculative.acceptance_needed: the cost model reaches the target there and not 0.01 below;
    an unreachable target (above gamma + 1 tokens per round's worth) gives None."""
    from layertrace.lm.draft_choice import StepCosts, expected_speedup

    bench = _bench_speculative()
    costs = StepCosts(0.2, 0.3, 0.2)
    a = bench.acceptance_needed(1.15, 2, 2, 12, costs, 8, 32)
    assert a is not None and 0 < a <= 1
    assert expected_speedup(a, 2, 2, 12, costs=costs, batch=8, new_tokens=32) >= 1.15
    assert expected_speedup(a - 0.01, 2, 2, 12, costs=costs, batch=8, new_tokens=32) < 1.15
    assert bench.acceptance_needed(10.0, 2, 2, 12, costs, 8, 32) is None
    rows = np.array([0.3, 0.5, 0.7])  # per-row rates move together: the mean where the target is reached
    m = bench.acceptance_needed(1.15, 2, 2, 12, costs, 8, 32, rows=rows)
    step = next(i / 100 for i in range(-100, 101) if np.isclose(np.clip(rows + i / 100, 0, 1).mean(), m))
    assert expected_speedup(np.clip(rows + step, 0, 1), 2, 2, 12, costs=costs, batch=8, new_tokens=32) >= 1.15
    assert expected_speedup(np.clip(rows + step - 0.01, 0, 1), 2, 2, 12, costs=costs, batch=8, new_tokens=32) < 1.15
    assert m > a  # rows that differ need more than one rate for all
