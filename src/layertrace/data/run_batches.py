"""The data of one run as the batches its model takes (what ``analyze``, ``probe`` and ``exit`` feed it).

* :func:`input_batches`: a classification split tokenised with the model's tokenizer, or its images
  normalised with the model's preprocessing (``preprocess.json``: ``modality``, ``image_mean`` /
  ``image_std``), re-iterable (:func:`~layertrace.data.batches.make_batches`);
* :func:`corpus_batches`: a text corpus cut into blocks of consecutive tokens for a causal LM
  (:func:`~layertrace.data.corpus.token_blocks`: documents joined by eos, no padding).

The model itself is loaded in ``layertrace.analysis.run.load_for_analysis`` (models/ is rank 2, above
data/), which checks model and data against each other and calls these with the model's tokenizer and
preprocessing.
"""

from __future__ import annotations

from typing import Any, Iterator, Mapping

import numpy as np
import torch

from ..errors import LayertraceError


class TokenBlockBatches:
    """Re-iterable causal-LM batches ``{"input_ids", "attention_mask"}`` (B, T) of consecutive token blocks.

    Args:
        blocks: (n, T) int token ids, one block a row.
        batch_size: B (the last batch may be smaller).
    """

    def __init__(self, blocks: np.ndarray, batch_size: int):
        self.blocks = blocks
        self.batch_size = batch_size

    def __len__(self) -> int:
        return -(-len(self.blocks) // self.batch_size)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        for start in range(0, len(self.blocks), self.batch_size):
            ids = torch.from_numpy(self.blocks[start:start + self.batch_size].copy())
            yield {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def corpus_batches(tokenizer: Any, source: str, split: str, block: int, batch_size: int, *, seed: int = 0,
                   max_blocks: int | None = None, name: str | None = None, **loader_kwargs: Any) -> TokenBlockBatches:
    """A text corpus (``load_text_corpus(source, split)``) as :class:`TokenBlockBatches` of ``block`` tokens.

    Args:
        tokenizer: the model's tokenizer (callable text -> ``{"input_ids": [...]}``).
        source, split, seed, loader_kwargs: as :func:`~layertrace.data.corpus.load_text_corpus` takes them.
        block: T, tokens per block; ``max_blocks``: keep at most this many blocks.
        name: the corpus as the user named it, for the error message (default ``source``).
    """
    from .corpus import load_text_corpus, token_blocks

    docs = load_text_corpus(source, split, seed=seed, **loader_kwargs)
    blocks = token_blocks(tokenizer, docs, block, max_blocks=max_blocks)
    if len(blocks) == 0:
        raise LayertraceError(f"corpus {name or source!r} split {split!r} gives no block of {block} tokens; "
                              f"lower --max_length or use a larger split")
    return TokenBlockBatches(blocks, batch_size)


def input_batches(dataset: Any, batch_size: int, *, tokenizer: Any = None, preprocess: Mapping[str, Any] | None = None,
                  max_length: int = 128, model: str = "the model", data: str = "the dataset") -> Any:
    """Re-iterable batches of a classification ``dataset`` in the form a model takes.

    Args:
        dataset: :class:`~layertrace.data.base.TextClassificationData` or ``ImageClassificationData``.
        tokenizer: the model's tokenizer (text data); ``preprocess``: the model's ``preprocess.json``
            (``modality``, ``image_mean``, ``image_std``).
        max_length: text truncation length; ``model`` / ``data``: names for the error messages.
    Returns:
        :class:`~layertrace.data.batches.Batches` (text: the tokenizer's output + ``labels``; images:
        ``pixel_values`` (B, C, H, W) + ``labels``). Raises on a text / image mismatch.
    """
    from .batches import make_batches

    pre = preprocess or {}
    modality = pre.get("modality")
    is_text = hasattr(dataset, "texts")
    if modality and modality != ("text" if is_text else "image"):
        raise LayertraceError(f"model {model!r} takes {modality} inputs but dataset {data!r} is "
                              f"{'text' if is_text else 'images'}; pick a matching model and dataset")
    if is_text:
        if tokenizer is None:
            raise LayertraceError(f"model {model!r} has no tokenizer; save one in its folder to analyse text")
        return make_batches(dataset, batch_size, tokenizer=tokenizer, max_length=max_length)
    return make_batches(dataset, batch_size, image_mean=pre.get("image_mean"), image_std=pre.get("image_std"))
