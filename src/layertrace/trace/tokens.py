"""Token bookkeeping for causal language models: next-token targets and the similarity subsample.

Scored positions. Position t of a sequence predicts the token at t + 1. It is *scored* when both t
and t + 1 are real tokens (attention mask 1) and the target is not ``-100`` (the HF ignore index,
honoured when the batch carries HF-style ``labels``). Targets are ``labels[:, t+1]`` when the batch
has ``labels`` of the same shape as ``input_ids`` (HF convention: labels are the unshifted inputs),
else ``input_ids[:, t+1]``.

Similarity subsample (the documented, seeded rule). Similarity matrices and the theory checks treat
each chosen token as one sample. From every sequence, up to ``tokens_per_sample`` of its scored
positions are drawn uniformly without replacement, with a generator seeded by
``(seed, global batch index)``: the draw depends only on the seed, the batch's position in the
data and the batch's content, never on the process that handles the batch, so one process and
several processes pick the same tokens. ``tokens_per_sample <= 0`` keeps every scored position.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import Tensor

IGNORE_INDEX = -100


def next_token_targets(batch: Mapping[str, Any], attention_mask: Tensor | None) -> tuple[Tensor, Tensor]:
    """Targets and scored positions of a causal-LM batch.

    Args:
        batch: with ``input_ids`` (B, T) and optionally ``labels`` (B, T) (HF convention, unshifted).
        attention_mask: (B, T) 1 for real tokens (``None``: all real).

    Returns:
        ``(targets, scored)``: (B, T) long targets (the token at t + 1; 0 where not scored) and a
        (B, T) bool mask of scored positions (the last position is never scored).
    """
    ids = batch["input_ids"]
    source = batch.get("labels")
    if not (isinstance(source, Tensor) and source.shape == ids.shape):
        source = ids
    source = source.to(ids.device).long()
    mask = torch.ones_like(ids, dtype=torch.bool) if attention_mask is None else attention_mask.to(ids.device).bool()
    targets = torch.zeros_like(ids, dtype=torch.long)
    scored = torch.zeros_like(ids, dtype=torch.bool)
    targets[:, :-1] = source[:, 1:]
    scored[:, :-1] = mask[:, :-1] & mask[:, 1:] & (source[:, 1:] != IGNORE_INDEX)
    targets = targets.masked_fill(~scored, 0)
    return targets, scored


def batch_generator(seed: int, batch_index: int) -> torch.Generator:
    """CPU generator seeded by ``(seed, batch_index)`` (same on every process)."""
    return torch.Generator().manual_seed((int(seed) * 1_000_003 + int(batch_index) * 7919 + 12345) % (2**63 - 1))


def subsample_tokens(scored: Tensor, tokens_per_sample: int, seed: int, batch_index: int) -> tuple[Tensor, Tensor]:
    """Seeded subsample of scored positions for the similarity statistics.

    Args:
        scored: (B, T) bool mask of scored positions.
        tokens_per_sample: at most this many positions per sequence (<= 0: all of them).
        seed: the analysis seed.
        batch_index: the batch's global position in the data.

    Returns:
        ``(rows, cols)`` long tensors (k,) on CPU, sorted by row then position.
    """
    scored = scored.detach().cpu()
    if tokens_per_sample <= 0:
        rows, cols = scored.nonzero(as_tuple=True)
        return rows, cols
    scores = torch.rand(scored.shape, generator=batch_generator(seed, batch_index))
    scores = scores.masked_fill(~scored, 2.0)  # unscored positions sort last
    k = min(int(tokens_per_sample), scored.shape[1])
    order = scores.argsort(dim=1)[:, :k]  # (B, k) positions with the smallest random keys
    keep = scored.gather(1, order)
    rows = torch.arange(scored.shape[0])[:, None].expand_as(order)[keep]
    cols = order[keep]
    sort = (rows * scored.shape[1] + cols).argsort()
    return rows[sort], cols[sort]
