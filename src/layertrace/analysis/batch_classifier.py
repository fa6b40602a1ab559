"""Classifier (and headless encoder) batches of the pass: trace, shared-readout statistics,
saturation, per-sample arrays."""

from __future__ import annotations

import time
from typing import Any, Mapping

import numpy as np
import torch
from torch import Tensor

from ..errors import LayertraceError
from ..readout import final_agreement_counts, saturation_histogram, saturation_positions, stacked_layer_readout
from ..trace import trace_batch
from .options import AUTO_LOGITS_BYTES
from .records import BatchRecord


class ClassifierBatches:
    """Pass steps of one classifier / headless batch (mixed into the pass)."""

    def _check_labels(self, batch: Mapping[str, Any], b: int) -> Tensor:
        if "labels" not in batch:
            raise LayertraceError(f"batch {b} has no 'labels' entry (keys {sorted(batch)}); "
                                  f"classifier analysis needs the true class of every sample")
        labels = torch.as_tensor(batch["labels"]).reshape(-1).long()
        if labels.numel() == 0:
            raise LayertraceError(f"batch {b} is empty; drop empty batches")
        k = self.adapter.num_outputs
        lo, hi = int(labels.min()), int(labels.max())
        if lo < 0 or hi >= k:
            raise LayertraceError(
                f"label {hi if hi >= k else lo} in batch {b} is out of range for a model with {k} classes "
                f"(labels must be 0..{k - 1}): the model's head and the dataset do not match")
        return labels

    def _headless_batch(self, b: int, batch: Mapping[str, Any]) -> tuple[Tensor, BatchRecord]:
        """A headless encoder (``kind="encoder"``: BertModel, CLIP towers): similarity only, no readout."""
        t0 = time.perf_counter()
        trace = trace_batch(self.adapter, batch, self.layers, with_logits=False,
                            precision=self.opts.precision, batch_index=b)
        self.forward_s += time.perf_counter() - t0
        n = int(trace.features.shape[1])
        self.readout.add_count(n)
        rec = BatchRecord(n_samples=n)
        if self.opts.per_sample:
            rec.arrays["sim_index"] = np.arange(n)
        return trace.features, rec

    def _classifier_batch(self, b: int, batch: Mapping[str, Any]) -> tuple[Tensor, BatchRecord]:
        labels = self._check_labels(batch, b)
        t0 = time.perf_counter()
        if self.collapse is not None:  # record what the head's final linear layer reads in this batch
            self.collapse.arm()
        # the adapter's trace reads every layer through the shared LayerReadout (one stacked head call)
        trace = trace_batch(self.adapter, batch, self.layers, with_logits=True,
                            precision=self.opts.precision, batch_index=b)
        logits = trace.logits.float()
        self.forward_s += time.perf_counter() - t0
        if self.collapse is not None:
            self.collapse.update(logits, labels)
        labels = labels.to(logits.device)
        n = labels.shape[0]
        r = stacked_layer_readout(logits, labels)
        self.readout.update_layers(r)
        self.readout.add_count(n)
        pred = r.pred.T.cpu().numpy()
        per = {k: getattr(r, k).T.to(torch.float32).cpu().numpy() for k in ("max_prob", "true_class_prob", "entropy")}
        positions = saturation_positions(pred)
        self.sat_hist += saturation_histogram(positions, self.S)
        self.final_agree += final_agreement_counts(pred)
        rec = BatchRecord(n_samples=n)
        # similarity samples of a classifier = every sample; T2.2 reads their true-class probability
        rec.arrays["sim_true_class_prob"] = per["true_class_prob"]
        if self.opts.per_sample:
            rec.arrays.update(labels=labels.cpu().numpy(), pred=pred, saturation_position=positions,
                              sim_index=np.arange(n), **per)
            if self._keep_logits(n):
                rec.arrays["logits"] = logits.float().permute(1, 0, 2).cpu().numpy()
        return trace.features, rec

    def _keep_logits(self, n: int) -> bool:
        """Whether to keep this batch's (n, S, K) logits for the .npz (see ``save_logits``)."""
        want = self.opts.save_logits
        if not self.opts.per_sample or want is False or str(want).lower() in ("false", "no", "off"):
            return False
        if want is True or str(want).lower() in ("true", "yes", "on"):
            return True
        # "auto": keep while this process's total stays under the limit; past it, drop them all
        if not self._logits_ok:
            return False
        self._logit_bytes += n * self.S * self.adapter.num_outputs * 4
        if self._logit_bytes > AUTO_LOGITS_BYTES:
            self._logits_ok = False
            for rec in self.records.values():
                rec.arrays.pop("logits", None)
            return False
        return True

