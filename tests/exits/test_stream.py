"""The stream executor (run_early_exit_stream): pooling running samples across batches changes no
sample's exit layer or prediction, and the blocks really run on the pooled rows."""

from __future__ import annotations

import pytest
import torch

from layertrace.errors import LayertraceError
from layertrace.exits import layer_logits, run_early_exit_batches, simulate_exits
from layertrace.exits.executor import run_early_exit_stream
from layertrace.models.base import State

from .helpers import scores, thresholds_in_gaps
from .test_executor import tiny_bert, tiny_vit, token_batch, toy_setup  # noqa: F401  (fixtures)


def split_batches(batch: dict, sizes: list[int]) -> list[dict]:
    out, at = [], 0
    for n in sizes:
        out.append({k: v[at:at + n] for k, v in batch.items()})
        at += n
    return out


def assert_stream_agrees(adapter, batches, policy, thresholds, readout=None, **options) -> set:
    """Stream == batch-by-batch executor == simulation on every sample (exit layer, prediction) and the
    logits are the readout at the exit layer (float tolerance: other rows in a block / head call)."""
    logits, _ = layer_logits(adapter, batches, readout)
    sim_exits, sim_preds = simulate_exits(logits, policy, thresholds, layers=None if readout is None else
                                          getattr(readout, "exit_layers", None))
    spread = set()
    for i, thr in enumerate(thresholds):
        per_batch = run_early_exit_batches(adapter, batches, policy, thr, readout)
        stream = run_early_exit_stream(adapter, batches, policy, thr, readout, **options)
        assert stream.exit_layers.tolist() == per_batch.exit_layers.tolist() == sim_exits[i].tolist(), thr
        assert stream.predictions.tolist() == per_batch.predictions.tolist() == sim_preds[i].tolist(), thr
        torch.testing.assert_close(stream.logits, per_batch.logits, rtol=1e-5, atol=1e-5)
        spread |= set(stream.exit_layers.tolist())
    return spread


@pytest.mark.parametrize("options", [{}, {"window": 2}, {"chunk": 3}, {"window": 1}, {"window": 3, "chunk": 5}])
def test_toy_stream_equals_per_batch_and_simulation(options):
    adapter, batch = toy_setup(n=40, seed=1)  # padded rows inside batches of one token count
    batches = split_batches(batch, [8, 8, 11, 8, 5])
    logits, _ = layer_logits(adapter, batches)
    thresholds = thresholds_in_gaps(scores(logits[:-1], "confidence"), n=8) + [0.0, 1.01]
    assert len(assert_stream_agrees(adapter, batches, "confidence", thresholds, **options)) >= 4


@pytest.mark.parametrize("policy,thresholds", [("patience", [1, 2, 3, 4, 7]), ("fixed", [1, 3, 6]),
                                               ("entropy", None)])
def test_toy_stream_other_policies(policy, thresholds):
    adapter, batch = toy_setup(n=30, seed=2)
    batches = split_batches(batch, [10, 10, 10])
    if thresholds is None:
        logits, _ = layer_logits(adapter, batches)
        thresholds = thresholds_in_gaps(scores(logits[:-1], policy), n=6)
    assert_stream_agrees(adapter, batches, policy, thresholds, chunk=7)


def test_stream_pools_the_running_samples_into_full_chunks():
    """Block l runs on exactly the samples with exit layer >= l, of all batches of the window together,
    in ceil(running / chunk) calls; the readout sees the whole pool once per layer."""
    adapter, batch = toy_setup(n=40, seed=0)
    batches = split_batches(batch, [8] * 5)
    logits, _ = layer_logits(adapter, batches)
    thr = thresholds_in_gaps(scores(logits[:-1], "confidence"), n=3)[1]
    calls: list[tuple[int, int]] = []
    heads: list[tuple[int, int]] = []
    block, readout = adapter.block, adapter.readout

    def counting_block(layer, state):
        calls.append((layer, state.batch_size))
        return block(layer, state)

    def counting_readout(layer, h):
        heads.append((layer, h.shape[0]))
        return readout(h)

    adapter.block = counting_block
    try:
        result = run_early_exit_stream(adapter, batches, "confidence", thr, readout=counting_readout)
    finally:
        del adapter.block
    exits = result.exit_layers
    assert len(set(exits.tolist())) > 2
    for layer in range(1, int(exits.max()) + 1):
        running = int((exits >= layer).sum())
        sizes = [n for l, n in calls if l == layer]
        assert sum(sizes) == running and len(sizes) == -(-running // 8), (layer, sizes)
        assert [n for l, n in heads if l == layer] == [running]
    # batch by batch, the same exits cost more block calls (the stragglers of every batch run alone)
    per_batch_calls = sum(len({b for b in range(5) if (exits[8 * b:8 * b + 8] >= l).any()})
                          for l in range(1, adapter.n_layers + 1))
    assert len(calls) < per_batch_calls


def test_tiny_vit_stream_equals_per_batch_and_simulation(tiny_vit):  # noqa: F811
    adapter, batches = tiny_vit
    batches = batches + [batches[1], batches[0]]
    logits, _ = layer_logits(adapter, batches)
    thresholds = thresholds_in_gaps(scores(logits[:-1], "confidence"), n=8) + [1.01]
    assert len(assert_stream_agrees(adapter, batches, "confidence", thresholds, chunk=16)) >= 4


def test_tiny_bert_pools_only_same_padded_length(tiny_bert):  # noqa: F811
    """Text batches padded to different lengths are not padded further: each token count is its own
    pool (checked: no block call mixes two lengths), and the results match batch by batch."""
    adapter, batches = tiny_bert
    g = torch.Generator().manual_seed(7)
    short = token_batch(12, g)
    short = {k: (v[:, :6] if v.dim() == 2 else v) for k, v in short.items()}  # padded length 6, not 10
    short["attention_mask"][:, 3:] = torch.randint(0, 2, (12, 3), generator=g) * short["attention_mask"][:, 3:]
    mixed = [batches[0], short, batches[1], short]
    with torch.no_grad():
        a, b = adapter.embed(batches[0]), adapter.embed(short)
    assert not a.poolable(b) and a.poolable(adapter.embed(batches[1]))
    with pytest.raises(LayertraceError, match="poolable"):
        State.cat([a, b])
    lengths: list[int] = []
    block = adapter.block

    def spy(layer, state):
        lengths.append(int(state.hidden.shape[1]))
        return block(layer, state)

    logits, _ = layer_logits(adapter, mixed)
    thresholds = thresholds_in_gaps(scores(logits[:-1], "confidence"), n=8) + [1.01]
    adapter.block = spy
    try:
        assert len(assert_stream_agrees(adapter, mixed, "confidence", thresholds)) >= 3
    finally:
        del adapter.block
    assert set(lengths) == {6, 10}


def test_state_cat_and_split_round_trip():
    adapter, batch = toy_setup(n=20, seed=3)
    with torch.no_grad():
        states = [adapter.embed(b) for b in split_batches(batch, [5, 7, 8])]
    pooled = State.cat(states)
    assert pooled.batch_size == 20
    torch.testing.assert_close(pooled.per_sample["attention_mask"], batch["attention_mask"], rtol=0, atol=0)
    parts = pooled.split(5)
    assert [p.batch_size for p in parts] == [5, 5, 5, 5]
    assert parts[1].hidden.data_ptr() == pooled.hidden[5:].data_ptr()  # views, not copies
    assert torch.equal(torch.cat([p.hidden for p in parts]), pooled.hidden)


@pytest.mark.parametrize("keep", [[0, 1, 2, 9, 10, 19], [7, 8, 9, 10], [12], list(range(20))])
def test_gather_equals_concatenate_then_select(keep):
    """The stream's survivor gather (each kept row copied once, chunk by chunk) == concatenating the
    chunks and selecting, bitwise, for the hidden states and every per-sample tensor (an expanded
    4-D mask included), cut into the same chunks."""
    from layertrace.exits.executor import _gather

    g = torch.Generator().manual_seed(0)
    chunks = []
    for n in (8, 8, 4):
        mask = torch.randint(0, 2, (n, 6), generator=g).bool()
        chunks.append(State(hidden=torch.randn(n, 6, 3, generator=g),
                            per_sample={"mask": mask[:, None, None, :].expand(n, 1, 6, 6),
                                        "index": torch.randint(0, 6, (n,), generator=g)},
                            shared={"calls": []}))
    index = torch.tensor(keep)
    want = State.cat(chunks).select(index).split(8)
    got = _gather(chunks, index, 8)
    assert [c.batch_size for c in got] == [c.batch_size for c in want]
    for a, b in zip(got, want):
        assert torch.equal(a.hidden, b.hidden) and a.per_sample.keys() == b.per_sample.keys()
        assert all(torch.equal(a.per_sample[k], b.per_sample[k]) for k in b.per_sample)
        assert a.shared is chunks[0].shared


def test_stream_rejects_bad_window():
    adapter, batch = toy_setup(n=20)
    with pytest.raises(LayertraceError, match="window"):
        run_early_exit_stream(adapter, [batch], "confidence", 0.5, window=0)
    with pytest.raises(LayertraceError, match="no batches"):
        run_early_exit_stream(adapter, [], "confidence", 0.5)


def test_recorders_are_reused_and_the_real_blocks_put_back(tiny_vit):  # noqa: F811
    """embed() records every batch through cached recorders written straight into the block list's
    storage; afterwards the list holds the model's own blocks again, and the states still match the model."""
    from layertrace.models.recording import _RECORDERS

    adapter, batches = tiny_vit
    blocks = adapter._block_list
    originals = list(blocks)
    with torch.no_grad():
        adapter.embed(batches[0])
        first = list(_RECORDERS[id(blocks)])
        state = adapter.embed(batches[1])
        assert _RECORDERS[id(blocks)] == first and all(a is b for a, b in zip(blocks, originals))
        assert [c.module for c in state.shared["calls"]] == originals
        for layer in range(1, adapter.n_layers + 1):
            state = adapter.block(layer, state)
        torch.testing.assert_close(adapter.readout(adapter.features(state)), adapter.model_logits(batches[1]))


def test_poolable_compares_the_recorded_arguments(tiny_bert):  # noqa: F811
    """Two states of one token count pool only when their shared model arguments agree: the same
    placeholders, equal values, equal tensors, the same module objects."""
    import copy

    from layertrace.models.recording import _Ref

    adapter, batches = tiny_bert
    with torch.no_grad():
        a, b = adapter.embed(batches[0]), adapter.embed(batches[1])
    assert a.poolable(b)
    calls = [copy.copy(c) for c in b.shared["calls"]]
    changed = State(b.hidden, b.per_sample, {**b.shared, "calls": calls})
    calls[2].args = calls[2].args[:1] + (_Ref("arg9"),) + calls[2].args[2:]  # another per-sample tensor
    assert not a.poolable(changed)
    calls[2].args = b.shared["calls"][2].args
    assert a.poolable(changed)
    calls[3].kwargs = {**calls[3].kwargs, "extra": torch.ones(2)}
    assert not a.poolable(changed)
    a.shared["calls"][3].kwargs = {**a.shared["calls"][3].kwargs, "extra": torch.ones(2)}
    assert a.poolable(changed)  # equal tensors by value
    calls[4].module = copy.deepcopy(calls[4].module)
    assert not a.poolable(changed)
