"""Output folders with one owner: what each subcommand may write into, checked before any work.

A training run folder belongs to ``train``: its ``model/``, checkpoints and the ``analysis.json`` /
``exit.json`` that describe *its* model. A model folder (``save_pretrained`` / ``layertrace export``)
belongs to ``export``. The other commands' results (analysis, exit sweep, report, params) may sit
in any folder, but not in a run folder of another model, where a report would take them for that
run's results. :func:`claim_out` refuses, in one line, what would replace or mislabel another
command's results (``--force`` where overwriting can be what the user wants); the file names each
command rewrites are in :data:`OWNED`, for :func:`layertrace.io.result_set` to remove stale ones.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import LayertraceError
from ..io import check_out_dir

# What `layertrace export` writes (a save_pretrained folder, or its layers-K sub-folders).
EXPORT_OWNED = ("config.json", "generation_config.json", "*.safetensors", "preprocess.json", "layertrace_export.json",
                "export-config.yaml", "tokenizer*", "vocab.*", "merges.txt", "special_tokens_map.json",
                "added_tokens.json", "spiece.model", "layers-*")


def model_results() -> tuple[str, ...]:
    """The files of analyze and exit: they describe one model, so a retrained run folder drops them."""
    from ..analysis.run import OWNED as ANALYZE_OWNED
    from ..exits.run import OWNED as EXIT_OWNED

    return ANALYZE_OWNED + EXIT_OWNED


def drop_model_results(folder: Path) -> list[str]:
    """Delete the analyze / exit results in ``folder`` (its model is about to change); returns their names."""
    gone = []
    for pattern in model_results():
        for p in folder.glob(pattern):
            p.unlink()
            gone.append(p.name)
    return gone


def _is_run(folder: Path) -> bool:
    from .. import run_folder

    return run_folder.has_training_state(folder) or (folder / run_folder.MODEL_DIR / "config.json").is_file()


def _is_export(folder: Path) -> bool:
    from ..models.export import EXPORT_INFO_FILE

    return (folder / EXPORT_INFO_FILE).is_file()


def _same_folder(a: str | Path | None, b: Path) -> bool:
    if not a:
        return False
    try:
        return Path(a).expanduser().resolve() == b.resolve()
    except OSError:
        return False


def claim_out(command: str, out: str | Path, *, model: str | None = None, force: bool = False) -> Path:
    """Check that ``command`` may write its results into ``out`` (before any work); returns the path.

    Args:
        command: ``train`` | ``analyze`` | ``exit`` | ``export`` | ``report`` | ``params``.
        out: the ``--out`` folder.
        model: the model the command reads (analyze / exit): a run folder may hold only results of
            its own model.
        force: allow what is refused only because it would overwrite (see each message).

    Raises:
        LayertraceError: not a writable folder (:func:`~layertrace.io.check_out_dir`), or a folder
            owned by another kind of result.
    """
    folder = check_out_dir(out)
    if not folder.is_dir():
        return folder
    if command == "train":
        if (folder / "config.json").is_file():
            raise LayertraceError(
                f"--out {folder} holds a model folder (config.json{', a layertrace export' if _is_export(folder) else ''}); "
                f"a run folder there would be shadowed by it: train into a new --out")
        stale = [p.name for pattern in model_results() for p in folder.glob(pattern)]
        if stale and not (folder / "config.yaml").is_file() and not force:
            raise LayertraceError(
                f"--out {folder} holds results of another model ({', '.join(sorted(stale)[:3])}); train into a new "
                f"--out, or pass --force to train here and delete them")
    elif command == "export":
        if _is_run(folder):
            raise LayertraceError(
                f"--out {folder} is a training run folder; exporting there would replace the run's model: "
                f"export into a new folder, e.g. --out {folder / 'export'}")
        if (folder / "config.json").is_file() and not _is_export(folder) and not force:
            raise LayertraceError(
                f"--out {folder} holds a model that is not a layertrace export; export into a new folder, or "
                f"pass --force to replace it")
    elif command in ("analyze", "exit"):
        if _is_run(folder) and not _same_folder(model, folder) and not force:
            raise LayertraceError(
                f"--out {folder} is the training run folder of another model, whose {command} results it "
                f"holds; write to another --out, pass --model {folder}, or --force")
    return folder
