"""Planning the similarity statistics of the pass: once the feature width d is known, decide the
cache / inline / second-pass route and the CKA estimator; feed each batch's similarity samples;
read the centred features back after the pass."""

from __future__ import annotations

import time
from typing import Iterable, Iterator

import numpy as np
import torch
from torch import Tensor

from ..readout import geodesic_residual, norm_ratios, trajectory_straightness
from ..trace import FeatureCache, next_token_targets, subsample_tokens, trace_batch
from .options import CHUNK_BYTES, CHUNK_ROWS_RANGE
from .records import BatchRecord
from .similarity import SimilarityStage


class SimilarityPlan:
    """Pass steps of the similarity route (mixed into the pass)."""

    def _plan(self, dim: int) -> None:
        """Decide, once d is known, how similarity will be computed (cache / inline / second pass)."""
        o = self.opts
        self.dim = dim
        self.feature_sum = np.zeros((self.S, dim))
        if not o.similarity:
            self.cka_mode = "none"
            return
        cka_state_bytes = 8 * (self.S * dim) ** 2  # the streaming accumulator's cross-moment matrix
        needs_cache = o.center == "mean" or o.rbf_cka or o.procrustes or o.null_permutations > 0
        self.cache_mode = o.cache if needs_cache else "none"
        if self.cache_mode != "none":
            self.cache = FeatureCache(self.S, dim, mode=self.cache_mode,
                                      ram_limit_bytes=int(o.cache_ram_gb * (1 << 30)), directory=o.cache_dir)
        if o.cka == "none":
            self.cka_mode = "none"
        elif o.cka == "minibatch":
            self.cka_mode = "minibatch"
        elif o.cka == "exact" or cka_state_bytes <= o.cka_exact_max_gb * (1 << 30):
            self.cka_mode = "exact"
        else:
            self.cka_mode = "minibatch"
        if not needs_cache:  # centres known now: everything inline, one pass, no cache
            self.stage = SimilarityStage(self.S, dim, o.center, None, self.cka_mode, o.theory, o.tolerance,
                                         **self._null_args())

    def _null_args(self) -> dict[str, int]:
        """SimilarityStage keywords of the streamed minibatch-CKA null (K = null_permutations)."""
        return {"null_permutations": int(self.opts.null_permutations), "seed": int(self.opts.seed)}

    def _similarity_samples(self, b: int, feats: Tensor, rec: BatchRecord) -> None:
        """Raw-trajectory statistics of the similarity samples, then cache / inline similarity."""
        x = feats.detach().to("cpu", torch.float64).numpy()  # small: numpy, no thread-pool round trips
        if self.dim is None:
            self._plan(int(x.shape[-1]))
        k = x.shape[1]
        self.n_sim += k
        self.feature_sum += x.sum(axis=1)
        if self.S > 1:
            ratios = norm_ratios(x)
            finite = np.isfinite(ratios)
            self.ratio_sum += np.where(finite, ratios, 0.0).sum(axis=0)
            self.ratio_count += finite.sum(axis=0)
            self.n_infinite_ratio += int((~finite).any(axis=1).sum())
            rec.arrays["norm_ratio"] = ratios.astype(np.float32)
        if self.opts.theory and self.S > 1:
            rec.arrays["straightness"] = trajectory_straightness(x)
            rec.arrays["geodesic_residual"] = geodesic_residual(x, self.layers)
        if not self.opts.similarity:
            return
        if self.cache is not None:
            self.cache.append(x)
            rec.arrays["_cached_rows"] = np.asarray([k])
        elif self.stage is not None:
            rec.arrays.update(self.stage.update(torch.from_numpy(x)))

    def _centred_chunks(self, batches: Iterable, n_batches: int | None
                        ) -> Iterator[tuple[list[int], list[int], np.ndarray | Tensor]]:
        """``(batch indices, their row counts, features (S, rows, d))`` for the centred statistics,
        from the cache or from a second pass. Cached rows come in groups of consecutive batches of
        at most ``chunk_rows`` rows (fewer, larger products), except for minibatch CKA, whose estimate
        depends on the batches and so reads them one by one."""
        own = sorted(self.records)
        if self.cache is not None:
            if str(self.opts.chunk_rows) == "auto":
                lo, hi = CHUNK_ROWS_RANGE
                chunk_rows = min(hi, max(lo, CHUNK_BYTES // self.cache.row_bytes))
            else:
                chunk_rows = max(1, int(self.opts.chunk_rows))
            groups: list[list[int]] = []
            filled = 0
            for b in own:
                rows = int(self.records[b].arrays["_cached_rows"][0])
                if not groups or self.cka_mode == "minibatch" or filled + rows > chunk_rows:
                    groups.append([])
                    filled = 0
                groups[-1].append(b)
                filled += rows
            group_sizes = [[int(self.records[b].arrays["_cached_rows"][0]) for b in g] for g in groups]
            chunks = self.cache.chunks(boundaries=[sum(g) for g in group_sizes])
            yield from zip(groups, group_sizes, chunks)
            return
        # cache="none": run the model again (features only); same batches, same token subsample
        for b, batch in self._own_batches(batches, n_batches, "analyze (pass 2)"):
            t0 = time.perf_counter()
            trace = trace_batch(self.adapter, batch, self.layers, with_logits=False,
                                precision=self.opts.precision, batch_index=b)
            self.forward_s += time.perf_counter() - t0
            feats = trace.features
            if self.is_lm:
                _, scored = next_token_targets(batch, trace.mask if trace.mask is not None else batch.get("attention_mask"))
                srow, scol = subsample_tokens(scored, self.opts.tokens_per_sample, self.opts.seed, b)
                feats = feats[:, srow.to(feats.device), scol.to(feats.device)]
            yield [b], [int(feats.shape[1])], feats

