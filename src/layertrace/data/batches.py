"""Mini-batches of torch tensors from a dataset: :func:`make_batches`.

Image batches: ``{"pixel_values": float32 (B, C, H, W), "labels": int64 (B,)}``, pixels scaled to
[0, 1] then normalized by ``image_mean`` / ``image_std`` when given. Text batches: the tokenizer's
output for the batch's texts (padding to the longest in the batch, truncation to ``max_length``)
plus ``"labels"``. The object is re-iterable and deterministic: the same seed (and epoch) gives the
same order and the same augmentation randomness.
"""

from __future__ import annotations

import math
from typing import Callable, Iterator, Sequence

import numpy as np
import torch

from ..errors import LayertraceError
from .base import ImageClassificationData, TextClassificationData


def _per_channel(value, channels: int, what: str) -> torch.Tensor | None:
    """A mean/std option as a (1, C, 1, 1) float32 tensor (a scalar is used for every channel)."""
    if value is None:
        return None
    t = torch.as_tensor(value, dtype=torch.float32).flatten()
    if t.numel() == 1:
        t = t.expand(channels)
    if t.numel() != channels:
        raise LayertraceError(f"{what} has {t.numel()} values but the images have {channels} channel(s)")
    if what == "image_std" and bool((t <= 0).any()):
        raise LayertraceError(f"image_std={value!r} must be positive")
    return t.reshape(1, channels, 1, 1).clone()


class Batches:
    """A re-iterable sequence of batch dicts over a dataset (see :func:`make_batches`).

    ``len(batches) == batches.num_batches``. Iterating gives the batches of the current epoch (0
    unless ``set_epoch(e)`` was called); ``epoch(e, start=k)`` gives those of epoch ``e`` from the
    k-th batch on. Order = permutation seeded by (seed, epoch); the augmentation generator of batch
    b is seeded by (seed, epoch, b).
    """

    def __init__(self, dataset, batch_size: int, *, shuffle: bool = False, seed: int = 0, tokenizer=None,
                 max_length: int = 128, image_mean=None, image_std=None,
                 augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None,
                 drop_last: bool = False):
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size <= 0:
            raise LayertraceError(f"batch_size={batch_size!r} must be a positive integer")
        self.dataset = dataset
        self.batch_size = int(batch_size)
        self.shuffle = bool(shuffle)
        self.seed = int(seed)
        self.epoch_number = 0
        self.drop_last = bool(drop_last)
        self.augment = augment
        if isinstance(dataset, ImageClassificationData):
            self.kind = "image"
            self.mean = _per_channel(image_mean, dataset.channels, "image_mean")
            self.std = _per_channel(image_std, dataset.channels, "image_std")
        elif isinstance(dataset, TextClassificationData):
            self.kind = "text"
            if tokenizer is None:
                raise LayertraceError(
                    f"text dataset {dataset.name!r} needs tokenizer= (e.g. AutoTokenizer.from_pretrained(dir))"
                )
            if augment is not None or image_mean is not None or image_std is not None:
                raise LayertraceError("augment / image_mean / image_std apply to image datasets only")
            self.tokenizer = tokenizer
            self.max_length = int(max_length)
        else:
            raise LayertraceError(
                f"make_batches needs an ImageClassificationData or TextClassificationData, got {type(dataset).__name__}"
            )

    @property
    def num_batches(self) -> int:
        n = len(self.dataset)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __len__(self) -> int:
        return self.num_batches

    def set_epoch(self, epoch: int) -> None:
        """Use the shuffle order / augmentation randomness of ``epoch`` on the next iterations."""
        self.epoch_number = int(epoch)

    def order(self, epoch: int | None = None) -> np.ndarray:
        """Example indices in iteration order for ``epoch`` (default: the current one), int64 (N,)."""
        n = len(self.dataset)
        if not self.shuffle:
            return np.arange(n, dtype=np.int64)
        epoch = self.epoch_number if epoch is None else int(epoch)
        return np.random.default_rng([self.seed, epoch]).permutation(n).astype(np.int64)

    def _image_batch(self, index: np.ndarray, epoch: int, batch_no: int) -> dict[str, torch.Tensor]:
        pixels = torch.from_numpy(self.dataset.images[index]).to(torch.float32).div_(255.0)
        if self.mean is not None:
            pixels = pixels - self.mean
        if self.std is not None:
            pixels = pixels / self.std
        if self.augment is not None:
            generator = torch.Generator().manual_seed(
                int(np.random.SeedSequence([self.seed, epoch, batch_no]).generate_state(1)[0]))
            pixels = self.augment(pixels, generator)
        return {"pixel_values": pixels, "labels": torch.from_numpy(self.dataset.labels[index].copy())}

    def _text_batch(self, index: np.ndarray) -> dict[str, torch.Tensor]:
        texts: Sequence[str] = [self.dataset.texts[i] for i in index]
        encoded = self.tokenizer(list(texts), padding=True, truncation=True, max_length=self.max_length,
                                 return_tensors="pt")
        batch = {k: v for k, v in dict(encoded).items() if isinstance(v, torch.Tensor)}
        batch["labels"] = torch.from_numpy(self.dataset.labels[index].copy())
        return batch

    def epoch(self, epoch: int, start: int = 0) -> Iterator[dict[str, torch.Tensor]]:
        """The batches of ``epoch`` from the ``start``-th on (a pure function of (seed, epoch), so a
        resumed run sees exactly the batches an uninterrupted one would)."""
        order = self.order(epoch)
        for b in range(int(start), self.num_batches):
            index = order[b * self.batch_size:(b + 1) * self.batch_size]
            yield self._image_batch(index, epoch, b) if self.kind == "image" else self._text_batch(index)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        return self.epoch(self.epoch_number)


def make_batches(dataset, batch_size: int, *, shuffle: bool = False, seed: int = 0, tokenizer=None,
                 max_length: int = 128, image_mean=None, image_std=None, augment=None,
                 drop_last: bool = False) -> Batches:
    """Batches of ``dataset`` as dicts of tensors (re-iterable, deterministic; ``.num_batches``).

    Images -> ``{"pixel_values": float32 (B, C, H, W), "labels": int64 (B,)}``: uint8 / 255, then
    ``(x - image_mean) / image_std`` per channel if given (scalar or one value per channel), then
    ``augment(pixel_values, generator)`` if given (the generator is seeded by (seed, epoch, batch)).
    Texts -> ``tokenizer(texts, padding=True, truncation=True, max_length=max_length)`` tensors
    (``input_ids``, ``attention_mask``[, ``token_type_ids``]) plus ``"labels"``.
    shuffle: a permutation seeded by (seed, epoch) (see ``Batches.set_epoch``); else dataset order.
    drop_last: drop the final short batch.
    """
    return Batches(dataset, batch_size, shuffle=shuffle, seed=seed, tokenizer=tokenizer, max_length=max_length,
                   image_mean=image_mean, image_std=image_std, augment=augment, drop_last=drop_last)
