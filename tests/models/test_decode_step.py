"""The cheap decode-path embed (HFAutoAdapter's DecodeStep) against the replay of the model's forward.

Every decoding step's State (layer 0, every per-sample argument, and the hidden states after every
block) must be bitwise equal to the replay's, over many steps with padded prompts, several new
tokens per step and holes in the mask (self-speculative decoding's rejected drafts), for three
positional schemes (GPT-2 learned, Llama rotary, OPT learned with offset 2); a family it cannot
derive (BLOOM's ALiBi) keeps the replay.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import transformers

from layertrace.models import adapt

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lm"))
from tiny_models import padded_batch, tiny_gpt2, tiny_llama  # noqa: E402


def tiny_opt():
    torch.manual_seed(0)
    cfg = transformers.OPTConfig(num_hidden_layers=2, hidden_size=32, ffn_dim=64, num_attention_heads=4,
                                 vocab_size=101, max_position_embeddings=64, word_embed_proj_dim=32,
                                 pad_token_id=0, bos_token_id=1, eos_token_id=0)
    model = transformers.OPTForCausalLM(cfg).eval()
    assert sum(p.numel() for p in model.parameters()) < 100_000
    return model


def tiny_bloom():
    torch.manual_seed(0)
    cfg = transformers.BloomConfig(n_layer=2, hidden_size=32, n_head=4, vocab_size=101, pad_token_id=0)
    model = transformers.BloomForCausalLM(cfg).eval()
    assert sum(p.numel() for p in model.parameters()) < 100_000
    return model


def tiny_gpt2_eager():
    """GPT-2 with eager attention: an additive float mask instead of SDPA's bool mask."""
    model = tiny_gpt2()
    model.set_attn_implementation("eager")
    return model


# new tokens per step, and which steps leave a hole (mask 0) in row 1's first new position
STEPS = [1, 3, 1, 2, 1, 1, 4, 1]
HOLES = {2, 6}


def decode_states(adapter, batch, fast: bool):
    """Prefill then len(STEPS) cached steps; returns, per step, (layer-0 state, hidden after each block)."""
    adapter.fast_decode = fast
    g = torch.Generator().manual_seed(3)
    cache = adapter.new_cache()
    mask = batch["attention_mask"]
    out = []
    with torch.no_grad():
        state = adapter.embed({**batch, "past_key_values": cache})
        for layer in range(1, adapter.n_layers + 1):
            state = adapter.block(layer, state)
        for step, t in enumerate(STEPS):
            new = torch.ones(mask.shape[0], t, dtype=torch.long)
            if step in HOLES:
                new[1, 0] = 0
            mask = torch.cat([mask, new], dim=1)
            ids = torch.randint(2, adapter.num_outputs, (mask.shape[0], t), generator=g)
            state = adapter.embed({"input_ids": ids, "attention_mask": mask, "past_key_values": cache})
            first = state
            hidden = []
            for layer in range(1, adapter.n_layers + 1):
                state = adapter.block(layer, state)
                hidden.append(state.hidden)
            out.append((first, hidden))
    return out


def assert_same_states(fast, slow):
    for (f0, fh), (s0, sh) in zip(fast, slow):
        assert torch.equal(f0.hidden, s0.hidden)
        assert f0.per_sample.keys() == s0.per_sample.keys()
        for key in s0.per_sample:
            assert torch.equal(f0.per_sample[key], s0.per_sample[key]), key
        for a, b in zip(fh, sh):
            assert torch.equal(a, b)


@pytest.mark.parametrize("make", [tiny_gpt2, tiny_llama, tiny_opt, tiny_gpt2_eager],
                         ids=["gpt2", "llama", "opt", "gpt2-eager"])
@pytest.mark.parametrize("padding", ["left", "none"])
def test_decode_path_equals_replay(make, padding):
    adapter = adapt(make())
    batch = padded_batch(adapter.num_outputs, side="left")
    if padding == "none":
        batch = {"input_ids": batch["input_ids"], "attention_mask": torch.ones_like(batch["attention_mask"])}
    slow = decode_states(adapter, batch, fast=False)
    fast = decode_states(adapter, batch, fast=True)
    step = adapter._decode
    # the decode path was learned (one replay per case) and served the other steps
    assert step and step.cases and all(v is not None for v in step.cases.values())
    assert_same_states(fast, slow)


def test_decode_path_skips_the_replay():
    """After a case is learned, no block recorder runs: the model's forward is not called again."""
    adapter = adapt(tiny_llama())
    batch = padded_batch(adapter.num_outputs, side="left")
    decode_states(adapter, batch, fast=True)  # learns both cases
    calls = []
    hook = adapter.model.register_forward_pre_hook(lambda m, a, k: calls.append(1), with_kwargs=True)
    try:
        decode_states(adapter, batch, fast=True)
    finally:
        hook.remove()
    assert len(calls) == 1  # the prefill only


def test_alibi_keeps_the_replay():
    adapter = adapt(tiny_bloom())
    batch = padded_batch(adapter.num_outputs, side="left")
    slow = decode_states(adapter, batch, fast=False)
    fast = decode_states(adapter, batch, fast=True)
    assert adapter._decode.cases and all(v is None for v in adapter._decode.cases.values())
    assert_same_states(fast, slow)


def test_training_mode_keeps_the_replay():
    adapter = adapt(tiny_gpt2())
    batch = padded_batch(adapter.num_outputs, side="left")
    decode_states(adapter, batch, fast=True)
    adapter.train()
    try:
        with torch.no_grad():
            cache = adapter.new_cache()
            state = adapter.embed({**batch, "past_key_values": cache})
            for layer in range(1, adapter.n_layers + 1):
                state = adapter.block(layer, state)
            mask = torch.cat([batch["attention_mask"], torch.ones(4, 1, dtype=torch.long)], dim=1)  # a learned case
            step = {"input_ids": batch["input_ids"][:, :1], "attention_mask": mask,
                    "past_key_values": cache}
            assert adapter._decode.state(*adapter._forward_inputs(step)) is None
            adapter.eval()
            assert adapter._decode.state(*adapter._forward_inputs(step)) is not None
    finally:
        adapter.eval()


@pytest.mark.parametrize("make", [tiny_gpt2, tiny_llama, tiny_opt, tiny_gpt2_eager],
                         ids=["gpt2", "llama", "opt", "gpt2-eager"])
@pytest.mark.parametrize("hole", [False, True])
def test_window_steps_equal_the_replay(make, hole):
    """The one-token steps inside a window (self-speculative drafting), derived from the window's embed,
    equal the replay of each step at its cache length: layer 0, every argument, every block's output."""
    from layertrace.models.decode_step import window_steps

    adapter = adapt(make())
    batch = padded_batch(adapter.num_outputs, side="left")
    decode_states(adapter, batch, fast=True)  # learns the cases (one-token steps with and without holes)
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        cache = adapter.new_cache()
        state = adapter.embed({**batch, "past_key_values": cache})
        for layer in range(1, adapter.n_layers + 1):
            state = adapter.block(layer, state)
        mask = batch["attention_mask"]
        if hole:  # a rejected draft of an earlier round in row 2
            mask = torch.cat([mask, torch.tensor([[1], [1], [0], [1]])], dim=1)
            state = adapter.embed({"input_ids": batch["input_ids"][:, :1], "attention_mask": mask,
                                   "past_key_values": cache})
            for layer in range(1, adapter.n_layers + 1):
                state = adapter.block(layer, state)
        t, past = 3, mask.shape[1]
        wide = torch.cat([mask, torch.ones(4, t, dtype=torch.long)], dim=1)
        ids = torch.randint(2, adapter.num_outputs, (4, t), generator=g)
        window = {"input_ids": ids, "attention_mask": wide, "past_key_values": cache}
        step = window_steps(adapter, window, adapter.embed(window))
        assert step is not None
        for j in range(t):
            got = step(j, ids[:, j:j + 1])
            adapter.fast_decode = False  # the reference: the replay of this one-token step
            ref = adapter.embed({"input_ids": ids[:, j:j + 1], "attention_mask": wide[:, :past + j + 1],
                                 "past_key_values": cache})
            adapter.fast_decode = True
            assert torch.equal(got.hidden, ref.hidden)
            assert got.per_sample.keys() == ref.per_sample.keys()
            for key in ref.per_sample:
                assert torch.equal(got.per_sample[key], ref.per_sample[key]), key
            for layer in range(1, adapter.n_layers + 1):  # blocks on the reference advance the cache
                got_next = adapter.block(layer, got)
                cache.layers[layer - 1].crop(-1)
                ref = adapter.block(layer, ref)
                assert torch.equal(got_next.hidden, ref.hidden)
                got = got_next
    assert window_steps(adapt(tiny_bloom()), window, state) is None  # ALiBi: no decode path
