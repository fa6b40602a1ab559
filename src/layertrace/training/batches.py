"""Deterministic, resumable sources of training batches.

The loop asks a :class:`BatchSource` for ``epoch(e, start=k)``: the micro-batches of epoch ``e``
from the ``k``-th on. The order is a pure function of (seed, epoch), so a resumed run sees exactly
the batches an uninterrupted run would have seen, mid-epoch included, and every process of a
distributed run sees the same global batch (each then takes its own shard).
"""

from __future__ import annotations

from typing import Any, Iterator, Mapping, Protocol

import torch
from torch import Tensor

from ..errors import LayertraceError


class BatchSource(Protocol):
    """What the training loop iterates over.

    ``len(source)``: full micro-batches per epoch. ``source.epoch(e, start)``: dicts of tensors with
    a first dimension of the micro-batch size (incomplete last batches are not yielded).
    """

    def __len__(self) -> int: ...

    def epoch(self, epoch: int, start: int = 0) -> Iterator[dict[str, Any]]: ...


def trim_padding(batch: dict[str, Tensor]) -> dict[str, Tensor]:
    """Drop trailing token columns that are padding in every row (right padding assumed).

    Shorter sequences cost less; the result is what padding to the batch's longest gives.
    """
    mask = batch.get("attention_mask")
    if mask is None or mask.dim() != 2:
        return batch
    used = mask.any(dim=0).nonzero()
    keep = int(used.max()) + 1 if used.numel() else 1
    if keep == mask.shape[1]:
        return batch
    width = mask.shape[1]
    return {k: (v[:, :keep] if isinstance(v, Tensor) and v.dim() >= 2 and v.shape[1] == width and k != "pixel_values"
                else v) for k, v in batch.items()}


class TensorBatches:
    """Micro-batches drawn from in-memory tensors, reshuffled each epoch with a seeded generator.

    Args:
        data: ``{"input_ids": (N, T), "attention_mask": (N, T), "labels": (N,)}`` or
            ``{"pixel_values": (N, C, H, W), "labels": (N,)}`` (any tensors sharing dim 0).
        batch_size: samples per micro-batch (the global micro-batch of all processes).
        seed: order seed; epoch e uses the permutation of generator seed ``seed * 7919 + e``.
        shuffle: permute each epoch (else keep the order).
        trim: drop all-padding token columns per batch (see :func:`trim_padding`).
        group_by_length: text only (needs an ``attention_mask``): after the shuffle, sort each group of
            ``group_batches`` consecutive batches' worth of samples by length and cut it into batches,
            then shuffle the order of the batches. Batches hold sentences of similar length, so with
            :func:`trim_padding` far fewer padding tokens are computed (HF Trainer's
            ``group_by_length``); which samples share a batch changes, the set per epoch does not.
        group_batches: batches per length-sorted group (HF's megabatch multiplier, 50).
    """

    def __init__(self, data: Mapping[str, Tensor], batch_size: int, seed: int = 0, shuffle: bool = True,
                 trim: bool = True, group_by_length: bool = False, group_batches: int = 50):
        sizes = {k: int(v.shape[0]) for k, v in data.items()}
        if len(set(sizes.values())) != 1:
            raise LayertraceError(f"training tensors disagree on the number of samples: {sizes}")
        self.data = dict(data)
        self.n = next(iter(sizes.values()))
        if batch_size < 1 or batch_size > self.n:
            raise LayertraceError(f"batch size {batch_size} does not fit {self.n} training samples; lower train.batch_size")
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.shuffle = shuffle
        self.trim = trim
        self.lengths: Tensor | None = None
        if group_by_length:
            mask = self.data.get("attention_mask")
            if mask is None or mask.dim() != 2:
                raise LayertraceError(
                    "data.group_by_length needs text batches with an attention_mask (token sequences of "
                    "varying length); set data.group_by_length false for images or causal-LM blocks")
            if group_batches < 1:
                raise LayertraceError(f"group_batches={group_batches} must be >= 1")
            self.lengths = mask.sum(dim=1)
        self.group_batches = int(group_batches)

    def __len__(self) -> int:
        return self.n // self.batch_size

    def order(self, epoch: int) -> Tensor:
        """(N,) sample order of ``epoch``."""
        if not self.shuffle:
            return torch.arange(self.n)
        g = torch.Generator().manual_seed(self.seed * 7919 + int(epoch))
        perm = torch.randperm(self.n, generator=g)
        if self.lengths is None:
            return perm
        # Length grouping: the samples of the epoch's full batches, sorted by length within groups of
        # group_batches batches (stable, so ties keep the shuffled order), then whole batches shuffled
        # so that the length of consecutive batches (and of the learning-rate schedule's steps) is random.
        n_full = len(self) * self.batch_size
        group = self.group_batches * self.batch_size
        used = perm[:n_full]
        sorted_groups = [chunk[torch.argsort(self.lengths[chunk], descending=True, stable=True)]
                         for chunk in used.split(group)]
        batches = torch.cat(sorted_groups).view(len(self), self.batch_size)
        batches = batches[torch.randperm(len(self), generator=g)]
        return torch.cat([batches.flatten(), perm[n_full:]])

    def epoch(self, epoch: int, start: int = 0) -> Iterator[dict[str, Tensor]]:
        order = self.order(epoch)
        for i in range(start, len(self)):
            idx = order[i * self.batch_size:(i + 1) * self.batch_size]
            batch = {k: v[idx] for k, v in self.data.items()}
            yield trim_padding(batch) if self.trim else batch


def shard_batch(batch: Mapping[str, Any], rank: int, world_size: int) -> dict[str, Any]:
    """Process ``rank``'s contiguous share of a global micro-batch (dim 0 split in equal parts)."""
    if world_size == 1:
        return dict(batch)
    out = {}
    for key, value in batch.items():
        if isinstance(value, Tensor) and value.dim() > 0:
            b = value.shape[0]
            if b % world_size:
                raise LayertraceError(
                    f"micro-batch of {b} samples does not split over {world_size} processes; "
                    f"make train.batch_size / train.grad_accum a multiple of {world_size}"
                )
            part = b // world_size
            out[key] = value[rank * part:(rank + 1) * part]
        else:
            out[key] = value
    return out


def iterate_batches(source: BatchSource, data_epoch: int, data_index: int) -> Iterator[tuple[int, int, dict]]:
    """Yield ``(epoch, index_after, batch)`` forever, from position (``data_epoch``, ``data_index``).

    ``index_after`` is the position to resume from once this batch is consumed.
    """
    if len(source) == 0:
        raise LayertraceError("the training data yields no full batch; lower train.batch_size or add data")
    epoch, start = int(data_epoch), int(data_index)
    while True:
        if start >= len(source):
            epoch, start = epoch + 1, 0
        for offset, batch in enumerate(source.epoch(epoch, start)):
            yield epoch, start + offset + 1, batch
        epoch, start = epoch + 1, 0
