"""Atomic file output: results and checkpoints are never left half-written.

Every writer writes to a temporary file in the destination folder, flushes and fsyncs it, then
renames it over the target (``os.replace`` is atomic on POSIX), so an interrupted run leaves either
the old file or the new one.
"""

from __future__ import annotations

import errno
import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np


def _umask() -> int:
    """The process umask (read without changing it where /proc allows)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# Write errors that are the machine's state, not a bug: a full disk or quota, a read-only mount,
# no permission.
_USER_WRITE_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it over ``path`` atomically.

    The file gets the permissions a plain ``open(path, "w")`` would give (0666 less the umask), not
    the owner-only 0600 of :func:`tempfile.mkstemp`, so a report or a model folder stays readable by
    whoever could read the folder.
    """
    target = Path(path)
    tmp_path = None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        os.close(fd)
        tmp_path = Path(tmp)
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp_path, 0o666 & ~_umask())
        os.replace(tmp_path, target)
    except OSError as exc:
        if exc.errno not in _USER_WRITE_ERRORS:
            raise
        from .errors import LayertraceError

        raise LayertraceError(f"{target}: cannot be written ({exc.strerror}); free space or fix the folder's "
                              f"permissions, then re-run (finished work is kept, a training run resumes)") from exc
    finally:
        if tmp_path is not None and tmp_path.exists():
            tmp_path.unlink()


def to_jsonable(obj: Any) -> Any:
    """Convert numpy / torch values nested in dicts and lists into plain JSON types (NaN -> None)."""
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if hasattr(obj, "detach") and hasattr(obj, "cpu"):  # torch tensor, without importing torch
        obj = obj.detach().cpu().numpy()
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, (np.floating, float)):
        value = float(obj)
        return None if (value != value or value in (float("inf"), float("-inf"))) else value
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, Path):
        return str(obj)
    return obj


def write_json(path: str | os.PathLike, data: Any) -> None:
    """Write ``data`` as indented JSON atomically (numpy / torch values converted)."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(to_jsonable(data), indent=2) + "\n")


def read_json(path: str | os.PathLike, fix: str = "re-create it") -> Any:
    """Read a JSON file; a missing, unreadable or corrupt file raises a one-line LayertraceError
    ending in ``fix`` (what the user should do, e.g. "re-run `layertrace analyze`")."""
    from .errors import LayertraceError

    p = Path(path)
    if not p.is_file():
        raise LayertraceError(f"{p}: file not found")
    try:
        return json.loads(p.read_text())
    except json.JSONDecodeError as exc:
        raise LayertraceError(f"{p}: not valid JSON ({exc.msg} at line {exc.lineno}); {fix}") from None
    except (UnicodeDecodeError, OSError) as exc:
        raise LayertraceError(f"{p}: cannot be read as JSON ({_first_line(exc)}); {fix}") from None


def write_npz(path: str | os.PathLike, **arrays: np.ndarray) -> None:
    """Write numpy arrays to a compressed ``.npz`` atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, **arrays)


# ----------------------------------------------------------------------------- guarded reads
def _read_errors() -> tuple[type[BaseException], ...]:
    """What the file-format libraries raise on a damaged or foreign file (JSON, YAML, numpy,
    safetensors, HF config / weights loading all end in one of these)."""
    import zipfile

    errors: list[type[BaseException]] = [OSError, ValueError, EOFError, KeyError, IndexError, TypeError,
                                          AttributeError, RuntimeError, zipfile.BadZipFile]
    try:
        from safetensors import SafetensorError

        errors.append(SafetensorError)
    except ImportError:  # pragma: no cover - safetensors is a dependency
        pass
    return tuple(errors)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0][:160] if text else type(exc).__name__)


@contextmanager
def reading(path: str | os.PathLike, fix: str, what: str = "file") -> Iterator[None]:
    """The one guarded edge of every load: a library error while reading ``path`` becomes a one-line
    :class:`~layertrace.errors.LayertraceError` naming the file, the cause and ``fix``.

    Wrap only the statements that read the file (``safe_open``, ``from_pretrained``, ``np.load``,
    ``json.loads``), so a bug elsewhere stays an ordinary exception::

        with reading(folder / "heads.safetensors", "re-run the multi-head training", what="heads file"):
            state = load_file(str(folder / "heads.safetensors"))
    """
    from .errors import LayertraceError

    try:
        yield
    except LayertraceError:
        raise
    except _read_errors() as exc:
        raise LayertraceError(f"{path}: {what} cannot be read ({_first_line(exc)}); {fix}") from exc


def read_json_dict(path: str | os.PathLike, fix: str = "re-create it") -> dict:
    """:func:`read_json` of a file that must hold a JSON object (a mapping)."""
    from .errors import LayertraceError

    data = read_json(path, fix)
    if not isinstance(data, dict):
        raise LayertraceError(f"{path}: expected a JSON object, found {type(data).__name__}; {fix}")
    return data


# ----------------------------------------------------------------------------- output paths
# Less free space than this on the output's disk fails before any work (a model folder and its
# checkpoints need several MB; a full disk otherwise fails after the compute, mid-write).
MIN_FREE_BYTES = 64 << 20


def check_out_dir(path: str | os.PathLike, flag: str = "--out", min_free: int = MIN_FREE_BYTES) -> Path:
    """Check, before any work, that ``path`` can become an output folder; returns it as a Path.

    Refuses an existing file, a folder (or nearest existing parent) that cannot be written, and a
    disk with less than ``min_free`` bytes free. Nothing is created.

    Raises:
        LayertraceError: naming ``flag``, the path and the fix.
    """
    from .errors import LayertraceError

    out = Path(path).expanduser()
    if not str(path):
        raise LayertraceError(f"no output folder: pass {flag} DIR")
    if out.exists() and not out.is_dir():
        raise LayertraceError(f"{flag} {out} is an existing file, not a folder; give a folder path")
    probe = out
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir():
        raise LayertraceError(f"{flag} {out}: {probe} is a file, so the folder cannot be created there; "
                              f"give another path")
    try:  # really try (permissions, a read-only mount, a root user for whom os.access says yes)
        if not os.access(probe, os.W_OK | os.X_OK):
            raise PermissionError("no write permission")
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as exc:
        raise LayertraceError(f"{flag} {out}: {probe} is not writable ({exc.strerror or exc}); "
                              f"give a folder you can write to") from None
    import shutil

    free = shutil.disk_usage(probe).free
    if free < min_free:
        raise LayertraceError(f"{flag} {out}: only {free >> 20} MiB free on that disk; free some space or "
                              f"write elsewhere")
    return out


def check_out_file(path: str | os.PathLike, flag: str = "--out", min_free: int = MIN_FREE_BYTES) -> Path:
    """:func:`check_out_dir` for an output *file*: its folder must be creatable and ``path`` must
    not be an existing folder."""
    from .errors import LayertraceError

    out = Path(path).expanduser()
    if out.is_dir():
        raise LayertraceError(f"{flag} {out} is an existing folder; give a file path, e.g. {out / 'report.html'}")
    check_out_dir(out.parent if str(out.parent) else Path("."), flag=flag, min_free=min_free)
    return out


def check_safetensors(path: str | os.PathLike, fix: str, what: str = "weights file") -> None:
    """Read the header of a ``.safetensors`` file (cheap: no tensor data), so a truncated, empty or
    foreign file fails in one line naming it (the libraries' own errors do not name the file)."""
    from safetensors import safe_open

    with reading(path, fix, what=what):
        with safe_open(str(path), framework="pt") as fh:
            fh.keys()


# ----------------------------------------------------------------------------- result sets
@contextmanager
def result_set(out: str | os.PathLike, owned: Iterable[str] = ()) -> Iterator[Path]:
    """Write a command's new set of results, then swap it in.

    Yields an empty staging folder inside ``out``. When the block succeeds, every entry written
    there replaces its namesake in ``out`` (each an atomic ``os.replace``; a folder replaces the
    old folder), then the entries of ``out`` matching the glob patterns ``owned`` (the command's
    own result names) that the new set lacks are deleted: a re-run leaves no stale file of the
    previous one beside the new results. When the block fails, ``out`` is left as it was.
    """
    import shutil

    target = Path(out)
    target.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=target))
    try:
        yield staging
        new = sorted(staging.iterdir())
        for entry in new:
            dest = target / entry.name
            if dest.is_dir() and not dest.is_symlink():
                shutil.rmtree(dest)
            os.replace(entry, dest)
        names = {entry.name for entry in new}
        for pattern in owned:
            for stale in target.glob(pattern):
                if stale.name in names or stale.name.startswith(".staging-"):
                    continue
                if stale.is_dir() and not stale.is_symlink():
                    shutil.rmtree(stale)
                else:
                    stale.unlink()
    finally:
        shutil.rmtree(staging, ignore_errors=True)
