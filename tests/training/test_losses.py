"""Losses: layer weights, aligned loss, layer-by-layer LM path, per-layer heads, cos-reg, alternation."""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st

from layertrace.errors import LayertraceError
from layertrace.models import adapt
from layertrace.training import (
    PerLayerHeads,
    aligned_loss,
    aligned_loss_layerwise,
    cosine_regularized_loss,
    layer_weights,
    weights_for_layers,
)
from layertrace.training.objective import TrainingObjective, uses_layerwise_loss

os.environ.setdefault("HF_HUB_OFFLINE", "1")


# ----------------------------------------------------------------------------- weights
@given(st.integers(1, 64))
def test_linear_weights_sum_to_one_and_match_formula(n):
    w = layer_weights("linear", n)
    assert len(w) == n
    assert sum(w) == pytest.approx(1.0, abs=1e-12)
    for l, value in enumerate(w, start=1):
        assert value == pytest.approx(2 * l / (n * (n + 1)), rel=1e-12)
    assert all(a < b for a, b in zip(w, w[1:]))  # increasing


@given(st.integers(1, 64))
def test_uniform_and_last_weights(n):
    assert layer_weights("uniform", n) == pytest.approx([1 / n] * n)
    assert layer_weights("last", n) == [0.0] * (n - 1) + [1.0]


@given(st.lists(st.floats(0, 10), min_size=1, max_size=12).filter(lambda v: sum(v) > 1e-3))
def test_user_list_is_normalised(values):
    w = layer_weights(values, len(values))
    assert sum(w) == pytest.approx(1.0)
    assert w == pytest.approx([v / sum(values) for v in values])


def test_weights_for_a_subset_of_layers():
    # linear over layers 2, 4, 6 of 6: proportional to l
    assert weights_for_layers("linear", 6, [2, 4, 6]) == pytest.approx([2 / 12, 4 / 12, 6 / 12])
    assert weights_for_layers("uniform", 6, [0, 3, 6]) == pytest.approx([1 / 3] * 3)
    assert weights_for_layers("last", 6, [1, 6]) == [0.0, 1.0]
    assert weights_for_layers([1, 1, 2], 6, [1, 2, 6]) == pytest.approx([0.25, 0.25, 0.5])


@pytest.mark.parametrize("bad", ["quadratic", [1, 2], [-1, 1, 1, 1], [0, 0, 0, 0]])
def test_bad_weights_raise_one_line_errors(bad):
    with pytest.raises(LayertraceError) as info:
        layer_weights(bad, 4)
    assert "\n" not in str(info.value)


# ----------------------------------------------------------------------------- aligned loss
def test_aligned_loss_with_last_only_weights_equals_plain_ce(toy_model, toy_batch):
    adapter = adapt(toy_model)
    trace = adapter.trace(toy_batch, layers="1:")
    weights = weights_for_layers("last", adapter.n_layers, trace.layers)
    out = aligned_loss(trace.logits, toy_batch["labels"], weights)
    plain = F.cross_entropy(toy_model(**{k: v for k, v in toy_batch.items() if k != "labels"}).logits,
                            toy_batch["labels"])
    torch.testing.assert_close(out.total, plain)
    # the (adapter, trace) form gives the same
    torch.testing.assert_close(aligned_loss((adapter, trace), toy_batch["labels"], weights).total, plain)


def test_aligned_loss_matches_a_naive_loop(toy_model, toy_batch):
    adapter = adapt(toy_model)
    trace = adapter.trace(toy_batch)  # layers 0..L
    w = weights_for_layers("uniform", adapter.n_layers, trace.layers)
    out = aligned_loss(trace.logits, toy_batch["labels"], w)
    naive = [F.cross_entropy(trace.logits[i], toy_batch["labels"]) for i in range(len(trace.layers))]
    torch.testing.assert_close(out.per_layer, torch.stack(naive))
    torch.testing.assert_close(out.total, sum(wi * ci for wi, ci in zip(w, naive)))


def _tiny_gpt2(vocab=97, layers=3, d=32):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_layer=layers, n_embd=d, n_head=4, n_positions=32, vocab_size=vocab,
                                       resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0))
    assert sum(p.numel() for p in model.parameters()) < 100_000
    return model


def _lm_batch(vocab=97, b=3, t=10):
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(0, vocab, (b, t), generator=g)
    mask = torch.ones(b, t, dtype=torch.long)
    mask[1, 7:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def test_stacked_and_layer_by_layer_lm_paths_agree_in_loss_and_gradients():
    from layertrace.training.losses import causal_lm_labels

    model = _tiny_gpt2()
    adapter = adapt(model)
    batch = _lm_batch()
    labels = causal_lm_labels(batch)
    layers = list(range(1, adapter.n_layers + 1))
    weights = weights_for_layers("linear", adapter.n_layers, layers)
    params = [p for p in model.parameters()]

    trace = adapter.trace(batch, layers=layers)
    stacked = aligned_loss(trace.logits, labels, weights)
    g_stacked = torch.autograd.grad(stacked.total, params, allow_unused=True)

    feats, _ = adapter.layer_features(batch, layers)
    layerwise = aligned_loss_layerwise(adapter, feats, labels, weights, use_checkpoint=True)
    g_layerwise = torch.autograd.grad(layerwise.total, params, allow_unused=True)

    torch.testing.assert_close(layerwise.total, stacked.total)
    torch.testing.assert_close(layerwise.per_layer, stacked.per_layer)
    for a, b in zip(g_stacked, g_layerwise):
        if a is None:
            assert b is None
        else:
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    # and the last layer alone is the model's own next-token loss
    ref = model(**batch, labels=labels).loss
    torch.testing.assert_close(stacked.per_layer[-1], ref)


def test_layer_by_layer_lm_loss_never_saves_vocab_sized_tensors():
    """With checkpointing, no (B, T, V) logits are kept for backward (only the recompute inputs)."""
    vocab = 997
    model = _tiny_gpt2(vocab=vocab)
    adapter = adapt(model)
    batch = _lm_batch(vocab=vocab)
    from layertrace.training.losses import causal_lm_labels

    labels = causal_lm_labels(batch)
    layers = [1, 2, 3]
    b, t = batch["input_ids"].shape
    saved: list[torch.Size] = []

    def pack(x):
        saved.append(x.shape)
        return x

    feats, _ = adapter.layer_features(batch, layers)  # the body is the same in both paths
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
        aligned_loss_layerwise(adapter, feats, labels, [1 / 3] * 3, use_checkpoint=True)
    big = [s for s in saved if s.numel() >= b * (t - 1) * vocab]
    assert big == [], f"layer-by-layer path saved vocabulary-sized tensors: {big}"
    saved.clear()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
        aligned_loss_layerwise(adapter, feats, labels, [1 / 3] * 3, use_checkpoint=False)
    assert len([s for s in saved if s.numel() >= b * (t - 1) * vocab]) >= len(layers)  # the check can fail


# ----------------------------------------------------------------------------- per-layer heads
def test_multi_head_with_heads_copied_from_the_shared_head_equals_aligned(toy_model, toy_batch):
    adapter = adapt(toy_model).train()
    layers = [1, 2, 3, 4]
    weights = weights_for_layers("linear", 4, layers)
    heads = PerLayerHeads(adapter, layers)
    assert heads.layers == [1, 2, 3]  # layer L reads through the shared head
    aligned = TrainingObjective(adapter, "aligned", layers, weights)
    multi = TrainingObjective(adapter, "multi-head", layers, weights, heads=heads)

    body = [p for n, p in toy_model.named_parameters() if not n.startswith(("norm.", "classifier."))]
    shared = list(adapter.head.parameters())
    a = aligned(toy_batch, step=2)
    ga = torch.autograd.grad(a.total, body + shared)
    m = multi(toy_batch, step=2)
    copies = [list(heads.heads[str(l)].parameters()) for l in heads.layers]
    gm = torch.autograd.grad(m.total, body + shared + [p for c in copies for p in c])
    torch.testing.assert_close(m.total, a.total)
    torch.testing.assert_close(m.per_layer, a.per_layer)
    n_body = len(body)
    for x, y in zip(ga[:n_body], gm[:n_body]):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-7)
    # the shared head's aligned gradient is split between the shared head and its copies
    n_shared = len(shared)
    for i in range(n_shared):
        total = gm[n_body + i] + sum(gm[n_body + n_shared + k * n_shared + i] for k in range(len(copies)))
        torch.testing.assert_close(total, ga[n_body + i], rtol=1e-5, atol=1e-7)
    assert heads.extra_parameters() == 3 * sum(p.numel() for p in adapter.head.parameters())


def test_per_layer_heads_train_apart_from_the_shared_head(toy_model, toy_batch):
    adapter = adapt(toy_model)
    heads = PerLayerHeads(adapter, [1, 2, 3, 4])
    with torch.no_grad():
        for p in heads.heads["1"].parameters():
            p.add_(1.0)
    h = adapter.layer_features(toy_batch, [1])[0][0]
    assert not torch.allclose(heads(1, h), adapter.readout(h))
    assert heads.head_for(4) is adapter.head


def test_save_and_load_heads_round_trip(tmp_path, toy_model, toy_batch):
    from layertrace.training import load_heads, save_heads

    adapter = adapt(toy_model)
    heads = PerLayerHeads(adapter, [1, 2, 3, 4])
    with torch.no_grad():
        for p in heads.parameters():
            p.mul_(1.5)
    save_heads(heads, tmp_path / "heads.safetensors")
    again = load_heads(tmp_path, adapter)
    h = adapter.layer_features(toy_batch, [2])[0][0]
    torch.testing.assert_close(again(2, h), heads(2, h))
    with pytest.raises(LayertraceError, match="multi-head"):
        load_heads(tmp_path / "nowhere", adapter)


# ----------------------------------------------------------------------------- cos-reg
def test_cosine_regularizer_matches_its_formula(toy_model, toy_batch):
    adapter = adapt(toy_model)
    layers = [1, 2, 3, 4]
    feats, _ = adapter.layer_features(toy_batch, layers)
    weights = weights_for_layers("linear", 4, layers)
    logits = adapter.readout(feats[-1])
    out = cosine_regularized_loss(logits, toy_batch["labels"], feats, feats[-1], weights, beta=0.7)
    ce = F.cross_entropy(logits, toy_batch["labels"])
    naive = sum(w * (1 - sum(F.cosine_similarity(feats[i][j], feats[-1][j], dim=0)
                             for j in range(8)) / 8) for i, w in enumerate(weights))
    torch.testing.assert_close(out.total, ce + 0.7 * naive)
    assert float(out.per_layer[-1].detach()) == pytest.approx(0.0, abs=1e-6)  # cos(h_L, h_L) = 1
    zero = cosine_regularized_loss(logits, toy_batch["labels"], feats, feats[-1], weights, beta=0.0)
    torch.testing.assert_close(zero.total, ce)


# ----------------------------------------------------------------------------- modes
@settings(max_examples=30)
@given(st.integers(1, 1000))
def test_alternating_alternates(step):
    assert uses_layerwise_loss("aligned-alternating", step) == (step % 2 == 0)
    assert uses_layerwise_loss("aligned", step)
    assert not uses_layerwise_loss("standard", step)
    assert uses_layerwise_loss("multi-head", step, alternate=True) == (step % 2 == 0)


def test_alternating_objective_gives_ce_on_odd_and_aligned_on_even_steps(toy_model, toy_batch):
    adapter = adapt(toy_model)
    layers = [1, 2, 3, 4]
    w = weights_for_layers("linear", 4, layers)
    alt = TrainingObjective(adapter, "aligned-alternating", layers, w)
    aligned = TrainingObjective(adapter, "aligned", layers, w)
    standard = TrainingObjective(adapter, "standard", layers, w)
    with torch.no_grad():
        for step in (1, 3, 5):
            torch.testing.assert_close(alt(toy_batch, step).total, standard(toy_batch, step).total)
        for step in (2, 4, 6):
            torch.testing.assert_close(alt(toy_batch, step).total, aligned(toy_batch, step).total)
        assert not torch.allclose(aligned(toy_batch, 1).total, standard(toy_batch, 1).total)


def test_unknown_mode_suggests_the_right_one(toy_model):
    with pytest.raises(LayertraceError, match="did you mean 'aligned'"):
        TrainingObjective(adapt(toy_model), "alinged", [4], [1.0])


# ----------------------------------------------------------------------------- self-distillation
def _naive_distilled_total(per_layer_logits, labels, weights, beta, lm=False):
    """sum_s w_s [(1 - beta) CE_s + beta KL(p_last || p_s)] below the last layer, w_last CE_last: written
    with torch's own cross_entropy / kl_div, position by position for an LM."""
    last = per_layer_logits[-1].detach()
    total = 0.0
    for s, logits in enumerate(per_layer_logits):
        if lm:  # position t predicts token t + 1; -100 is not scored
            rows = [(b, t) for b in range(labels.shape[0]) for t in range(labels.shape[1] - 1)
                    if labels[b, t + 1] != -100]
            student = torch.stack([logits[b, t] for b, t in rows])
            teacher = torch.stack([last[b, t] for b, t in rows])
            target = torch.stack([labels[b, t + 1] for b, t in rows])
        else:
            student, teacher, target = logits, last, labels
        ce = F.cross_entropy(student, target)
        if s < len(per_layer_logits) - 1:
            kl = F.kl_div(student.log_softmax(-1), teacher.log_softmax(-1), log_target=True, reduction="batchmean")
            total = total + weights[s] * ((1 - beta) * ce + beta * kl)
        else:
            total = total + weights[s] * ce
    return total


@pytest.mark.parametrize("beta", [0.25, 0.9])
def test_distilled_aligned_loss_matches_torch_kl_div(toy_model, toy_batch, beta):
    adapter = adapt(toy_model)
    trace = adapter.trace(toy_batch, layers="1:")
    w = weights_for_layers("linear", adapter.n_layers, trace.layers)
    out = aligned_loss(trace.logits, toy_batch["labels"], w, distill=beta)
    torch.testing.assert_close(out.total, _naive_distilled_total(trace.logits, toy_batch["labels"], w, beta))
    # per_layer stays the plain cross-entropy of each layer
    plain = aligned_loss(trace.logits, toy_batch["labels"], w)
    torch.testing.assert_close(out.per_layer, plain.per_layer)
    assert not torch.allclose(out.total, plain.total)


def test_distillation_sends_no_gradient_into_the_teacher(toy_model, toy_batch):
    adapter = adapt(toy_model)
    logits = adapter.trace(toy_batch, layers="1:").logits.detach().requires_grad_(True)
    labels = toy_batch["labels"]
    w = weights_for_layers("uniform", adapter.n_layers, list(range(1, adapter.n_layers + 1)))
    (g_distilled,) = torch.autograd.grad(aligned_loss(logits, labels, w, distill=0.5).total, logits)
    (g_last_ce,) = torch.autograd.grad(w[-1] * F.cross_entropy(logits[-1], labels), logits)
    torch.testing.assert_close(g_distilled[-1], g_last_ce[-1])  # the last layer only learns from the labels
    assert g_distilled[0].abs().sum() > 0


def test_distilled_lm_loss_stacked_and_layer_by_layer_agree_with_a_naive_loop():
    from layertrace.training.losses import causal_lm_labels

    model = _tiny_gpt2()
    adapter = adapt(model)
    batch = _lm_batch()
    labels = causal_lm_labels(batch)
    assert (labels == -100).any()  # padded positions are left out of the KL as of the CE
    layers = list(range(1, adapter.n_layers + 1))
    weights = weights_for_layers("linear", adapter.n_layers, layers)
    params = list(model.parameters())
    trace = adapter.trace(batch, layers=layers)
    stacked = aligned_loss(trace.logits, labels, weights, distill=0.5)
    torch.testing.assert_close(stacked.total, _naive_distilled_total(trace.logits, labels, weights, 0.5, lm=True))
    g_stacked = torch.autograd.grad(stacked.total, params, allow_unused=True)
    feats, _ = adapter.layer_features(batch, layers)
    for use_checkpoint in (True, False):
        layerwise = aligned_loss_layerwise(adapter, feats, labels, weights, use_checkpoint=use_checkpoint, distill=0.5)
        torch.testing.assert_close(layerwise.total, stacked.total)
        torch.testing.assert_close(layerwise.per_layer, stacked.per_layer)
        g_layerwise = torch.autograd.grad(layerwise.total, params, allow_unused=True, retain_graph=True)
        for a, b in zip(g_stacked, g_layerwise):
            assert (a is None) == (b is None)
            if a is not None:
                torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_training_objective_passes_distill_and_refuses_it_where_it_means_nothing(toy_model, toy_batch):
    adapter = adapt(toy_model)
    layers = list(range(1, adapter.n_layers + 1))
    w = weights_for_layers("linear", adapter.n_layers, layers)
    out = TrainingObjective(adapter, "aligned", layers, w, distill=0.5)(toy_batch)
    trace = adapter.trace(toy_batch, layers=layers)
    torch.testing.assert_close(out.total, aligned_loss(trace.logits, toy_batch["labels"], w, distill=0.5).total)
    with pytest.raises(LayertraceError, match="distill=0.5 applies to the aligned and multi-head losses"):
        TrainingObjective(adapter, "cos-reg", layers, w, distill=0.5)
    for bad in (1.0, -0.1):
        with pytest.raises(LayertraceError, match=r"must be in \[0, 1\)"):
            aligned_loss(trace.logits, toy_batch["labels"], w, distill=bad)


def test_distill_kl_scores_exactly_the_positions_the_cross_entropy_scores():
    from layertrace.training import distill_kl

    g = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(3, 6, 11, generator=g) * 3, torch.randn(3, 6, 11, generator=g) * 3
    labels = torch.randint(0, 11, (3, 6), generator=g)
    labels[0, 4:] = -100
    labels[2, 1] = -100
    rows = [(b, t) for b in range(3) for t in range(5) if labels[b, t + 1] != -100]
    naive = F.kl_div(torch.stack([student[b, t] for b, t in rows]).log_softmax(-1),
                     torch.stack([teacher[b, t] for b, t in rows]).log_softmax(-1), log_target=True,
                     reduction="batchmean")
    torch.testing.assert_close(distill_kl(student, teacher.log_softmax(-1), labels), naive)
    # a classifier: every sample
    torch.testing.assert_close(distill_kl(student[:, 0], teacher[:, 0].log_softmax(-1), labels[:, 0]),
                               F.kl_div(student[:, 0].log_softmax(-1), teacher[:, 0].log_softmax(-1),
                                        log_target=True, reduction="batchmean"))
