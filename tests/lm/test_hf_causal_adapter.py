"""Causal-LM adapters (GPT-2 and the Llama layout) against the HF models' own outputs."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from tiny_models import padded_batch, tiny_gpt2, tiny_llama  # noqa: E402

from layertrace.models import adapt  # noqa: E402
from layertrace.models.hf_causal import positions_from_mask  # noqa: E402

FAMILIES = {
    "gpt2": tiny_gpt2,
    "llama": tiny_llama,
    "qwen2": lambda: tiny_llama(cls_name="Qwen2"),
    "mistral": lambda: tiny_llama(cls_name="Mistral"),
}
ATOL = 1e-5


@pytest.fixture(params=sorted(FAMILIES))
def lm(request):
    return FAMILIES[request.param]()


def test_adapter_describes_the_model(lm):
    a = adapt(lm)
    assert a.kind == "causal_lm" and a.n_layers == lm.config.num_hidden_layers
    assert a.num_outputs == lm.config.vocab_size and a.hidden_size == lm.config.hidden_size
    # the shared readout reuses the model's own parameters; no parameter is added
    assert {id(p) for p in a.parameters()} == {id(p) for p in lm.parameters()}
    assert a.head.head is lm.lm_head
    assert set(a.state_dict()) >= {"model." + k for k in lm.state_dict()}


@pytest.mark.parametrize("side", ["right", "left"])
def test_readout_of_last_layer_equals_model_logits(lm, side):
    a = adapt(lm)
    batch = padded_batch(a.num_outputs, side)
    with torch.no_grad():
        trace = a.trace(batch)
        ref = a.model_logits(batch)
        direct = lm(**batch, position_ids=positions_from_mask(batch["attention_mask"], 9)).logits
    torch.testing.assert_close(trace.logits[-1], ref, atol=ATOL, rtol=0)
    torch.testing.assert_close(ref, direct)
    assert trace.features.shape == (a.n_layers + 1, 4, 9, a.hidden_size)
    assert trace.logits.shape == (a.n_layers + 1, 4, 9, a.num_outputs)
    torch.testing.assert_close(trace.mask, batch["attention_mask"])


def test_right_padding_positions_match_the_plain_hf_forward(lm):
    a = adapt(lm)
    batch = padded_batch(a.num_outputs, "right")
    with torch.no_grad():
        logits = a(batch)
        plain = lm(**batch).logits  # HF numbers columns 0..T-1: same as ours on right padding
    real = batch["attention_mask"].bool()
    torch.testing.assert_close(logits[real], plain[real], atol=ATOL, rtol=0)


def test_traced_features_equal_output_hidden_states(lm):
    """HF's last hidden state has the final norm applied; ours is the raw block output.

    Compared on real tokens: at right-pad positions HF numbers positions by column, we give pads 0.
    """
    a = adapt(lm)
    batch = padded_batch(a.num_outputs, "right")
    real = batch["attention_mask"].bool()
    with torch.no_grad():
        trace = a.trace(batch)
        hs = lm(**batch, output_hidden_states=True).hidden_states
    assert len(hs) == a.n_layers + 1
    for layer in range(a.n_layers):
        torch.testing.assert_close(trace.features[layer][real], hs[layer][real], atol=ATOL, rtol=0)
    torch.testing.assert_close(a.norm(trace.features[-1])[real], hs[-1][real], atol=ATOL, rtol=0)
    assert not torch.allclose(trace.features[-1][real], hs[-1][real])


def test_padding_does_not_change_real_tokens(lm):
    """A left- or right-padded row gives the logits of the same tokens without padding."""
    a = adapt(lm)
    for side in ("left", "right"):
        batch = padded_batch(a.num_outputs, side)
        with torch.no_grad():
            logits = a(batch)
            for row in (1, 3):
                real = batch["attention_mask"][row].bool()
                alone = a({"input_ids": batch["input_ids"][row][real][None]})
                torch.testing.assert_close(logits[row][real], alone[0], atol=ATOL, rtol=0)


def test_sliced_state_equals_full_forward(lm):
    a = adapt(lm)
    batch = padded_batch(a.num_outputs, "left")
    keep = torch.tensor([3, 0])
    with torch.no_grad():
        full = a(batch)
        state = a.embed(batch)
        state = a.block(1, state).select(keep)
        for layer in range(2, a.n_layers + 1):
            state = a.block(layer, state)
        sliced = a.readout(a.features(state))
    torch.testing.assert_close(sliced, full[keep], atol=ATOL, rtol=0)


@pytest.mark.parametrize("upto", [1, 2])
def test_forward_upto_runs_only_first_blocks(lm, upto):
    a = adapt(lm)
    batch = padded_batch(a.num_outputs, "right")
    with torch.no_grad():
        trace = a.trace(batch)
        torch.testing.assert_close(a(batch, upto=upto), trace.logits[upto], atol=ATOL, rtol=0)


def test_final_norm_false_skips_the_norm(lm):
    a = adapt(lm, final_norm=False)
    batch = padded_batch(a.num_outputs, "right")
    with torch.no_grad():
        h = a.trace(batch, layers=[-1], with_logits=False).features[0]
        torch.testing.assert_close(a.readout(h), lm.lm_head(h))


def test_incremental_decoding_with_cache_equals_full_forward(lm):
    """Prefill 6 tokens, then feed 3 more one at a time through block(l, state) with a KV cache."""
    a = adapt(lm)
    batch = padded_batch(a.num_outputs, "left")
    ids, mask = batch["input_ids"], batch["attention_mask"]
    with torch.no_grad():
        full = a(batch)
        cache = a.new_cache()
        outs = []
        for start, stop in ((0, 6), (6, 7), (7, 8), (8, 9)):
            state = a.embed({"input_ids": ids[:, start:stop], "attention_mask": mask[:, :stop],
                             "past_key_values": cache})
            for layer in range(1, a.n_layers + 1):
                state = a.block(layer, state)
            outs.append(a.readout(a.features(state)))
        assert a.cache_length(cache) == 9
    inc = torch.cat(outs, dim=1)
    real = mask.bool()
    torch.testing.assert_close(inc[real], full[real], atol=ATOL, rtol=0)


def test_fill_cache_writes_what_the_block_would(lm):
    a = adapt(lm)
    batch = padded_batch(a.num_outputs, "right")
    with torch.no_grad():
        by_block, by_fill = a.new_cache(), a.new_cache()
        state = a.embed({**batch, "past_key_values": by_block})
        state_fill = a.embed({**batch, "past_key_values": by_fill})
        for layer in range(1, a.n_layers + 1):
            a.fill_cache(layer, state_fill.replace(state.hidden))
            state = a.block(layer, state)
        for layer in range(a.n_layers):
            torch.testing.assert_close(by_fill.layers[layer].keys, by_block.layers[layer].keys, atol=ATOL, rtol=0)
            torch.testing.assert_close(by_fill.layers[layer].values, by_block.layers[layer].values,
                                       atol=ATOL, rtol=0)


def test_fill_cache_stops_the_block_once_its_keys_and_values_are_written(lm):
    """CALM's propagation costs the key / value projections, not the block: the MLP never runs."""
    a = adapt(lm)
    batch = padded_batch(a.num_outputs, "right")
    mlp_calls = []
    hooks = [m.mlp.register_forward_hook(lambda *_: mlp_calls.append(1)) for m in a.blocks]
    try:
        with torch.no_grad():
            cache = a.new_cache()
            state = a.embed({**batch, "past_key_values": cache})
            for layer in range(1, a.n_layers + 1):
                a.fill_cache(layer, state)
            assert mlp_calls == []
            assert a.cache_length(cache) == 9
            assert "update" not in vars(cache)  # the wrapper is gone after the call
            a.block(1, a.embed({**batch, "past_key_values": a.new_cache()}))
            assert len(mlp_calls) == 1  # the hook itself works
    finally:
        for h in hooks:
            h.remove()


def test_bad_inputs_raise_one_line_errors():
    from layertrace.errors import LayertraceError

    a = adapt(tiny_gpt2())
    with pytest.raises(LayertraceError, match="input_ids"):
        a.embed({"pixel_values": torch.zeros(1)})
    with pytest.raises(LayertraceError, match="attention_mask"):
        a.embed({"input_ids": torch.ones(2, 3, dtype=torch.long), "attention_mask": torch.ones(2, 4)})
    with pytest.raises(LayertraceError, match="blocks 1..3"):
        a.block(4, a.embed({"input_ids": torch.ones(2, 3, dtype=torch.long)}))
