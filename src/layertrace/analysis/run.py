"""``analyze_from_config``: load the model and the data named in an :class:`AnalyzeConfig`, run
:func:`~layertrace.analysis.core.analyze`, and write the output folder.

Output folder (rank 0 writes it):

* ``analysis.json``         - :class:`~layertrace.analysis.result.AnalysisResult` (schema in docs/analysis.md)
* ``analysis_samples.npz``  - the per-sample arrays (``per_sample: true``)
* ``analyze-config.yaml``   - the resolved config (not ``config.yaml``: a training run folder keeps its own)

Launched by ``torchrun`` / ``accelerate launch`` (``WORLD_SIZE > 1``), it joins the process group
(gloo on CPU, nccl on GPU), and :func:`analyze` deals the batches round-robin to the processes.
"""

from __future__ import annotations

import os
from pathlib import Path
import torch

from .. import run_folder
from ..config import save_config
from ..errors import LayertraceError
from ..io import check_out_dir, result_set
from .config import AnalyzeConfig, analysis_options
from .core import analyze
from .dist import DistContext, init_from_env, shutdown
from .result import JSON_NAME, SAMPLES_NAME, AnalysisResult

CONFIG_FILE = run_folder.ANALYSIS_CONFIG  # not config.yaml: a training run folder keeps its own
OWNED = (JSON_NAME, SAMPLES_NAME, CONFIG_FILE)  # what a re-run replaces (stale ones removed)


def resolve_device(device: str) -> torch.device:
    """``"auto"`` -> ``cuda:LOCAL_RANK`` when CUDA is available, else ``cpu``; otherwise as given."""
    text = (device or "auto").lower()
    if text == "auto":
        text = "cuda" if torch.cuda.is_available() else "cpu"
    if text.startswith("cuda"):
        if not torch.cuda.is_available():
            raise LayertraceError(f"device {device!r}: CUDA is not available here; use --device cpu")
        if text == "cuda":
            text = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    try:
        return torch.device(text)
    except RuntimeError:
        raise LayertraceError(f"device {device!r} is not understood; use auto, cpu, cuda or cuda:N") from None


def _check_config(cfg: AnalyzeConfig) -> None:
    if not cfg.model:
        raise LayertraceError("no model given: pass --model (a preset such as minilm-cls, a model folder or a run folder)")
    if not cfg.data:
        raise LayertraceError("no data given: pass --data (e.g. rotten-tomatoes, fashion-mnist; causal LMs: embedded)")
    if cfg.batch_size < 1:
        raise LayertraceError(f"batch_size={cfg.batch_size} must be at least 1")
    if cfg.limit is not None and cfg.limit < 1:
        raise LayertraceError(f"limit={cfg.limit} must be at least 1 (omit it to analyse the whole split)")
    if cfg.cache_dir:
        check_out_dir(cfg.cache_dir, flag="--cache_dir")


def _is_classifier_preset(spec: str) -> bool:
    from ..models.presets import PRESETS

    return spec in PRESETS and PRESETS[spec].kind == "classifier" and not Path(spec).exists()


def load_for_analysis(cfg: AnalyzeConfig):
    """``(loaded_model, batches, data_description)`` for a config (no analysis yet).

    The data loading itself lives in data/ (:mod:`layertrace.data.run_batches`: the split or corpus as
    the batches the model takes); this function stays here because it loads the model too (models/ is
    rank 2, above data/) and checks the two against each other: a classifier preset gets its head
    sized by the dataset's classes, a causal LM reads a corpus, a classifier's classes must match.
    """
    from ..data import load_dataset
    from ..models.loading import load_model

    def split():
        return load_dataset(cfg.data, cfg.split, root=cfg.data_root, seed=cfg.seed, limit=cfg.limit,
                            shift=cfg.shift, shift_seed=cfg.shift_seed, **cfg.loader_kwargs)

    dataset = None
    num_classes = cfg.num_classes
    if _is_classifier_preset(cfg.model):
        dataset = split()
        if num_classes is None:
            num_classes = dataset.num_classes
    loaded = load_model(cfg.model, num_classes=num_classes, final_norm=cfg.final_norm, seed=cfg.seed,
                        pooling=cfg.pooling)
    adapter = loaded.adapter
    pre = loaded.preprocess or {}
    max_length = int(cfg.max_length or pre.get("max_length") or 128)
    if adapter.kind == "causal_lm":
        if cfg.shift:
            raise LayertraceError(f"shift {cfg.shift!r} applies to image datasets, not a causal LM's corpus: drop --shift")
        return loaded, _lm_batches(cfg, loaded, max_length), None
    if dataset is None:
        dataset = split()
    if len(dataset) == 0:
        raise LayertraceError(f"dataset {cfg.data!r} split {cfg.split!r} is empty; pick another split or data_root")
    if adapter.kind == "classifier" and dataset.num_classes != adapter.num_outputs:
        raise LayertraceError(
            f"model {cfg.model!r} has {adapter.num_outputs} output classes but dataset {cfg.data!r} has "
            f"{dataset.num_classes}: pass --num_classes {dataset.num_classes} (a fresh head) or the matching dataset")
    return loaded, dataset_batches(dataset, loaded, cfg.batch_size, max_length, cfg.model, cfg.data), dataset


def dataset_batches(dataset, loaded, batch_size: int, max_length: int, model: str, data: str):
    """:func:`layertrace.data.run_batches.input_batches` of ``dataset`` with the tokenizer and
    preprocessing of ``loaded`` (a :func:`~layertrace.models.loading.load_model` result)."""
    from ..data.run_batches import input_batches

    return input_batches(dataset, batch_size, tokenizer=loaded.tokenizer, preprocess=loaded.preprocess,
                         max_length=max_length, model=model, data=data)


def _lm_batches(cfg: AnalyzeConfig, loaded, block: int):
    """The config's corpus as token blocks of ``block`` tokens for ``loaded``'s tokenizer
    (:func:`layertrace.data.run_batches.corpus_batches`)."""
    from ..data.run_batches import corpus_batches

    if loaded.tokenizer is None:
        raise LayertraceError(f"causal LM {cfg.model!r} has no tokenizer; analyse a run folder that saved one")
    return corpus_batches(loaded.tokenizer, cfg.data_root or cfg.data, cfg.split, block, cfg.batch_size,
                          seed=cfg.seed, max_blocks=cfg.limit, name=cfg.data, **cfg.loader_kwargs)


def analyze_from_config(cfg: AnalyzeConfig, write: bool = True) -> AnalysisResult:
    """Load, analyse, and (rank 0, ``write=True``) write ``cfg.out``. Returns the result.

    Raises:
        LayertraceError: missing model / data / out, class-count or modality mismatch, empty data,
            and everything :func:`analyze` raises.
    """
    from ..trace import resolve_precision

    _check_config(cfg)
    if write:
        check_out_dir(cfg.out)
    device = resolve_device(cfg.device)
    created = init_from_env(str(device))
    try:
        loaded, batches, dataset = load_for_analysis(cfg)
        model = loaded.adapter.to(device)
        precision = resolve_precision(cfg.precision, device)
        result = analyze(model, batches, model_name=loaded.name or cfg.model, data_name=cfg.data,
                         **analysis_options(cfg, precision=precision))
        result.config.update(split=cfg.split, limit=cfg.limit, shift=cfg.shift, shift_seed=cfg.shift_seed,
                             device=str(device), batch_size=cfg.batch_size,
                             model_source=getattr(loaded, "source", None))
        if write and DistContext.current().is_main:
            # the new set replaces the old one: no analysis_samples.npz of an earlier run stays behind
            with result_set(cfg.out, OWNED) as staging:
                result.save(staging)
                save_config(cfg, staging, name=CONFIG_FILE)
        return result
    finally:
        if created:
            shutdown()
