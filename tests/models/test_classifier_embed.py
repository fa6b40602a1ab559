"""The replay-free classifier embed (HFAutoAdapter's ClassifierEmbed) against the replay of the model's forward.

For every encoder family of the tiny zoo (ViT, DeiT, DeiT with teacher, BERT, RoBERTa, ELECTRA with
its embedding projection, DistilBERT), eager and SDPA attention, and the demo's own ViT preset: the
directly built State (layer 0, every per-sample tensor: padding masks, pooling index) and the hidden
states after every block must be bitwise equal to the replay's, for a padded batch, a batch without
a mask and one whose mask is all ones (HF passes no mask then); a learned case must not replay
again; a case the direct path cannot build, or whose check disagrees, keeps the replay and says why.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from layertrace.exits import run_early_exit, run_early_exit_stream
from layertrace.models import adapt, load_model
from layertrace.models.classifier_embed import ClassifierEmbed

from .conftest import ATTN, FAMILIES, batch_for, build


def _variants(batch):
    """The batch as given, without its mask, and with an all-ones mask (text); vision: as given and batch 1."""
    if "attention_mask" not in batch:
        return [batch, {k: v[:1] for k, v in batch.items()}]
    return [batch, {k: v for k, v in batch.items() if k != "attention_mask"},
            {**batch, "attention_mask": torch.ones_like(batch["attention_mask"])}]


def _replayed(adapter, batch):
    adapter.fast_embed = False
    try:
        return adapter.embed(batch)
    finally:
        adapter.fast_embed = True


def _assert_same_run(adapter, fast, slow):
    """Bitwise equal layer 0, per-sample tensors and hidden states after every block."""
    assert fast.per_sample.keys() == slow.per_sample.keys()
    for key, value in slow.per_sample.items():
        assert fast.per_sample[key].dtype == value.dtype and torch.equal(fast.per_sample[key], value), key
    assert torch.equal(fast.hidden, slow.hidden)
    for layer in range(1, adapter.n_layers + 1):
        fast, slow = adapter.block(layer, fast), adapter.block(layer, slow)
        assert torch.equal(fast.hidden, slow.hidden), layer


def _count_replays(adapter, monkeypatch):
    counter = {"n": 0}
    record = adapter._record

    def counting(*args, **kwargs):
        counter["n"] += 1
        return record(*args, **kwargs)

    monkeypatch.setattr(adapter, "_record", counting)
    return counter


@pytest.mark.parametrize("attn", ATTN)
@pytest.mark.parametrize("family", FAMILIES + ["electra"])
@torch.no_grad()
def test_direct_embed_equals_replay(family, attn, monkeypatch):
    model, batch = build(family, attn)
    adapter = adapt(model)
    batch = {k: v for k, v in batch.items() if k != "labels"}
    replays = _count_replays(adapter, monkeypatch)
    for variant in _variants(batch):
        slow = _replayed(adapter, variant)
        adapter.embed(variant)  # learns the case (one traced replay) or finds it learned
        before = replays["n"]
        fast = adapter.embed(variant)
        assert replays["n"] == before, "a learned case replayed the forward"
        assert fast.shared["calls"] is adapter.embed(variant).shared["calls"]  # shared templates: cheap pooling
        _assert_same_run(adapter, fast, slow)
    assert adapter.embed_path() == "direct"


@torch.no_grad()
def test_direct_embed_demo_vit_and_new_batches():
    """The quick demo's ViT (vit-demo-12s): a case learned on one batch builds other batches of that case exactly."""
    adapter = adapt(load_model("vit-demo-12s").model.eval())
    g = torch.Generator().manual_seed(0)
    adapter.embed({"pixel_values": torch.randn(4, 1, 28, 28, generator=g)})  # learn
    for size in (4, 7):
        batch = {"pixel_values": torch.randn(size, 1, 28, 28, generator=g)}
        _assert_same_run(adapter, adapter.embed(batch), _replayed(adapter, batch))
    assert adapter.embed_path() == "direct"


@torch.no_grad()
def test_direct_embed_new_padding_pattern_same_case():
    """BERT: the mask of a new batch (other padding) is derived, not copied from the learned batch."""
    model, _ = build("bert", "sdpa")
    adapter = adapt(model)
    adapter.embed({k: v for k, v in batch_for("bert", seed=1).items() if k != "labels"})
    other = {k: v for k, v in batch_for("bert", seed=5).items() if k != "labels"}
    other["attention_mask"][0, 2:] = 0
    other["attention_mask"][5, 8:] = 0
    _assert_same_run(adapter, adapter.embed(other), _replayed(adapter, other))


@torch.no_grad()
def test_executor_outputs_unchanged_by_direct_embed():
    """The early-exit executors give the same exits and logits with the direct and the replayed embed."""
    model, _ = build("bert", "eager")
    adapter = adapt(model)
    batches = [{k: v for k, v in batch_for("bert", seed=s).items() if k != "labels"} for s in (1, 2, 3)]
    results = {}
    for fast in (True, False):
        adapter.fast_embed = fast
        results[fast] = (run_early_exit_stream(adapter, batches, "confidence", 0.4, window=3),
                         run_early_exit(adapter, batches[0], "confidence", 0.4))
    adapter.fast_embed = True
    for a, b in zip(results[True], results[False]):
        assert torch.equal(a.exit_layers, b.exit_layers) and torch.equal(a.logits, b.logits)


class _ScaledEmbeddings:
    """Stands in for ViT's ``embeddings`` module: its output times 1.0, a tensor no module returned."""

    def __init__(self, module: nn.Module):
        self.module = module

    def __getattr__(self, name):
        return getattr(self.module, name)

    def __call__(self, *args, **kwargs):
        return self.module(*args, **kwargs) * 1.0


@torch.no_grad()
def test_structural_refusal_keeps_replay():
    """A first-block input that no module outside the blocks produced: the case replays, and says why."""
    model, batch = build("vit", "sdpa")
    adapter = adapt(model)
    embeddings = model.vit._modules.pop("embeddings")
    model.vit.__dict__["embeddings"] = _ScaledEmbeddings(embeddings)
    adapter.__dict__.pop("_direct", None)  # forget the case learned by adapt()'s self-check
    b = {"pixel_values": batch["pixel_values"]}
    state = adapter.embed(b)
    assert adapter.embed_path() == "replay: the first block's input is not the output of a module outside the blocks"
    assert torch.equal(state.hidden, embeddings(b["pixel_values"]))
    _assert_same_run(adapter, adapter.embed(b), _replayed(adapter, b))


@torch.no_grad()
def test_disagreement_warns_and_keeps_replay(monkeypatch):
    """When the directly built state differs from the replay's, the case replays and a warning says so."""
    model, batch = build("bert", "sdpa")
    adapter = adapt(model)
    build_state = ClassifierEmbed._build

    def off_by_one(self, learned, inputs, keep):
        state = build_state(self, learned, inputs, keep)
        return state.replace(state.hidden + 1.0)

    monkeypatch.setattr(ClassifierEmbed, "_build", off_by_one)
    adapter.__dict__.pop("_direct", None)  # forget the cases learned by adapt()'s self-check
    b = {k: v for k, v in batch.items() if k != "labels"}
    with pytest.warns(UserWarning, match="disagrees with the replay"):
        state = adapter.embed(b)
    assert torch.equal(adapter.embed(b).hidden, state.hidden)  # replayed: not off by one
    assert torch.equal(state.hidden, _replayed(adapter, b).hidden)
    assert adapter.embed_path().startswith("replay") and "layer 0" in adapter.embed_path()


@torch.no_grad()
def test_training_mode_and_switch_replay(monkeypatch):
    model, batch = build("vit", "sdpa")
    adapter = adapt(model)
    b = {"pixel_values": batch["pixel_values"]}
    adapter.embed(b)
    replays = _count_replays(adapter, monkeypatch)
    adapter.fast_embed = False
    adapter.embed(b)
    assert replays["n"] == 1
    adapter.fast_embed = True
    model.train()
    adapter.embed(b)
    assert replays["n"] == 2  # training mode (dropout) always replays
    model.eval()
    adapter.embed(b)
    assert replays["n"] == 2
