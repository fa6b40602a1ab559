"""``AnalyzeConfig``: the typed config of ``layertrace analyze`` (YAML keys = these field names).

Its analysis options are not declared here: they are the fields of
:class:`~layertrace.analysis.options.AnalysisOptions` (help text, choices and checks included), so
the library and the CLI can never disagree; only the inputs (model, data, device, ...) and the few
defaults the CLI edge sets differently (``precision`` auto, a progress bar) are written here.
"""

from __future__ import annotations

import typing
from dataclasses import MISSING, dataclass, field, fields, make_dataclass
from typing import Any

from .options import DEFAULT_EPSILONS, AnalysisOptions

# AnalysisOptions fields the CLI exposes, in --help order (the rest are library-only knobs:
# token_chunk, cka_exact_max_gb, shard, tolerance, max_batches, chunk_rows).
CLI_OPTIONS = (
    "layers", "precision", "similarity", "center", "cka", "cache", "cache_ram_gb", "cache_dir", "rbf_cka",
    "procrustes", "extra_max_samples", "epsilons", "tokens_per_sample", "theory", "per_sample", "save_logits",
    "progress", "null_permutations", "null_max_samples", "layer_removal", "layer_removal_samples", "collapse",
)
# (type, default) where the CLI edge differs from the library: "auto" is resolved at the edge, the
# CLI shows a progress bar, YAML gives lists and strings.
_CLI_DEFAULTS: dict[str, tuple[Any, Any]] = {
    "precision": (str, "auto"),
    "progress": (bool, True),
    "epsilons": (list[float], lambda: list(DEFAULT_EPSILONS)),
    "save_logits": (str, "auto"),
}


@dataclass
class _AnalyzeInputs:
    """What to analyse and where (the part of ``AnalyzeConfig`` that is not an analysis option)."""

    model: str = field(default="", metadata={
        "help": "preset name (vit-demo, minilm-cls, gpt2-tiny, ...), save_pretrained folder, or training run folder"})
    data: str = field(default="", metadata={
        "help": "dataset name (fashion-mnist, rotten-tomatoes, ...; causal LMs: a text corpus, e.g. embedded)",
        "aliases": ("data.name",)})
    split: str = field(default="test", metadata={"help": "train | validation | test"})
    limit: int | None = field(default=None, metadata={"help": "analyse N examples (seeded, class-stratified subsample)", "check": ">= 1"})
    out: str = field(default="", metadata={"help": "output folder: analysis.json, analysis_samples.npz, analyze-config.yaml"})
    num_classes: int | None = field(default=None, metadata={
        "help": "classes of the head (presets: default = the dataset's; folders: a different K means a fresh head)", "check": ">= 1"})
    pooling: str | None = field(default=None, metadata={"aliases": ["model.pooling"], "help": (
        "prediction feature: auto (the model's own head's choice) | cls | mean (masked) | last (last non-pad "
        "token); default: a run folder's stored pooling, else auto")})
    final_norm: bool = field(default=True, metadata={"help": "apply the final norm in the shared readout"})
    batch_size: int = field(default=32, metadata={"help": "samples per forward pass", "check": ">= 1"})
    max_length: int | None = field(default=None, metadata={
        "help": "token limit per text / block length for causal LMs (default: the model's preprocessing)", "check": ">= 2",
        "aliases": ("data.max_length",)})
    shift: str | None = field(default=None, metadata={
        "help": "image data: distribution shift of the analysed split, KIND:VALUE joined by '+': rotate:DEG, "
                "noise:SIGMA, contrast:C (e.g. rotate:15+noise:0.1; docs/analysis.md)"})
    shift_seed: int = field(default=0, metadata={"help": "seed of the shift's noise"})
    data_root: str | None = field(default=None, metadata={"help": "folder of the dataset files (default: embedded copy)",
                                                          "aliases": ("data.root",)})
    loader_kwargs: dict = field(default_factory=dict, metadata={
        "help": "extra options of the dataset loader, as in train: e.g. {validation_size: 500}, {label_column: y}",
        "aliases": ("data.loader_kwargs",)})
    seed: int = field(default=0, metadata={"help": "seeds the limit subsample, preset init, token subsample"})
    device: str = field(default="auto", metadata={"help": "auto | cpu | cuda | cuda:N"})


def _option_fields() -> list[tuple[str, Any, Any]]:
    hints = typing.get_type_hints(AnalysisOptions)
    by_name = {f.name: f for f in fields(AnalysisOptions)}
    out = []
    for name in CLI_OPTIONS:
        f = by_name[name]
        kind, default = _CLI_DEFAULTS.get(name, (hints[name], f.default))
        if callable(default):
            spec = field(default_factory=default, metadata=f.metadata)
        else:
            spec = field(default=default if default is not MISSING else None, metadata=f.metadata)
        out.append((name, kind, spec))
    return out


AnalyzeConfig = make_dataclass(
    "AnalyzeConfig", _option_fields(), bases=(_AnalyzeInputs,),
    namespace={"__module__": __name__, "__doc__": (
        "Everything ``layertrace analyze`` needs; ``--config FILE.yaml`` plus ``--key value`` overrides. "
        "The analysis options are AnalysisOptions' fields (analysis/options.py).")})


def analysis_options(cfg: Any, **resolved: Any) -> dict[str, Any]:
    """The :func:`~layertrace.analyze` keywords of an ``AnalyzeConfig`` (``epsilons`` as a tuple), with
    ``resolved`` (e.g. the device's precision) replacing the config's values; ``seed`` included."""
    out = {name: getattr(cfg, name) for name in CLI_OPTIONS}
    out["epsilons"] = tuple(out["epsilons"])
    out["seed"] = cfg.seed
    out.update(resolved)
    return out
