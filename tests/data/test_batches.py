"""make_batches: tensors, normalization against a naive loop, determinism, epochs, augmentation, text."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from layertrace.data import ImageClassificationData, TextClassificationData, make_batches
from layertrace.errors import LayertraceError

from .helpers import asset_or_skip


@pytest.fixture
def images():
    rng = np.random.default_rng(0)
    return ImageClassificationData("t", "train", ["a", "b", "c"], rng.integers(0, 256, (23, 3, 4, 5), dtype=np.uint8),
                                   np.arange(23) % 3)


@pytest.fixture(scope="module")
def word_tokenizer():
    """A real fast tokenizer built in code (word level, [PAD]=0, [CLS]=1, [SEP]=2, [UNK]=3)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"[PAD]": 0, "[CLS]": 1, "[SEP]": 2, "[UNK]": 3}
    for w in "a good bad movie very long text that goes on and".split():
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 1), ("[SEP]", 2)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]",
                                   unk_token="[UNK]")


def test_image_batches_match_a_naive_loop(images):
    mean, std = [0.5, 0.4, 0.3], [0.2, 0.25, 0.3]
    batches = make_batches(images, 5, image_mean=mean, image_std=std)
    assert batches.num_batches == len(batches) == 5
    got = list(batches)
    assert [b["pixel_values"].shape[0] for b in got] == [5, 5, 5, 5, 3]
    pixels = torch.cat([b["pixel_values"] for b in got])
    labels = torch.cat([b["labels"] for b in got])
    assert pixels.dtype == torch.float32 and labels.dtype == torch.int64
    for n in range(len(images)):  # naive reference, one value at a time for a few positions
        for c in range(3):
            expected = (images.images[n, c, 1, 2] / 255.0 - mean[c]) / std[c]
            assert abs(float(pixels[n, c, 1, 2]) - expected) < 1e-6
    assert labels.tolist() == images.labels.tolist()
    plain = torch.cat([b["pixel_values"] for b in make_batches(images, 7)])
    assert float(plain.min()) >= 0 and float(plain.max()) <= 1
    assert torch.equal(plain, torch.from_numpy(images.images).float() / 255)


def test_shuffle_is_a_seeded_permutation_per_epoch(images):
    batches = make_batches(images, 4, shuffle=True, seed=3, drop_last=True)
    assert batches.num_batches == 5
    first = torch.cat([b["labels"] for b in batches])
    assert torch.equal(first, torch.cat([b["labels"] for b in batches]))  # re-iterable, same order
    order = batches.order()
    assert sorted(order.tolist()) == list(range(23))
    assert torch.equal(first, torch.from_numpy(images.labels[order[:20]]))
    batches.set_epoch(1)
    assert not np.array_equal(batches.order(), order)
    resumed = list(batches.epoch(1, start=2))
    assert len(resumed) == 3 and torch.equal(resumed[0]["pixel_values"], list(batches)[2]["pixel_values"])
    other = make_batches(images, 4, shuffle=True, seed=4)
    assert not np.array_equal(other.order(), order)


def test_augment_gets_a_deterministic_generator(images):
    def jitter(pixels, generator):
        return pixels + torch.rand(pixels.shape, generator=generator)

    a = [b["pixel_values"] for b in make_batches(images, 8, augment=jitter, seed=1)]
    b = [b["pixel_values"] for b in make_batches(images, 8, augment=jitter, seed=1)]
    c = [b["pixel_values"] for b in make_batches(images, 8, augment=jitter, seed=2)]
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    clean = [b["pixel_values"] for b in make_batches(images, 8)]
    noise = [x - y for x, y in zip(a, clean)]
    assert not torch.equal(a[0], c[0])  # another seed, other noise
    assert not torch.equal(noise[0], noise[1])  # each batch draws its own noise
    assert all(float(n.min()) >= 0 and float(n.max()) < 1 for n in noise)


def test_batch_option_errors(images):
    with pytest.raises(LayertraceError, match="batch_size"):
        make_batches(images, 0)
    with pytest.raises(LayertraceError, match="image_mean has 2 values"):
        make_batches(images, 2, image_mean=[0.1, 0.2])
    with pytest.raises(LayertraceError, match="image_std"):
        make_batches(images, 2, image_std=0.0)
    text = TextClassificationData("t", "train", ["x"], ["a"], np.array([0]))
    with pytest.raises(LayertraceError, match="needs tokenizer="):
        make_batches(text, 2)
    with pytest.raises(LayertraceError, match="ImageClassificationData or TextClassificationData"):
        make_batches([1, 2, 3], 2)


def test_text_batches_pad_to_the_longest_in_batch_and_truncate(word_tokenizer):
    texts = ["a good movie", "bad", "a very long text that goes on and on and on", "good"]
    ds = TextClassificationData("t", "train", ["neg", "pos"], texts, np.array([1, 0, 0, 1]))
    batches = list(make_batches(ds, 2, tokenizer=word_tokenizer, max_length=6))
    assert set(batches[0]) >= {"input_ids", "attention_mask", "labels"}
    assert batches[0]["input_ids"].shape == (2, 5)  # [CLS] a good movie [SEP]
    assert batches[0]["attention_mask"].tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]]
    assert batches[0]["input_ids"][1].tolist()[:3] == [1, word_tokenizer.convert_tokens_to_ids("bad"), 2]
    assert batches[1]["input_ids"].shape == (2, 6)  # truncated to max_length
    assert batches[1]["labels"].tolist() == [0, 1] and batches[1]["labels"].dtype == torch.int64


@pytest.mark.embedded
def test_text_batches_with_the_minilm_tokenizer():
    asset_or_skip("minilm-l6-v2")
    from transformers import AutoTokenizer

    from layertrace.data import minilm_checkpoint_dir

    tokenizer = AutoTokenizer.from_pretrained(str(minilm_checkpoint_dir()), local_files_only=True)
    ds = TextClassificationData("t", "train", ["rotten", "fresh"], ["A three-hour cinema master class.", "Dull."],
                                np.array([1, 0]))
    (batch,) = list(make_batches(ds, 2, tokenizer=tokenizer, max_length=64))
    assert batch["input_ids"][:, 0].tolist() == [tokenizer.cls_token_id] * 2
    assert "token_type_ids" in batch and batch["attention_mask"].sum(1).tolist()[1] < batch["input_ids"].shape[1]
