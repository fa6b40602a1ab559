"""Batch sources: seeded order per epoch, resuming mid-epoch, trimming padding, sharding."""

from __future__ import annotations

import itertools

import pytest
import torch

from layertrace.errors import LayertraceError
from layertrace.training.batches import TensorBatches, iterate_batches, shard_batch, trim_padding


def _data(n=20):
    ids = torch.arange(n * 6).reshape(n, 6)
    mask = torch.ones(n, 6, dtype=torch.long)
    mask[:, 4:] = 0  # the last two columns are padding everywhere
    return {"input_ids": ids, "attention_mask": mask, "labels": torch.arange(n) % 2}


def test_resuming_from_any_position_continues_the_same_stream():
    source = TensorBatches(_data(), 4, seed=3)  # 5 batches per epoch
    full = list(itertools.islice(iterate_batches(source, 0, 0), 13))
    for k in (1, 4, 5, 7):
        epoch, index, _ = full[k - 1]
        resumed = list(itertools.islice(iterate_batches(source, epoch, index), 13 - k))
        for (e1, i1, b1), (e2, i2, b2) in zip(full[k:], resumed):
            assert (e1, i1) == (e2, i2)
            assert torch.equal(b1["input_ids"], b2["input_ids"])
    epochs = [e for e, _, _ in full]
    assert epochs == [0] * 5 + [1] * 5 + [2] * 3
    first = torch.cat([b["labels"] for _, _, b in full[:5]])
    second = torch.cat([b["input_ids"][:, 0] for _, _, b in full[5:10]])
    assert sorted(second.tolist()) == sorted(torch.arange(20).mul(6).tolist())  # every sample once per epoch
    assert first.numel() == 20


def test_trim_padding_drops_all_padding_columns_only():
    batch = trim_padding(_data(3))
    assert batch["input_ids"].shape == (3, 4) and batch["attention_mask"].shape == (3, 4)
    assert batch["labels"].shape == (3,)


def test_shard_batch_splits_contiguously_and_checks_divisibility():
    batch = _data(8)
    parts = [shard_batch(batch, r, 2) for r in range(2)]
    assert torch.equal(torch.cat([p["input_ids"] for p in parts]), batch["input_ids"])
    with pytest.raises(LayertraceError, match="multiple of 3"):
        shard_batch(batch, 0, 3)


def _ragged(n=203, width=40, seed=0):
    """Right-padded token rows of random lengths 1..width; input_ids[:, 0] is the sample id."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, width + 1, (n,), generator=g)
    mask = (torch.arange(width)[None] < lengths[:, None]).long()
    ids = torch.arange(1, width + 1).repeat(n, 1) * mask
    ids[:, 0] = torch.arange(n)
    return {"input_ids": ids, "attention_mask": mask, "labels": torch.arange(n) % 3}


def _padded_tokens(source, epoch):
    return sum(b["input_ids"].numel() for b in source.epoch(epoch))


def test_group_by_length_keeps_the_epochs_samples_and_pads_less():
    data = _ragged()
    plain = TensorBatches(data, 8, seed=5)
    grouped = TensorBatches(data, 8, seed=5, group_by_length=True, group_batches=5)
    assert len(grouped) == len(plain) == 203 // 8
    for epoch in (0, 1):
        # the same samples take part in the epoch (the same leftover is dropped); only their batching changes
        ids_plain = sorted(torch.cat([b["input_ids"][:, 0] for b in plain.epoch(epoch)]).tolist())
        ids_grouped = torch.cat([b["input_ids"][:, 0] for b in grouped.epoch(epoch)]).tolist()
        assert sorted(ids_grouped) == ids_plain and len(set(ids_grouped)) == len(ids_grouped)
        assert torch.equal(grouped.order(epoch).sort().values, torch.arange(203))
        # within each group of 5 batches, the batches' lengths do not overlap (sorted, then cut)
        order = grouped.order(epoch)[:len(grouped) * 8].view(-1, 8)
        groups_of = {}
        perm = plain.order(epoch)[:len(plain) * 8]
        group_id = {int(s): i // 40 for i, s in enumerate(perm)}
        for row in order:
            gid = {group_id[int(s)] for s in row}
            assert len(gid) == 1  # a batch never mixes two groups
            lens = data["attention_mask"][row].sum(1)
            groups_of.setdefault(gid.pop(), []).append((int(lens.min()), int(lens.max())))
        for spans in groups_of.values():
            spans.sort()
            assert all(hi1 <= lo2 for (_, hi1), (lo2, _) in zip(spans, spans[1:]))
        assert _padded_tokens(grouped, epoch) < 0.8 * _padded_tokens(plain, epoch)
    # the order is a pure function of (seed, epoch): resuming mid-epoch continues the same stream
    full = list(itertools.islice(iterate_batches(grouped, 0, 0), 40))
    epoch, index, _ = full[29]
    resumed = list(itertools.islice(iterate_batches(grouped, epoch, index), 10))
    for (_, _, b1), (_, _, b2) in zip(full[30:], resumed):
        assert torch.equal(b1["input_ids"], b2["input_ids"])
    # batch lengths are shuffled across the epoch, not in decreasing runs
    widths = [b["input_ids"].shape[1] for b in grouped.epoch(0)]
    assert widths != sorted(widths, reverse=True)


def test_group_by_length_needs_token_batches():
    with pytest.raises(LayertraceError, match="group_by_length needs text batches"):
        TensorBatches({"pixel_values": torch.zeros(10, 1, 4, 4), "labels": torch.zeros(10)}, 2, group_by_length=True)
