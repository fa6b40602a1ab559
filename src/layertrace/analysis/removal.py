"""Layer-removal effect beside layer similarity (``analyze(..., layer_removal=True)``).

Similarity is not importance: a block can change its input little (high cosine to the previous
layer) and still be essential. For every block l = 1..L this stage runs the model with block l
skipped (embedding, blocks 1..l-1, blocks l+1..L, the model's own readout at the last layer) and
records the change in final-layer accuracy and cross-entropy (causal LMs: also perplexity), beside

* ShortGPT's block influence ``BI_l = 1 - E[cos(h_{l-1}, h_l)]`` (raw, uncentred cosine of the
  prediction-token features; causal LMs: of every scored token), and
* the paper's adjacent COS (mean-centred; from the similarity pass),

and how well each similarity ranks the blocks' importance (Spearman correlation over the blocks).

Only the public adapter API is used (``embed``, ``block``, ``features``, ``readout``, ``pool``). The
skip forwards share their prefix: one full forward keeps the states h_0..h_L, and skipping l
restarts from h_{l-1} with blocks l+1..L, so the stage costs L(L-1)/2 block applications per batch,
about (L - 1) / 2 extra forwards plus one.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..metrics import average_ranks
from ..trace import autocast, next_token_targets


class LayerRemovalStage:
    """Accumulates, per batch, the final-layer loss / accuracy with each block skipped.

    Args:
        adapter: a :class:`~layertrace.models.base.Adapter`.
        precision: autocast precision of the analysis pass (``None`` / ``"bf16"`` / ...).
        token_chunk: causal LMs: scored tokens per readout call.
    """

    def __init__(self, adapter: Any, precision: str | None = None, token_chunk: int = 1024):
        self.adapter = adapter
        self.precision = precision
        self.token_chunk = max(1, int(token_chunk))
        self.L = int(adapter.n_layers)
        self.is_lm = adapter.kind == "causal_lm"
        # index 0: the full model; index l: block l skipped
        self.ce_sum = np.zeros(self.L + 1)
        self.correct = np.zeros(self.L + 1)
        self.count = 0
        self.n_batches = 0
        self.cos_sum = np.zeros(self.L)  # raw cosine of h_{l-1} and h_l, summed over predictions
        self.cos_count = np.zeros(self.L)

    # ------------------------------------------------------------------ per batch
    def _targets(self, batch: Mapping[str, Any], state) -> tuple[Tensor, Tensor | None]:
        if not self.is_lm:
            return torch.as_tensor(batch["labels"]).long(), None
        mask = self.adapter.token_mask(state)
        targets, scored = next_token_targets(batch, mask if mask is not None else batch.get("attention_mask"))
        return targets, scored

    def _predictions(self, state, scored: Tensor | None) -> Tensor:
        """The prediction features of a state: (n, d) (classifiers: as the head reads them)."""
        h = self.adapter.features(state)
        if scored is None:
            return h
        return h[scored.to(h.device)]

    def _score(self, h: Tensor, targets: Tensor) -> tuple[float, float]:
        """(cross-entropy sum, correct count) of the readout of ``h`` against ``targets``."""
        ce, correct = 0.0, 0.0
        step = self.token_chunk if self.is_lm else h.shape[0]
        for s in range(0, h.shape[0], step):
            with autocast(self.precision, h.device):
                logits = self.adapter.readout(h[s:s + step])
            logits = logits.float()
            t = targets[s:s + step].to(logits.device)
            ce += float(F.cross_entropy(logits, t, reduction="sum"))
            correct += float((logits.argmax(dim=-1) == t).sum())
        return ce, correct

    def _cosine(self, a, b, scored: Tensor | None) -> tuple[float, int]:
        """Sum and count of raw per-prediction cosines between the similarity features of two states."""
        x = self.adapter.pool(self.adapter.features(a)).float()
        y = self.adapter.pool(self.adapter.features(b)).float()
        if scored is not None:
            x, y = x[scored.to(x.device)], y[scored.to(y.device)]
        x, y = x.reshape(-1, x.shape[-1]), y.reshape(-1, y.shape[-1])
        cos = F.cosine_similarity(x.double(), y.double(), dim=-1, eps=1e-30)
        return float(cos.sum()), int(cos.numel())

    @torch.no_grad()
    def update(self, batch: Mapping[str, Any]) -> None:
        """Add one batch (the dict the model takes, with ``labels`` for classifiers)."""
        a = self.adapter
        with autocast(self.precision, a.device):
            states = [state for _, state in a.iter_layers(batch)]  # layers 0..L, each block once
        targets, scored = self._targets(batch, states[0])
        if scored is not None:
            targets = targets[scored]
        n = int(targets.shape[0])
        if n == 0:
            return
        for layer in range(1, self.L + 1):
            s, c = self._cosine(states[layer - 1], states[layer], scored)
            self.cos_sum[layer - 1] += s
            self.cos_count[layer - 1] += c
        ce, correct = self._score(self._predictions(states[-1], scored), targets)
        self.ce_sum[0] += ce
        self.correct[0] += correct
        for skipped in range(1, self.L + 1):
            state = states[skipped - 1]
            with autocast(self.precision, a.device):  # block `skipped` left out: not the plain layer loop
                for layer in range(skipped + 1, self.L + 1):
                    state = a.block(layer, state)
            ce, correct = self._score(self._predictions(state, scored), targets)
            self.ce_sum[skipped] += ce
            self.correct[skipped] += correct
        self.count += n
        self.n_batches += 1

    # ------------------------------------------------------------------ result
    def state(self) -> np.ndarray:
        """Every sum in one float64 vector (for an all-reduce with SUM)."""
        return np.concatenate([self.ce_sum, self.correct, self.cos_sum, self.cos_count, [self.n_batches, self.count]])

    def load_state(self, vec: np.ndarray) -> None:
        n = self.L + 1
        self.ce_sum, self.correct = vec[:n].copy(), vec[n:2 * n].copy()
        self.cos_sum, self.cos_count = vec[2 * n:2 * n + self.L].copy(), vec[2 * n + self.L:2 * n + 2 * self.L].copy()
        self.n_batches, self.count = int(round(vec[-2])), int(round(vec[-1]))

    def finish(self, layers: list[int], cos_matrix: np.ndarray | None) -> dict[str, Any]:
        """The ``layer_removal`` entry of analysis.json (see docs/analysis.md)."""
        count = max(self.count, 1)
        ce = self.ce_sum / count
        acc = self.correct / count
        out: dict[str, Any] = {
            "blocks": list(range(1, self.L + 1)),
            "n_predictions": int(self.count),
            "n_batches": int(self.n_batches),
            "baseline_accuracy": float(acc[0]),
            "baseline_cross_entropy": float(ce[0]),
            "accuracy": acc[1:],
            "cross_entropy": ce[1:],
            "delta_accuracy": acc[1:] - acc[0],
            "delta_cross_entropy": ce[1:] - ce[0],
            "block_influence": 1.0 - self.cos_sum / np.maximum(self.cos_count, 1),
        }
        if self.is_lm:
            out["baseline_perplexity"] = float(np.exp(ce[0]))
            out["perplexity"] = np.exp(ce[1:])
            out["delta_perplexity"] = np.exp(ce[1:]) - np.exp(ce[0])
        # the paper's adjacent COS (mean-centred) for block l, where layers l-1 and l were both traced
        adjacent = np.full(self.L, np.nan)
        if cos_matrix is not None:
            where = {layer: i for i, layer in enumerate(layers)}
            for l in range(1, self.L + 1):
                if l - 1 in where and l in where:
                    adjacent[l - 1] = cos_matrix[where[l - 1], where[l]]
        out["adjacent_cos"] = adjacent
        importance = out["delta_cross_entropy"]
        out["spearman"] = {
            "block_influence_vs_delta_cross_entropy": spearman(out["block_influence"], importance),
            "one_minus_adjacent_cos_vs_delta_cross_entropy": spearman(1.0 - adjacent, importance),
            "block_influence_vs_accuracy_drop": spearman(out["block_influence"], -out["delta_accuracy"]),
        }
        return out


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation of two vectors over their finite entries (average ranks for ties);
    NaN with fewer than 3 finite pairs or a constant vector."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < 3:
        return float("nan")
    ra, rb = average_ranks(a[ok]), average_ranks(b[ok])
    if np.ptp(ra) == 0 or np.ptp(rb) == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])
