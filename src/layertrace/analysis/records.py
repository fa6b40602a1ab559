"""Per-sample records of the pass: what each batch leaves behind, gathered in global batch order,
and the public per-sample arrays (``analysis_samples.npz``, listed in docs/analysis.md)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .options import AUTO_LOGITS_BYTES
from .result import AnalysisResult


@dataclass
class BatchRecord:
    """What one batch leaves behind (small, per-sample arrays); keyed by the global batch index."""

    n_samples: int
    arrays: dict[str, np.ndarray] = field(default_factory=dict)


class SampleRecords:
    """Pass steps over the per-sample records (mixed into the pass)."""

    def _gather_samples(self) -> dict[str, np.ndarray]:
        """Concatenate every process's batch records in global batch order."""
        records: dict[int, BatchRecord] = {}
        for part in self.dist.gather(self.records):
            records.update(part)
        order = sorted(records)
        out: dict[str, Any] = {"_n_samples": sum(records[b].n_samples for b in order)}
        if not order:
            return out
        # a key missing from some batch (logits dropped past the size limit on one process) is dropped
        keys = [k for k in records[order[0]].arrays
                if not k.startswith("_cached") and all(k in records[b].arrays for b in order)]
        pred_offset = 0
        row_offset = 0
        lists: dict[str, list] = {k: [] for k in keys}
        for b in order:
            arrays = records[b].arrays
            n_pred = int(arrays["n_predictions"][0]) if "n_predictions" in arrays else records[b].n_samples
            for k in keys:
                value = arrays[k]
                if k == "sim_index":
                    value = value + pred_offset
                elif k == "token_row":
                    value = value + row_offset
                lists[k].append(value)
            pred_offset += n_pred
            row_offset += records[b].n_samples
        for k, parts in lists.items():
            if k == "n_predictions":
                continue
            out[k] = np.concatenate(parts)
        return out

    def _public_samples(self, samples: dict[str, np.ndarray], result: AnalysisResult) -> dict[str, np.ndarray]:
        """The arrays written to analysis_samples.npz (docs/analysis.md lists them)."""
        out: dict[str, np.ndarray] = {"layers": np.asarray(self.layers, dtype=np.int64)}
        layers = np.asarray(self.layers, dtype=np.int64)
        if "saturation_position" in samples:
            out["saturation_layer"] = layers[samples.pop("saturation_position")]
        for k, v in samples.items():
            if k.startswith("_") or k == "sim_true_class_prob":
                continue
            out[k] = v
        if "logits" in out and str(self.opts.save_logits).lower() == "auto" and out["logits"].nbytes > AUTO_LOGITS_BYTES:
            del out["logits"]
        for k, v in list(out.items()):
            if v.dtype == np.float64:
                out[k] = v.astype(np.float32)
            elif v.dtype == np.int64 and k not in ("layers",):
                out[k] = v.astype(np.int32) if v.size == 0 or (v.max() < 2**31 and v.min() >= -2**31) else v
        return out

