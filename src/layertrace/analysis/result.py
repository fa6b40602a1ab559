"""``AnalysisResult``: the typed result of one analysis pass (numpy inside, to / from JSON).

The attributes are named exactly as the keys of ``analysis.json`` (docs/analysis.md lists every key
with its shape and meaning). Per-layer arrays have one entry per traced layer, in the order of
``layers``. Per-sample arrays live in :attr:`AnalysisResult.samples` and are written to
``analysis_samples.npz`` beside the JSON, not into it.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import run_folder
from ..errors import LayertraceError
from ..io import read_json, read_json_dict, reading, write_json, write_npz

JSON_NAME = run_folder.ANALYSIS
SAMPLES_NAME = run_folder.ANALYSIS_SAMPLES
SCHEMA_VERSION = 1

# Keys whose JSON lists become float64 numpy arrays (null -> NaN) when read back.
_FLOAT_ARRAYS = (
    "accuracy", "true_class_prob", "max_prob", "entropy", "cross_entropy", "perplexity",
    "cos_to_last", "adjacent_cos", "cos_matrix", "cka_matrix", "saturation_cumulative", "final_agreement",
    "norm_ratio", "rbf_cka_matrix", "procrustes_matrix",
)
_INT_ARRAYS = ("saturation_hist", "zero_norm_per_layer")
_REQUIRED = ("n_layers", "layers", "n_samples")


@dataclass
class AnalysisResult:
    """Everything one analysis pass measured. See docs/analysis.md for the full schema.

    Per-layer arrays are (S,) float64 over ``layers`` (S = len(layers)); matrices are (S, S).
    Similarity fields are ``None`` when the pass ran with ``similarity=False``.
    """

    # --- what was analysed
    n_layers: int
    layers: list[int]
    n_samples: int
    kind: str = "classifier"
    model: str | None = None
    data: str | None = None
    num_classes: int = 0
    n_predictions: int = 0
    n_similarity_samples: int = 0
    # --- layer-wise readout of the shared head
    accuracy: np.ndarray | None = None
    true_class_prob: np.ndarray | None = None
    max_prob: np.ndarray | None = None
    entropy: np.ndarray | None = None
    cross_entropy: np.ndarray | None = None
    perplexity: np.ndarray | None = None
    # --- saturation and effective depth
    saturation_hist: np.ndarray | None = None
    saturation_cumulative: np.ndarray | None = None
    final_agreement: np.ndarray | None = None
    effective_depth: dict[str, Any] = field(default_factory=dict)
    # --- similarity
    center: str | None = None
    cos_to_last: np.ndarray | None = None
    adjacent_cos: np.ndarray | None = None
    cos_matrix: np.ndarray | None = None
    cka_matrix: np.ndarray | None = None
    cka_estimator: str | None = None
    cos_cka_agreement: dict[str, float] | None = None
    cos_box: dict[str, Any] | None = None
    rbf_cka_matrix: np.ndarray | None = None
    procrustes_matrix: np.ndarray | None = None
    zero_norm_count: int = 0
    zero_norm_per_layer: np.ndarray | None = None
    # --- residual geometry and theory checks
    norm_ratio: np.ndarray | None = None
    theory: dict[str, Any] = field(default_factory=dict)
    # --- neural collapse through the shared head (collapse=True; readout/collapse.py): per-layer
    # (S,) float64 arrays "nc1", "nc2_equinorm", "nc2_equiangular", "nc2_maxangle", "nc3",
    # "within_trace", "between_trace", plus "feature", "dim", "n_classes", "n_samples"
    collapse: dict[str, Any] | None = None
    # --- permutation-null calibration (null_permutations=K): {"n_permutations", "alpha", "seed",
    # "cos": {...}, "cka": {...}} with (S, S) "score", "calibrated", "tau", "p_value" per metric
    calibration: dict[str, Any] | None = None
    # --- layer-removal effect (layer_removal=True; analysis/removal.py): per block 1..L
    # "delta_accuracy", "delta_cross_entropy", "block_influence", "adjacent_cos", ... and "spearman"
    layer_removal: dict[str, Any] | None = None
    # --- how it ran
    config: dict[str, Any] = field(default_factory=dict)
    timing: dict[str, float] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION
    # --- per-sample arrays (analysis_samples.npz); not part of the JSON
    samples: dict[str, np.ndarray] | None = field(default=None, repr=False, compare=False)

    # ------------------------------------------------------------------ conversions
    def to_dict(self) -> dict[str, Any]:
        """The JSON content (numpy converted by :func:`layertrace.io.to_jsonable` when written)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "samples"}

    @classmethod
    def from_dict(cls, data: dict[str, Any], samples: dict[str, np.ndarray] | None = None) -> "AnalysisResult":
        """Rebuild a result from its JSON content (lists -> numpy arrays, null -> NaN)."""
        known = {f.name for f in dataclasses.fields(cls)}
        missing = [k for k in _REQUIRED if k not in data]
        if missing:
            raise LayertraceError(f"analysis result is missing {missing}; re-run 'layertrace analyze'")
        kwargs = {k: v for k, v in data.items() if k in known and k != "samples"}
        for key in _FLOAT_ARRAYS:
            if kwargs.get(key) is not None:
                kwargs[key] = _float_array(kwargs[key])
        for key in _INT_ARRAYS:
            if kwargs.get(key) is not None:
                kwargs[key] = np.asarray(kwargs[key], dtype=np.int64)
        kwargs["layers"] = [int(x) for x in kwargs["layers"]]
        if kwargs.get("collapse"):
            kwargs["collapse"] = {k: _float_array(v) if isinstance(v, list) else v
                                  for k, v in kwargs["collapse"].items()}
        if kwargs.get("calibration"):
            kwargs["calibration"] = {k: ({kk: _float_array(vv) if isinstance(vv, list) else vv for kk, vv in v.items()}
                                         if isinstance(v, dict) else v)
                                     for k, v in kwargs["calibration"].items()}
        if kwargs.get("layer_removal"):
            kwargs["layer_removal"] = {k: _float_array(v) if isinstance(v, list) and k != "blocks" else v
                                       for k, v in kwargs["layer_removal"].items()}
        return cls(**kwargs, samples=samples)

    def to_json(self, path: str | Path) -> Path:
        """Write the JSON (atomically). Per-sample arrays are not included: see :meth:`save`."""
        path = Path(path)
        write_json(path, self.to_dict())
        return path

    @classmethod
    def from_json(cls, path: str | Path, load_samples: bool = True) -> "AnalysisResult":
        """Read ``analysis.json`` (and ``analysis_samples.npz`` beside it, when present and asked for)."""
        path = Path(path)
        if path.is_dir():
            path = path / JSON_NAME
        samples = None
        npz = path.with_name(SAMPLES_NAME)
        if load_samples and npz.is_file():
            samples = load_samples_npz(npz)
        fix = f"re-run `layertrace analyze ... --out {path.parent}`"
        data = read_json_dict(path, fix)
        missing = [k for k in _REQUIRED if k not in data]
        if missing:
            raise LayertraceError(f"{path}: missing key(s) {', '.join(missing)}; it is not an analysis.json, {fix}")
        with reading(path, fix, what="analysis result"):
            return cls.from_dict(data, samples=samples)

    def save(self, out_dir: str | Path) -> Path:
        """Write ``analysis.json`` and (when present) ``analysis_samples.npz`` into ``out_dir``."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        if self.samples:
            write_npz(out / SAMPLES_NAME, **self.samples)
        return self.to_json(out / JSON_NAME)

    # ------------------------------------------------------------------ conveniences
    def layer_table(self) -> str:
        """A small Markdown table: layer, accuracy, COS to last, CKA to last, saturated fraction, fraction
        agreeing with the last layer's prediction."""
        head = ("| layer | accuracy | COS to last | CKA to last | saturated by | agrees with last |\n"
                "|---:|---:|---:|---:|---:|---:|")
        rows = []
        for i, layer in enumerate(self.layers):
            rows.append("| {} | {} | {} | {} | {} | {} |".format(
                layer, _fmt(self.accuracy, i), _fmt(self.cos_to_last, i),
                _fmt(None if self.cka_matrix is None else self.cka_matrix[:, -1], i),
                _fmt(self.saturation_cumulative, i), _fmt(self.final_agreement, i)))
        return "\n".join([head, *rows])


def _fmt(values, i: int) -> str:
    if values is None:
        return "-"
    v = float(values[i])
    return "-" if math.isnan(v) else f"{v:.3f}"


def _float_array(values: Any) -> np.ndarray:
    def conv(v: Any) -> Any:
        if isinstance(v, list):
            return [conv(x) for x in v]
        return np.nan if v is None else v

    return np.asarray(conv(values), dtype=np.float64)


def load_samples_npz(path: str | Path) -> dict[str, np.ndarray]:
    """The per-sample arrays of ``analysis_samples.npz`` as a dict."""
    path = Path(path)
    if not path.is_file():
        raise LayertraceError(f"{path}: file not found; it is written by 'layertrace analyze'")
    with reading(path, f"re-run `layertrace analyze ... --out {path.parent}`", what="per-sample arrays"):
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
