"""The runtime executor: exact agreement with the simulation, real dropping of finished samples."""

from __future__ import annotations

import pytest
import torch

from layertrace.errors import LayertraceError
from layertrace.exits import layer_logits, run_early_exit, run_early_exit_batches, simulate_exits
from layertrace.models import ToyAdapter, ToyConfig, ToyTransformerClassifier

from .helpers import scores, thresholds_in_gaps


def toy_setup(n_layers: int = 6, n: int = 24, seed: int = 0):
    torch.manual_seed(seed)
    model = ToyTransformerClassifier(ToyConfig(n_layers=n_layers)).eval()
    g = torch.Generator().manual_seed(seed + 1)
    ids = torch.randint(2, 64, (n, 12), generator=g)
    ids[:, 0] = 1
    mask = torch.ones(n, 12, dtype=torch.long)
    for row, length in [(3, 7), (5, 4), (9, 2), (17, 10)]:  # padded samples
        mask[row, length:] = 0
    ids[mask == 0] = 0
    batch = {"input_ids": ids, "attention_mask": mask, "labels": torch.randint(0, 3, (n,), generator=g)}
    return ToyAdapter(model), batch


def assert_runtime_equals_simulation(adapter, batches, policy, thresholds, readout=None):
    logits, _ = layer_logits(adapter, batches, readout)
    sim_exits, sim_preds = simulate_exits(logits, policy, thresholds)
    spread = set()
    for i, thr in enumerate(thresholds):
        result = run_early_exit_batches(adapter, batches, policy, thr, readout)
        assert result.exit_layers.tolist() == sim_exits[i].tolist(), f"threshold {thr}"
        assert result.predictions.tolist() == sim_preds[i].tolist(), f"threshold {thr}"
        # the logits returned are the readout at the exit layer
        picked = logits[result.exit_layers - 1, torch.arange(logits.shape[1])]
        torch.testing.assert_close(result.logits, picked, rtol=1e-5, atol=1e-5)
        spread |= set(result.exit_layers.tolist())
    return spread


def test_threshold_above_one_is_the_full_model(toy_batch, toy_model):
    adapter = ToyAdapter(toy_model)
    result = run_early_exit(adapter, toy_batch, "confidence", 1.01)
    assert (result.exit_layers == adapter.n_layers).all()
    with torch.no_grad():
        assert torch.equal(result.logits, adapter(toy_batch))                       # same computation, bitwise
        torch.testing.assert_close(result.logits, toy_model(toy_batch["input_ids"], toy_batch["attention_mask"]).logits)
        assert torch.equal(result.predictions, adapter.model_logits(toy_batch).argmax(-1))


def test_threshold_zero_exits_at_layer_one(toy_batch, toy_model):
    adapter = ToyAdapter(toy_model)
    result = run_early_exit(adapter, toy_batch, "confidence", 0.0)
    assert (result.exit_layers == 1).all()
    with torch.no_grad():
        assert torch.equal(result.logits, adapter(toy_batch, upto=1))


@pytest.mark.parametrize("policy", ["confidence", "entropy"])
def test_toy_runtime_equals_simulation_with_padding(policy):
    adapter, batch = toy_setup()
    logits, _ = layer_logits(adapter, [batch])
    thresholds = thresholds_in_gaps(scores(logits[:-1], policy), n=8)
    spread = assert_runtime_equals_simulation(adapter, [batch], policy, thresholds)
    assert len(spread) >= 4  # the thresholds really spread exits over the layers


@pytest.mark.parametrize("policy,thresholds", [("patience", [1, 2, 3, 4, 7]), ("fixed", [1, 3, 6])])
def test_toy_runtime_equals_simulation_integer_policies(policy, thresholds):
    adapter, batch = toy_setup(seed=2)
    assert_runtime_equals_simulation(adapter, [batch, {k: v[:5] for k, v in batch.items()}], policy, thresholds)


def test_finished_samples_are_dropped():
    """Block l and readout l run on exactly the samples whose exit layer is >= l."""
    adapter, batch = toy_setup()
    logits, _ = layer_logits(adapter, [batch])
    thr = thresholds_in_gaps(scores(logits[:-1], "confidence"), n=3)[1]
    seen_block, seen_head = [], []
    block, readout = adapter.block, adapter.readout

    def counting_block(layer, state):
        seen_block.append((layer, state.batch_size, tuple(state.per_sample["attention_mask"].shape)))
        return block(layer, state)

    def counting_readout(layer, h):
        seen_head.append((layer, h.shape[0]))
        return readout(h)

    adapter.block = counting_block  # instance attribute shadows the method
    try:
        result = run_early_exit(adapter, batch, "confidence", thr, readout=counting_readout)
    finally:
        del adapter.block
    exits = result.exit_layers
    assert 1 < len(set(exits.tolist()))
    for layer, size, mask_shape in seen_block:
        assert size == int((exits >= layer).sum()) and mask_shape == (size, 12)
    assert [s for _, s in seen_head] == [s for _, s, _ in seen_block]
    assert max(layer for layer, _, _ in seen_block) == int(exits.max())


def test_per_layer_heads_runtime_equals_simulation():
    import layertrace.training.heads as heads_mod
    adapter, batch = toy_setup(seed=3)
    heads = heads_mod.PerLayerHeads(adapter, range(1, adapter.n_layers + 1))
    torch.manual_seed(5)
    with torch.no_grad():
        for p in heads.heads.parameters():
            p.add_(torch.randn_like(p) * 0.5)  # distinct heads, so the readout really differs per layer
    logits, _ = layer_logits(adapter, [batch], readout=heads)
    shared, _ = layer_logits(adapter, [batch])
    assert not torch.allclose(logits[0], shared[0]) and torch.equal(logits[-1], shared[-1])
    thresholds = thresholds_in_gaps(scores(logits[:-1], "confidence"), n=6)
    assert len(assert_runtime_equals_simulation(adapter, [batch], "confidence", thresholds, readout=heads)) >= 3


def test_executor_refuses_oracle_and_lms(toy_batch, toy_model):
    with pytest.raises(LayertraceError, match="not causal"):
        run_early_exit(ToyAdapter(toy_model), toy_batch, "oracle", 0.5)
    adapter = ToyAdapter(toy_model)
    adapter.kind = "causal_lm"
    with pytest.raises(LayertraceError, match="classifiers"):
        run_early_exit(adapter, toy_batch, "confidence", 0.5)


@pytest.fixture(scope="module")
def tiny_vit():
    """A 5-block ViT (d=32), random init with a wide initializer range so that confidences vary across
    samples and layers (with the default 0.02 layer 1 is the most confident layer of every sample)."""
    import transformers
    from layertrace.models import adapt

    torch.manual_seed(0)
    cfg = transformers.ViTConfig(image_size=16, patch_size=4, num_channels=1, hidden_size=32, num_hidden_layers=5,
                                 num_attention_heads=4, intermediate_size=64, num_labels=4, initializer_range=0.2)
    model = transformers.ViTForImageClassification(cfg).eval()
    g = torch.Generator().manual_seed(0)
    return adapt(model), [{"pixel_values": torch.randn(n, 1, 16, 16, generator=g)} for n in (16, 7)]


def test_tiny_vit_runtime_equals_simulation(tiny_vit):
    adapter, batches = tiny_vit
    logits, _ = layer_logits(adapter, batches)
    thresholds = thresholds_in_gaps(scores(logits[:-1], "confidence"), n=10) + [1.01, 0.0]
    spread = assert_runtime_equals_simulation(adapter, batches, "confidence", thresholds)
    assert len(spread) >= 4
    full = run_early_exit(adapter, batches[0], "confidence", 1.01)
    with torch.no_grad():
        torch.testing.assert_close(full.logits, adapter.model_logits(batches[0]))


def token_batch(n: int, g: torch.Generator) -> dict:
    """Padded token sequences whose label is the id of the token after [CLS] modulo 3."""
    ids = torch.randint(5, 100, (n, 10), generator=g)
    ids[:, 0] = 2
    lengths = torch.randint(3, 11, (n,), generator=g)
    mask = (torch.arange(10)[None, :] < lengths[:, None]).long()
    ids[mask == 0] = 0
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids),
            "labels": ids[:, 1] % 3}


@pytest.fixture(scope="module")
def tiny_bert():
    """A 5-block BERT (d=32), random init with a wide initializer range so that confidences vary
    across samples and layers (the default 0.02 gives near-identical outputs); batches with padding."""
    import transformers
    from layertrace.models import adapt

    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=5, num_attention_heads=4,
                                  intermediate_size=64, max_position_embeddings=32, num_labels=3,
                                  initializer_range=0.2)
    model = transformers.BertForSequenceClassification(cfg).eval()
    g = torch.Generator().manual_seed(0)
    return adapt(model), [token_batch(20, g), token_batch(9, g)]


def test_tiny_bert_runtime_equals_simulation_with_padding(tiny_bert):
    adapter, batches = tiny_bert
    assert (batches[0]["attention_mask"] == 0).any()
    logits, _ = layer_logits(adapter, batches)
    thresholds = thresholds_in_gaps(scores(logits[:-1], "confidence"), n=10) + [1.01, 0.0]
    assert len(assert_runtime_equals_simulation(adapter, batches, "confidence", thresholds)) >= 4
    full = run_early_exit(adapter, batches[0], "confidence", 1.01)
    with torch.no_grad():
        torch.testing.assert_close(full.logits, adapter.model_logits(batches[0]))


def test_heads_on_some_layers_exit_only_there():
    import layertrace.training.heads as heads_mod
    adapter, batch = toy_setup(seed=4)
    heads = heads_mod.PerLayerHeads(adapter, [2, 4])
    torch.manual_seed(6)
    with torch.no_grad():
        for p in heads.heads.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    from layertrace.exits.executor import readout_layers

    assert readout_layers(adapter, heads) == [2, 4, 6]
    logits, _ = layer_logits(adapter, [batch], readout=heads)
    assert logits.shape[0] == 3
    called = []

    def spy(layer, h):
        called.append(layer)
        return heads(layer, h)

    spy.layers = heads.layers
    thresholds = thresholds_in_gaps(scores(logits[:-1], "confidence"), n=5)
    exits, preds = simulate_exits(logits, "confidence", thresholds, layers=[2, 4, 6])
    for i, thr in enumerate(thresholds):
        result = run_early_exit(adapter, batch, "confidence", thr, readout=spy)
        assert result.exit_layers.tolist() == exits[i].tolist()
        assert result.predictions.tolist() == preds[i].tolist()
        assert set(result.exit_layers.tolist()) <= {2, 4, 6}
    assert set(called) <= {2, 4, 6}
    fixed = run_early_exit(adapter, batch, "fixed", 3, readout=spy)
    assert (fixed.exit_layers == 4).all()  # the first head at or after layer 3
    assert simulate_exits(logits, "fixed", [3], layers=[2, 4, 6])[0].unique().tolist() == [4]


def test_tiny_deit_with_two_token_head_runtime_equals_simulation():
    import transformers
    from layertrace.models import adapt

    torch.manual_seed(0)
    cfg = transformers.DeiTConfig(image_size=16, patch_size=4, num_channels=1, hidden_size=32, num_hidden_layers=4,
                                  num_attention_heads=4, intermediate_size=64, num_labels=4, initializer_range=0.2)
    adapter = adapt(transformers.DeiTForImageClassificationWithTeacher(cfg).eval())
    batches = [{"pixel_values": torch.randn(20, 1, 16, 16, generator=torch.Generator().manual_seed(3))}]
    logits, _ = layer_logits(adapter, batches)
    thresholds = thresholds_in_gaps(scores(logits[:-1], "confidence"), n=8) + [1.01]
    assert len(assert_runtime_equals_simulation(adapter, batches, "confidence", thresholds)) >= 3
    full = run_early_exit(adapter, batches[0], "confidence", 1.01)
    with torch.no_grad():
        torch.testing.assert_close(full.logits, adapter.model_logits(batches[0]))


@pytest.mark.parametrize("policy,threshold", [("confidence", 1.01), ("entropy", -0.5), ("patience", 9)])
def test_a_threshold_that_cannot_fire_runs_the_plain_full_model(policy, threshold):
    """Nothing can leave before L: no readout before L, the full model's logits bit for bit, and the
    simulation agrees (everyone at L)."""
    adapter, batch = toy_setup(seed=5)
    called = []

    def spy(layer, h):
        called.append((layer, h.shape[0]))
        return adapter.readout(h)

    result = run_early_exit(adapter, batch, policy, threshold, readout=spy)
    n = batch["input_ids"].shape[0]
    assert called == [(adapter.n_layers, n)]
    assert (result.exit_layers == adapter.n_layers).all()
    with torch.no_grad():
        assert torch.equal(result.logits, adapter(batch))
    assert_runtime_equals_simulation(adapter, [batch], policy, [threshold])


def test_patience_reads_every_layer_but_exits_from_layer_k():
    """A stateful rule needs every layer's prediction (its carry) even before it may fire."""
    adapter, batch = toy_setup(seed=6)
    called = []

    def spy(layer, h):
        called.append(layer)
        return adapter.readout(h)

    result = run_early_exit(adapter, batch, "patience", 3, readout=spy)
    assert called[:3] == [1, 2, 3] and int(result.exit_layers.min()) >= 3
    assert_runtime_equals_simulation(adapter, [batch], "patience", [3])
