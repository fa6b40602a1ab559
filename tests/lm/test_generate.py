"""Generation from layer k and early-exit decoding on tiny GPT-2 / Llama built from config."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from tiny_models import padded_batch, tiny_gpt2, tiny_llama  # noqa: E402

from layertrace.errors import LayertraceError  # noqa: E402
from layertrace.lm.early_exit import early_exit_generate, early_exit_sweep, sequence_perplexity  # noqa: E402
from layertrace.lm.generate import SamplingConfig, filter_logits, generate  # noqa: E402
from layertrace.models import adapt  # noqa: E402

FAMILIES = {"gpt2": tiny_gpt2, "llama": tiny_llama}
SETTINGS = [
    SamplingConfig("greedy"),
    SamplingConfig("nucleus", top_p=0.95, seed=3),
    SamplingConfig("top_k", top_k=5, seed=4),
    SamplingConfig("sample", top_k=20, top_p=0.8, temperature=0.7, seed=1),
]


@pytest.fixture(params=sorted(FAMILIES), scope="module")
def lm(request):
    return FAMILIES[request.param]()


@pytest.mark.parametrize("cfg", SETTINGS, ids=lambda c: c.strategy)
def test_generation_from_last_layer_equals_hf_generate(lm, cfg):
    batch = padded_batch(lm.config.vocab_size, "left")
    ours = generate(lm, batch["input_ids"], batch["attention_mask"], max_new_tokens=10, sampling=cfg,
                    eos_token_id=7)
    torch.manual_seed(cfg.seed)
    hf = lm.generate(**batch, max_new_tokens=10, eos_token_id=7, pad_token_id=7, **cfg.hf_kwargs())
    assert torch.equal(ours.sequences, hf)
    assert ours.layer == lm.config.num_hidden_layers


@pytest.mark.parametrize("side", ["left", "right"])
def test_padded_rows_generate_like_unpadded_prompts(lm, side):
    """HF generate mis-positions right-padded rows (it warns); ours numbers real tokens only."""
    batch = padded_batch(lm.config.vocab_size, side)
    greedy = SamplingConfig("greedy")
    res = generate(lm, batch["input_ids"], batch["attention_mask"], max_new_tokens=6, sampling=greedy)
    for row in (1, 3):
        real = batch["attention_mask"][row].bool()
        alone = generate(lm, batch["input_ids"][row][real][None], max_new_tokens=6, sampling=greedy)
        assert torch.equal(res.new_tokens[row], alone.new_tokens[0])


def test_eos_stops_rows_and_pads_them(lm):
    batch = padded_batch(lm.config.vocab_size, "left")
    free = generate(lm, batch["input_ids"], batch["attention_mask"], max_new_tokens=6,
                    sampling=SamplingConfig("greedy"))
    eos = int(free.new_tokens[0, 1])  # row 0 emits it at step 2
    res = generate(lm, batch["input_ids"], batch["attention_mask"], max_new_tokens=6,
                   sampling=SamplingConfig("greedy"), eos_token_id=eos, pad_token_id=99)
    row = res.new_tokens[0]
    first = int((row == eos).nonzero()[0])
    assert first <= 1 and (row[first + 1:] == 99).all()
    assert res.new_mask[0, : first + 1].all() and not res.new_mask[0, first + 1:].any()


def test_greedy_drops_finished_rows_with_the_same_tokens(lm):
    """Greedy decoding steps a row only until its eos (the rows left keep HF's tokens); blocks_run counts
    one full pass per generated token, where stepping finished rows along would count B per step."""
    batch = padded_batch(lm.config.vocab_size, "left")
    greedy = SamplingConfig("greedy")
    free = generate(lm, batch["input_ids"], batch["attention_mask"], max_new_tokens=8, sampling=greedy)
    eos = int(free.new_tokens[0, 1])  # row 0 emits it at step 2
    res = generate(lm, batch["input_ids"], batch["attention_mask"], max_new_tokens=8, sampling=greedy,
                   eos_token_id=eos, pad_token_id=99)
    hf = lm.generate(**batch, max_new_tokens=8, eos_token_id=eos, pad_token_id=99, **greedy.hf_kwargs())
    assert torch.equal(res.sequences, hf)
    stopped_early = (res.new_mask == 0).any(1)
    assert stopped_early.any() and not stopped_early.all()  # a mixed batch: some rows left, some went on
    assert res.blocks_run == lm.config.num_hidden_layers * int(res.new_mask.sum())


def _shallow_reference(lm, batch, k, steps):
    """Naive greedy decoding from layer k: re-run the first k blocks on the whole sequence each step."""
    a = adapt(lm)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    for _ in range(steps):
        logits = a({"input_ids": ids, "attention_mask": mask}, upto=k)[:, -1]
        ids = torch.cat([ids, logits.argmax(-1, keepdim=True)], dim=1)
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
    return ids


@pytest.mark.parametrize("k", [1, 2])
def test_generation_from_layer_k_matches_a_naive_loop_without_cache(lm, k):
    batch = padded_batch(lm.config.vocab_size, "left")
    ours = generate(lm, batch["input_ids"], batch["attention_mask"], layer=k, max_new_tokens=6,
                    sampling=SamplingConfig("greedy"))
    assert ours.layer == k and ours.blocks_run == k * 4 * 6
    assert torch.equal(ours.sequences, _shallow_reference(lm, batch, k, 6))


@pytest.mark.parametrize("cfg", SETTINGS[:2], ids=lambda c: c.strategy)
@pytest.mark.parametrize("measure", ["softmax", "state"])
def test_early_exit_with_tau_above_one_equals_full_decoding(lm, cfg, measure):
    batch = padded_batch(lm.config.vocab_size, "left")
    full = generate(lm, batch["input_ids"], batch["attention_mask"], max_new_tokens=10, sampling=cfg, eos_token_id=7)
    ee = early_exit_generate(lm, batch["input_ids"], batch["attention_mask"], tau=1.01, confidence=measure,
                             max_new_tokens=10, sampling=cfg, eos_token_id=7)
    assert torch.equal(ee.sequences, full.sequences)
    assert (ee.exit_layers[ee.new_mask.bool()] == lm.config.num_hidden_layers).all()


def _naive_early_exit(lm, ids, tau, steps):
    """Cache-free reference of CALM-copy early exit (batch 1, greedy, softmax confidence).

    Every step recomputes the whole sequence. A generated token fed back at position p exited at
    layer e with state h; layers deeper than e see h at position p (the copy). Prompt positions are
    computed at full depth. Returns (sequence, exit layer per generated token).
    """
    a = adapt(lm)
    seq = ids[0].tolist()
    n_prompt = len(seq)
    copied: dict[int, tuple[int, torch.Tensor]] = {}
    exits = []
    with torch.no_grad():
        for _ in range(steps):
            state = a.embed({"input_ids": torch.tensor([seq])})
            chosen = None
            for layer in range(1, a.n_layers + 1):
                hidden = state.hidden.clone()
                for pos, (e, h) in copied.items():
                    if e < layer:
                        hidden[0, pos] = h
                state = a.block(layer, state.replace(hidden))
                h_last = state.hidden[0, -1]
                probs = torch.softmax(a.readout(h_last[None]).float(), -1)[0]
                if chosen is None and (probs.max() >= tau or layer == a.n_layers):
                    chosen = (layer, h_last.clone(), int(probs.argmax()))
            layer, h, token = chosen
            exits.append(layer)
            last = len(seq) - 1
            if last >= n_prompt:  # a generated token: its exit state is copied to deeper layers
                copied[last] = (layer, h)
            seq.append(token)
    return seq, exits


def test_early_exit_single_row_matches_naive_recomputation():
    lm = tiny_gpt2(n_layers=4, seed=2, init_std=0.2)  # peaked readouts: confidences spread over 0.05-0.3
    ids = torch.tensor([[5, 17, 33, 2, 60]])
    steps = 12
    ee = early_exit_generate(lm, ids, tau=0.0, max_new_tokens=steps, sampling=SamplingConfig("greedy"))
    assert (ee.exit_layers == 1).all()  # tau 0: every token exits at the first layer
    tau = 0.1
    ee = early_exit_generate(lm, ids, tau=tau, max_new_tokens=steps, sampling=SamplingConfig("greedy"))
    seq, exits = _naive_early_exit(lm, ids, tau, steps)
    assert len(set(exits)) > 1, exits  # the case exercises several exit layers
    assert ee.exit_layers[0].tolist() == exits
    assert ee.sequences[0].tolist() == seq


def test_early_exit_skips_blocks_and_reports_quality():
    lm = tiny_gpt2(n_layers=4)
    ids = torch.tensor([[5, 17, 33, 2, 60], [8, 9, 10, 11, 12]])
    ee = early_exit_generate(lm, ids, tau=0.0, max_new_tokens=5, sampling=SamplingConfig("greedy"))
    # prefill runs 4 blocks for both rows; afterwards every token exits at layer 1
    assert ee.blocks_run == 4 * 2 + 1 * 2 * 4
    assert (ee.exit_layers == 1).all()
    for batch_size in (None, 1):
        sweep = early_exit_sweep(lm, ids, taus=[0.0, 2.0], max_new_tokens=5, batch_size=batch_size, repeats=2,
                                 decode=lambda t: " ".join(map(str, t)))
        never = sweep["points"][1]
        assert never["perplexity"] == pytest.approx(sweep["full"]["perplexity"]) and never["perplexity_ratio"] == 1.0
        assert never["avg_exit_layer"] == 4 and sweep["points"][0]["avg_exit_layer"] == 1
        assert sweep["points"][0]["layer_speedup"] == 4.0
        assert sweep["points"][0]["blocks_fraction"] < 0.5 and never["blocks_fraction"] == 1.0
        assert never["diversity"] == sweep["full"]["diversity"] and 0 <= never["diversity"] <= 1
        assert sweep["n_prompts"] == 2 and sweep["full"]["n_tokens"] == 10
        assert sweep["selected"] is not None and sweep["selected"]["perplexity_ratio"] <= 1.1


def test_sequence_perplexity_matches_a_naive_sum(lm):
    batch = padded_batch(lm.config.vocab_size, "left")
    score = batch["attention_mask"].clone()
    score[:, :5] = 0
    ppl = sequence_perplexity(lm, batch["input_ids"], batch["attention_mask"], score)
    a = adapt(lm)
    total, count = 0.0, 0
    with torch.no_grad():
        for row in range(4):
            real = batch["attention_mask"][row].bool()
            ids = batch["input_ids"][row][real]
            offset = int((~real).sum())
            logp = torch.log_softmax(a({"input_ids": ids[None]})[0].double(), -1)
            for t in range(1, len(ids)):
                if score[row, offset + t]:
                    total -= float(logp[t - 1, ids[t]])
                    count += 1
    assert ppl == pytest.approx(float(torch.exp(torch.tensor(total / count))), rel=1e-5)


def test_filter_logits_matches_hf_warpers():
    from transformers.generation.logits_process import TopKLogitsWarper, TopPLogitsWarper, TemperatureLogitsWarper

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(5, 50, generator=g) * 3
    cfg = SamplingConfig("sample", top_k=10, top_p=0.7, temperature=0.5)
    ref = TopPLogitsWarper(0.7)(None, TopKLogitsWarper(10)(None, TemperatureLogitsWarper(0.5)(None, logits)))
    assert torch.equal(filter_logits(logits, cfg), ref)


def test_generation_errors_are_one_line():
    lm = tiny_gpt2()
    with pytest.raises(LayertraceError, match="layer 0"):
        generate(lm, torch.ones(1, 3, dtype=torch.long), layer=0)
    with pytest.raises(LayertraceError, match="top_p"):
        SamplingConfig(top_p=0.0)
    with pytest.raises(LayertraceError, match="causal LM"):
        from layertrace.models import ToyTransformerClassifier

        generate(ToyTransformerClassifier(), torch.ones(1, 3, dtype=torch.long))


def test_batched_early_exit_equals_each_row_alone():
    """Rows decide independently: a left-padded batch gives each row's batch-1 tokens and exits."""
    lm = tiny_gpt2(n_layers=4, seed=2, init_std=0.2)
    batch = padded_batch(lm.config.vocab_size, "left")
    greedy = SamplingConfig("greedy")
    ee = early_exit_generate(lm, batch["input_ids"], batch["attention_mask"], tau=0.1, max_new_tokens=8,
                             sampling=greedy)
    assert len(set(ee.exit_layers.flatten().tolist())) > 1
    for row in range(4):
        real = batch["attention_mask"][row].bool()
        alone = early_exit_generate(lm, batch["input_ids"][row][real][None], tau=0.1, max_new_tokens=8,
                                    sampling=greedy)
        assert torch.equal(ee.new_tokens[row], alone.new_tokens[0])
        assert torch.equal(ee.exit_layers[row], alone.exit_layers[0])


@pytest.mark.parametrize("k", [1, 2])
def test_early_exit_at_tau_zero_equals_generation_from_the_first_allowed_layer(lm, k):
    """tau = 0 exits every token at min_layer = k: the cache of layers <= k is exactly layer-k generation's."""
    batch = padded_batch(lm.config.vocab_size, "left")
    cfg = SamplingConfig("nucleus", seed=5)
    shallow = generate(lm, batch["input_ids"], batch["attention_mask"], layer=k, max_new_tokens=8, sampling=cfg)
    ee = early_exit_generate(lm, batch["input_ids"], batch["attention_mask"], tau=0.0, min_layer=k,
                             max_new_tokens=8, sampling=cfg)
    assert torch.equal(ee.sequences, shallow.sequences)
    assert (ee.exit_layers == k).all()
