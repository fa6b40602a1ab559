"""``ProbeConfig`` / ``probe_from_config``: what ``layertrace probe`` runs (docs/probe.md).

Output folder: ``probe.json`` (:class:`~layertrace.analysis.probe.ProbeResult`) and the resolved
``probe-config.yaml``; with ``compare`` instead: ``probe-comparison.md`` and
``probe-comparison.json`` (the listed folders' ``probe.json`` files in one table).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import save_config
from ..errors import LayertraceError
from ..io import atomic_path, check_out_dir, write_json
from ..readout.probe import DEFAULT_L2, DEFAULT_MAX_ITER, DEFAULT_TOL
from .probe import PROBE_NAME, ProbeResult, comparison_markdown, probe

CONFIG_FILE = "probe-config.yaml"


@dataclass
class ProbeConfig:
    """Everything ``layertrace probe`` needs; ``--config FILE.yaml`` plus ``--key value`` overrides."""

    model: str = field(default="", metadata={
        "help": "preset (vit-demo, minilm-cls, ...), save_pretrained folder or training run folder whose layers are probed"})
    data: str = field(default="", metadata={
        "help": "dataset of the probe's task (any the data layer loads: mnist-5k, bbc-news, fashion-mnist, ...)",
        "aliases": ("data.name",)})
    train_split: str = field(default="train", metadata={"help": "split the probes are fitted on"})
    test_split: str = field(default="test", metadata={"help": "split the probes are scored on"})
    limit_train: int | None = field(default=None, metadata={"help": "fit on N train examples (seeded, class-stratified)",
                                                                "check": ">= 2"})
    limit_test: int | None = field(default=None, metadata={"help": "score on N test examples (seeded, class-stratified)",
                                                               "check": ">= 2"})
    out: str = field(default="", metadata={"help": "output folder: probe.json and probe-config.yaml"})
    layers: Any = field(default=None, metadata={"help": "layer selector: all, an int, '1,4,-1' or '0::2'"})
    l2: float = field(default=DEFAULT_L2, metadata={
        "help": "ridge penalty l2/2 ||W||^2 on standardised features (docs/probe.md)", "check": ">= 0"})
    max_iter: int = field(default=DEFAULT_MAX_ITER, metadata={"help": "L-BFGS iterations per layer at most", "check": ">= 1"})
    tol: float = field(default=DEFAULT_TOL, metadata={"help": "stop when the largest gradient entry is below this",
                                                          "check": "> 0"})
    threads: int | None = field(default=1, metadata={
        "help": "torch CPU threads of each fit (1: fastest for small probes; none: torch's default)", "check": ">= 1"})
    batch_size: int = field(default=64, metadata={"help": "samples per forward pass", "check": ">= 1"})
    max_length: int | None = field(default=None, metadata={"help": "token limit per text (default: the model's)",
                                                           "check": ">= 2", "aliases": ("data.max_length",)})
    data_root: str | None = field(default=None, metadata={"help": "folder of the dataset files (default: embedded copy)",
                                                          "aliases": ("data.root",)})
    loader_kwargs: dict = field(default_factory=dict, metadata={
        "help": "extra options of the dataset loader, as in train: e.g. {validation_size: 500}, {label_column: y}",
        "aliases": ("data.loader_kwargs",)})
    seed: int = field(default=0, metadata={"help": "seeds the limit subsamples and preset init"})
    device: str = field(default="auto", metadata={"help": "auto | cpu | cuda | cuda:N"})
    precision: str = field(default="auto", metadata={"help": "auto (bf16 on GPU, fp32 on CPU) | fp32 | bf16 | fp16",
                                                     "choices": ("auto", "fp32", "bf16", "fp16")})
    compare: list[str] | None = field(default=None, metadata={
        "help": "comma list of folders holding probe.json (standard, aligned, ...): one table instead of a probe run"})


def _check(cfg: ProbeConfig) -> None:
    if cfg.compare:
        if cfg.model:
            raise LayertraceError("give either --model (one probe run) or --compare DIR1,DIR2 (a table), not both")
        return
    if not cfg.model:
        raise LayertraceError("no model given: pass --model (a preset, a model folder or a run folder)")
    if not cfg.data:
        raise LayertraceError("no data given: pass --data (e.g. mnist-5k, bbc-news)")
    if cfg.batch_size < 1:
        raise LayertraceError(f"batch_size={cfg.batch_size} must be at least 1")
    for name in ("limit_train", "limit_test"):
        value = getattr(cfg, name)
        if value is not None and value < 2:
            raise LayertraceError(f"{name}={value} must be at least 2 (omit it to use the whole split)")
    if cfg.l2 < 0:
        raise LayertraceError(f"l2={cfg.l2} must be >= 0")
    if cfg.max_iter < 1:
        raise LayertraceError(f"max_iter={cfg.max_iter} must be at least 1")
    if cfg.tol <= 0:
        raise LayertraceError(f"tol={cfg.tol} must be > 0")


def compare_probes(dirs: list[str]) -> list[tuple[str, ProbeResult]]:
    """``(folder name, ProbeResult)`` of every folder's ``probe.json``, in the order given."""
    out = []
    for d in dirs:
        path = Path(d)
        if not (path / PROBE_NAME).is_file():
            raise LayertraceError(f"{path} holds no {PROBE_NAME}; run 'layertrace probe --out {path}' first")
        out.append((path.name, ProbeResult.from_json(path)))
    return out


def probe_from_config(cfg: ProbeConfig, write: bool = True) -> ProbeResult | list[tuple[str, ProbeResult]]:
    """Run the probes (or, with ``compare``, tabulate existing ones) and write ``cfg.out``."""
    _check(cfg)
    if write:
        check_out_dir(cfg.out)
    if cfg.compare:
        results = compare_probes(list(cfg.compare))
        if write:
            out = Path(cfg.out)
            with atomic_path(out / "probe-comparison.md") as tmp:
                tmp.write_text(comparison_markdown(results), encoding="utf-8")
            write_json(out / "probe-comparison.json", {name: r.to_dict() for name, r in results})
            save_config(cfg, out, name=CONFIG_FILE)
        return results
    from ..data import load_dataset
    from ..models.loading import load_model
    from ..models.presets import PRESETS
    from ..trace import resolve_precision
    from .run import dataset_batches, resolve_device

    device = resolve_device(cfg.device)
    train = load_dataset(cfg.data, cfg.train_split, root=cfg.data_root, seed=cfg.seed, limit=cfg.limit_train,
                         **cfg.loader_kwargs)
    test = load_dataset(cfg.data, cfg.test_split, root=cfg.data_root, seed=cfg.seed, limit=cfg.limit_test,
                        **cfg.loader_kwargs)
    # a preset is built with a head for the probe's classes (unused); a folder keeps its own head
    is_preset = cfg.model in PRESETS and not Path(cfg.model).exists()
    loaded = load_model(cfg.model, num_classes=train.num_classes if is_preset else None, seed=cfg.seed)
    max_length = int(cfg.max_length or (loaded.preprocess or {}).get("max_length") or 128)
    batches = [dataset_batches(ds, loaded, cfg.batch_size, max_length, cfg.model, cfg.data) for ds in (train, test)]
    result = probe(loaded.adapter.to(device), *batches, layers=cfg.layers, num_classes=train.num_classes,
                   l2=cfg.l2, max_iter=cfg.max_iter, tol=cfg.tol, threads=cfg.threads,
                   precision=resolve_precision(cfg.precision, device), model_name=loaded.name or cfg.model,
                   data_name=cfg.data)
    result.config.update(train_split=cfg.train_split, test_split=cfg.test_split, limit_train=cfg.limit_train,
                         limit_test=cfg.limit_test, seed=cfg.seed, device=str(device), batch_size=cfg.batch_size,
                         model_source=getattr(loaded, "source", None))
    if write:
        out = Path(cfg.out)
        result.save(out)
        save_config(cfg, out, name=CONFIG_FILE)
    return result
