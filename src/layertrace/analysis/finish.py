"""After the pass: merge every process's sums, compute the similarity matrices (cache read-back
or second pass), calibration and extra matrices, the theory summary and the config record, and
assemble the :class:`~layertrace.analysis.result.AnalysisResult`."""

from __future__ import annotations

import time
from dataclasses import asdict
from typing import Any, Iterable

import numpy as np

from ..errors import LayertraceError
from ..readout import (
    effective_depths,
    n_layer_triples,
    saturation_cumulative,
    theorem_2_1_violations,
    theorem_2_2_cooccurrence,
)
from .options import SUMMARY_QUANTILES
from .result import AnalysisResult
from .similarity import SimilarityStage


class FinishSteps:
    """Pass steps after the last batch (mixed into the pass)."""

    def _finish(self, batches: Iterable, n_batches: int | None) -> AnalysisResult:
        o = self.opts
        d = self.dist
        # ---- merge the streaming sums of all processes
        self.readout.load_state(d.sum(self.readout.state()))
        sat_hist = d.sum(self.sat_hist).round().astype(np.int64)
        final_agree = d.sum(self.final_agree).round().astype(np.int64)
        dim_known = d.gather(self.dim)
        dims = {x for x in dim_known if x is not None}
        if not dims:
            raise LayertraceError("the data gave no batch to analyse (empty dataset, or limit / max_batches 0); "
                                  "check --data, --split and --limit")
        if len(dims) > 1:
            raise LayertraceError(f"processes saw different feature widths {sorted(dims)}")
        if self.dim is None:  # this rank got no batch: join with empty state
            self._plan(dims.pop())
        n_sim = int(d.sum(np.asarray([self.n_sim]))[0])
        feature_sum = d.sum(self.feature_sum)
        ratio_sum = d.sum(self.ratio_sum)
        ratio_count = d.sum(self.ratio_count)
        n_inf_ratio = int(d.sum(np.asarray([self.n_infinite_ratio]))[0])
        centers = feature_sum / max(n_sim, 1)

        # ---- similarity needing the centres: read the cache back (or a second pass)
        cos_matrix = cka_matrix = None
        extra: dict[str, np.ndarray] = {}
        if o.similarity and n_sim < 2:
            raise LayertraceError(f"similarity statistics need at least 2 samples, got {n_sim}: analyse more data "
                                  f"or pass similarity=False")
        if o.similarity:
            # one process with the whole cache in RAM: exact CKA straight from it (the metrics pick
            # sample or feature space); otherwise the streaming accumulator sees every chunk
            cka_from_cache = (self.cache is not None and not self.cache.on_disk and not d.active
                              and o.cka in ("auto", "exact"))
            if cka_from_cache:
                self.cka_mode = "exact"
            if self.stage is None:
                self.stage = SimilarityStage(self.S, self.dim, o.center, centers if o.center == "mean" else None,
                                             "none" if cka_from_cache else self.cka_mode, o.theory, o.tolerance,
                                             **self._null_args())
                for group, sizes, chunk in self._centred_chunks(batches, n_batches):
                    per_sample = self.stage.update(chunk)
                    starts = np.cumsum([0, *sizes])
                    for b, lo, hi in zip(group, starts[:-1], starts[1:]):
                        self.records[b].arrays.update({k: v[lo:hi] for k, v in per_sample.items()})
            stages = d.gather(self.stage)
            merged = stages[0]
            for other in stages[1:]:
                merged.merge(other)
            cos_matrix, cka_matrix = merged.compute()
            if cka_from_cache:
                from .. import metrics

                cka_matrix = np.asarray(metrics.linear_cka_matrix(self.cache.array()), dtype=np.float64)
            extra = self._extra_matrices()
            t0 = time.perf_counter()
            calibration = self._calibration(merged) if o.null_permutations else None
            self.calibration_s = time.perf_counter() - t0

        # ---- per-sample arrays of every process, in global batch order
        samples = self._gather_samples()
        counts = self.readout.compute()
        if self.headless:  # no readout: NaN, not the zeros of an empty accumulator
            counts = {k: np.full(self.S, np.nan) for k in counts}
        n_samples = int(samples.pop("_n_samples"))
        n_pred = int(self.readout.count)
        if n_pred == 0:
            raise LayertraceError("no sample was analysed; check the data (empty dataset or split)")
        result = AnalysisResult(
            n_layers=self.L, layers=list(self.layers), n_samples=n_samples, kind=self.adapter.kind,
            model=self.model_name, data=self.data_name, num_classes=int(self.adapter.num_outputs),
            n_predictions=n_pred, n_similarity_samples=n_sim,
            accuracy=counts["accuracy"], true_class_prob=counts["true_class_prob"], max_prob=counts["max_prob"],
            entropy=counts["entropy"], cross_entropy=counts["cross_entropy"],
            perplexity=np.exp(counts["cross_entropy"]) if self.is_lm else None,
            saturation_hist=sat_hist, saturation_cumulative=saturation_cumulative(sat_hist),
            final_agreement=np.full(self.S, np.nan) if self.headless else final_agree / n_pred,
            effective_depth={} if self.headless else effective_depths(counts["accuracy"], self.layers, o.epsilons),
        )
        if self.S > 1:
            result.norm_ratio = np.append(ratio_sum / np.maximum(ratio_count, 1), np.nan)
            result.norm_ratio[:-1][ratio_count == 0] = np.nan
        else:
            result.norm_ratio = np.full(1, np.nan)
        if o.similarity:
            result.center = o.center
            result.cos_matrix = cos_matrix
            result.cka_matrix = cka_matrix
            result.cka_estimator = self.cka_mode if self.cka_mode != "none" else None
            result.cos_to_last = cos_matrix[:, -1].copy()
            result.adjacent_cos = np.concatenate([[np.nan], np.diagonal(cos_matrix, offset=1)])
            if cka_matrix is not None and self.S > 1:
                from .. import metrics

                result.cos_cka_agreement = {k: float(v) for k, v in metrics.agreement(cos_matrix, cka_matrix).items()}
            zero = merged.zero_counts
            result.zero_norm_count = int(zero.sum())
            result.zero_norm_per_layer = zero
            if "cos_to_last" in samples:
                result.cos_box = _box(samples["cos_to_last"])
            result.rbf_cka_matrix = extra.get("rbf_cka")
            result.procrustes_matrix = extra.get("procrustes")
        result.theory = self._theory(samples, cos_matrix, n_inf_ratio) if o.theory else {}
        if self.collapse is not None:
            result.collapse = self.collapse.finish(d)
        if o.similarity and o.null_permutations:
            result.calibration = calibration
        if self.removal is not None:
            self.removal.load_state(d.sum(self.removal.state()))
            result.layer_removal = self.removal.finish(list(self.layers), cos_matrix)
        result.config = self._config_record()
        result.samples = self._public_samples(samples, result) if o.per_sample else None
        return result

    def _cached_subsample(self, max_samples: int) -> np.ndarray:
        """A seeded subsample (S, m, d) of at most ``max_samples`` cached similarity samples (all processes)."""
        d = self.dist
        n_total = int(d.sum(np.asarray([self.cache.n_rows]))[0])
        counts = d.gather(self.cache.n_rows)
        offset = int(sum(counts[: d.rank]))
        rng = np.random.default_rng(self.opts.seed)
        chosen = np.sort(rng.choice(n_total, size=min(n_total, max_samples), replace=False))
        mine = chosen[(chosen >= offset) & (chosen < offset + self.cache.n_rows)] - offset
        parts = d.gather(self.cache.rows(mine))
        return np.concatenate(parts, axis=1)

    def _calibration(self, stage: SimilarityStage) -> dict[str, Any]:
        """Permutation-calibrated COS and CKA (see AnalysisOptions.null_permutations)."""
        from .. import metrics

        o = self.opts
        k = int(o.null_permutations)
        feats = self._cached_subsample(o.null_max_samples)
        keys = ("score", "calibrated", "tau", "p_value")
        out: dict[str, Any] = {"n_permutations": k, "alpha": metrics.calibration.ALPHA, "seed": int(o.seed)}
        cos = metrics.calibrated_similarity(feats, "cos", n_permutations=k, seed=o.seed, center=o.center)
        out["cos"] = {"n_samples": int(feats.shape[1]), **{key: cos[key] for key in keys}}
        if self.cka_mode == "minibatch":
            cka = stage.cka_acc.calibrated()
            out["cka"] = {"estimator": "minibatch", "n_samples": int(stage.cka_acc.n_samples),
                          "null": "within-batch row permutations", **{key: cka[key] for key in keys}}
        elif self.cka_mode == "exact":
            cka = metrics.calibrated_similarity(feats, "linear_cka", n_permutations=k, seed=o.seed)
            out["cka"] = {"estimator": "exact", "n_samples": int(feats.shape[1]), **{key: cka[key] for key in keys}}
        return out

    def _extra_matrices(self) -> dict[str, np.ndarray]:
        """RBF CKA / Procrustes on a seeded subsample of the cached similarity samples (all processes)."""
        o = self.opts
        if not (o.rbf_cka or o.procrustes):
            return {}
        from .. import metrics

        feats = self._cached_subsample(o.extra_max_samples)
        out = {}
        if o.rbf_cka:
            out["rbf_cka"] = np.asarray(metrics.rbf_cka_matrix(feats), dtype=np.float64)
        if o.procrustes:
            out["procrustes"] = np.asarray(metrics.procrustes_similarity_matrix(feats), dtype=np.float64)
        return out

    def _theory(self, samples: dict[str, np.ndarray], cos_matrix: np.ndarray | None, n_inf_ratio: int) -> dict:
        o = self.opts
        theory: dict[str, Any] = {"tolerance": o.tolerance}
        n_triples = n_layer_triples(self.S)
        if "theorem_2_1_violations" in samples:
            v = samples["theorem_2_1_violations"]
            evaluated = samples["theorem_2_1_triples"]
            has = evaluated > 0
            theory["theorem_2_1"] = {
                "n_triples_per_sample": n_triples,
                "n_evaluated_triples": int(evaluated.sum()),
                "sample_violation_rate": float((v[has] > 0).mean()) if has.any() else float("nan"),
                "triple_violation_rate": float(v.sum() / evaluated.sum()) if has.any() else float("nan"),
                "cos_matrix_violation_rate": (float(theorem_2_1_violations(cos_matrix, o.tolerance)) / n_triples
                                              if cos_matrix is not None and n_triples else float("nan")),
                "center": o.center,
            }
        for key in ("straightness", "geodesic_residual"):
            if key in samples:
                theory[key] = _summary(samples[key])
        if "cos_to_last" in samples:
            theory["theorem_2_2"] = theorem_2_2_cooccurrence(samples["cos_to_last"], samples["sim_true_class_prob"],
                                                             o.tolerance)
        if "norm_ratio" in samples and samples["norm_ratio"].size:
            r = samples["norm_ratio"].astype(np.float64)
            r = np.where(np.isfinite(r), r, np.nan)
            with np.errstate(all="ignore"):
                med = np.nanmedian(r, axis=0) if r.shape[0] else np.full(r.shape[1], np.nan)
            theory["norm_ratio_median"] = [*map(float, med), float("nan")]
            theory["norm_ratio_infinite_count"] = n_inf_ratio
        return theory

    def _config_record(self) -> dict[str, Any]:
        o = asdict(self.opts)
        o["layers"] = list(self.layers)
        o["epsilons"] = list(self.opts.epsilons)
        o.update(
            cache_used=getattr(self, "cache_mode", "none") if self.opts.similarity else "none",
            cache_spilled_to_disk=bool(self.cache is not None and self.cache.on_disk),
            cka_estimator=getattr(self, "cka_mode", "none"),
            final_norm=bool(getattr(self.adapter, "final_norm", True)),
            adapter_family=getattr(self.adapter, "family", "custom"),
            pooling=getattr(self.adapter, "pooling", "auto"),
            world_size=self.dist.world_size,
            similarity_samples_rule=("every sample's prediction-token feature" if not self.is_lm else
                                     f"up to {self.opts.tokens_per_sample} scored positions per sequence, uniform "
                                     f"without replacement, generator seeded by (seed={self.opts.seed}, batch index)"),
        )
        return o


def _summary(values: np.ndarray) -> dict[str, Any]:
    """Mean, quantiles, extremes and the undefined count of a per-sample statistic."""
    v = np.asarray(values, dtype=np.float64)
    ok = v[np.isfinite(v)]
    if ok.size == 0:
        return {"mean": float("nan"), "n_undefined": int(v.size)}
    q = np.quantile(ok, SUMMARY_QUANTILES)
    return {"mean": float(ok.mean()), "min": float(ok.min()), "max": float(ok.max()),
            **{f"q{int(round(p * 100)):02d}": float(x) for p, x in zip(SUMMARY_QUANTILES, q)},
            "n_undefined": int(v.size - ok.size)}


def _box(values: np.ndarray) -> dict[str, Any]:
    """Per-layer box-plot statistics of a per-sample (n, S) array, NaN entries excluded
    (``layertrace.metrics.box_stats``: q0 q25 q50 q75 q100 mean count, each (S,))."""
    from .. import metrics

    v = np.asarray(values, dtype=np.float64).T
    return metrics.box_stats(np.nan_to_num(v), valid=np.isfinite(v))

