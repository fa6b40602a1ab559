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
