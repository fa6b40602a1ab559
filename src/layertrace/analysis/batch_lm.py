"""Causal-LM batches of the pass: the readout one layer and one token chunk at a time (never
(S, B, T, V) at once), per-token statistics, the seeded similarity-token subsample."""

from __future__ import annotations

import time
from typing import Any, Mapping

import numpy as np
import torch
from torch import Tensor

from ..errors import LayertraceError
from ..readout import final_agreement_counts, layer_readout, saturation_histogram, saturation_positions
from ..trace import autocast, check_finite, next_token_targets, subsample_tokens, trace_batch
from .records import BatchRecord


class LMBatches:
    """Pass steps of one causal-LM batch (mixed into the pass)."""

    def _lm_batch(self, b: int, batch: Mapping[str, Any]) -> tuple[Tensor, BatchRecord]:
        if "input_ids" not in batch:
            raise LayertraceError(f"causal-LM batch {b} needs 'input_ids' (keys {sorted(batch)})")
        t0 = time.perf_counter()
        trace = trace_batch(self.adapter, batch, self.layers, with_logits=False,
                            precision=self.opts.precision, batch_index=b, check=False)
        self.forward_s += time.perf_counter() - t0
        feats = trace.features  # (S, B, T, d)
        ids = batch["input_ids"]
        mask = trace.mask if trace.mask is not None else batch.get("attention_mask")
        targets, scored = next_token_targets(batch, mask)
        real = torch.ones(ids.shape, dtype=torch.bool) if mask is None else torch.as_tensor(mask).bool()
        check_finite(feats[:, real.to(feats.device)], "activations", self.layers, b)  # pads may hold anything
        scored = scored.to(feats.device)
        targets = targets.to(feats.device)
        v = self.adapter.num_outputs
        bad = targets[scored]
        if bad.numel() and (int(bad.min()) < 0 or int(bad.max()) >= v):
            raise LayertraceError(f"token id {int(bad.max())} in batch {b} is out of range for a vocabulary of {v}: "
                                  f"the tokenizer does not match the model")
        rows, cols = scored.nonzero(as_tuple=True)  # scored tokens, row-major
        n_tok = rows.shape[0]
        if n_tok == 0:
            raise LayertraceError(f"batch {b} has no scored token (every sequence is shorter than 2 real tokens)")
        flat_targets = targets[rows, cols]
        keep_all = self.opts.per_sample
        pred = np.empty((n_tok, self.S), dtype=np.int64)
        per = {k: np.empty((n_tok, self.S), dtype=np.float32) for k in ("max_prob", "true_class_prob", "entropy")}
        chunk = max(1, int(self.opts.token_chunk))
        read = self.adapter.layer_readout  # the shared head, one layer and one token chunk at a time
        for i in range(self.S):
            h = feats[i, rows, cols]  # (n_tok, d)
            for s in range(0, n_tok, chunk):
                sl = slice(s, min(n_tok, s + chunk))
                with autocast(self.opts.precision, h.device):
                    logits = read(self.layers[i], h[sl])
                check_finite(logits[None], "logits", [self.layers[i]], b)
                r = layer_readout(logits, flat_targets[sl], compute_dtype=torch.float32)
                self.readout.update(i, r)
                pred[sl, i] = r.pred.cpu().numpy()
                for k in per:
                    per[k][sl, i] = getattr(r, k).cpu().numpy()
                del logits, r
        self.readout.add_count(n_tok)
        positions = saturation_positions(pred)
        self.sat_hist += saturation_histogram(positions, self.S)
        self.final_agree += final_agreement_counts(pred)
        # similarity tokens: seeded subsample of the scored positions (same on every process)
        srow, scol = subsample_tokens(scored, self.opts.tokens_per_sample, self.opts.seed, b)
        flat_index = torch.full(scored.shape, -1, dtype=torch.long)
        flat_index[rows.cpu(), cols.cpu()] = torch.arange(n_tok)
        sim_index = flat_index[srow, scol].numpy()
        rec = BatchRecord(n_samples=int(ids.shape[0]))
        rec.arrays["sim_index"] = sim_index
        rec.arrays["sim_true_class_prob"] = per["true_class_prob"][sim_index]
        rec.arrays["n_predictions"] = np.asarray([n_tok])
        if keep_all:
            rec.arrays.update(labels=flat_targets.cpu().numpy(), pred=pred, saturation_position=positions,
                              token_row=rows.cpu().numpy(), token_position=cols.cpu().numpy(), **per)
        else:
            rec.arrays["saturation_position"] = positions[sim_index]
        sim_feats = feats[:, srow.to(feats.device), scol.to(feats.device)]  # (S, k, d)
        return sim_feats, rec

