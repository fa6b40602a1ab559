"""Atomic writes: the file appears whole or not at all, with the permissions a plain open() gives."""

from __future__ import annotations

import os
import stat

import pytest

from layertrace.io import atomic_path, read_json, write_json


def test_atomic_write_has_plain_open_permissions(tmp_path):
    old = os.umask(0o027)
    try:
        write_json(tmp_path / "a.json", {"x": 1})
        with open(tmp_path / "plain.txt", "w") as fh:  # the reference: what open() gives under this umask
            fh.write("x")
    finally:
        os.umask(old)
    mode = stat.S_IMODE((tmp_path / "a.json").stat().st_mode)
    assert mode == stat.S_IMODE((tmp_path / "plain.txt").stat().st_mode) == 0o640
    assert read_json(tmp_path / "a.json") == {"x": 1}


def test_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "r.json"
    write_json(target, {"v": 1})
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("{half")
            raise RuntimeError("interrupted")
    assert read_json(target) == {"v": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json"]


def test_a_full_disk_while_writing_is_one_line_error_and_leaves_the_old_file(tmp_path):
    """ENOSPC in the middle of an atomic write: a LayertraceError naming the file, no temp file left,
    the previous content intact."""
    import errno

    import pytest

    from layertrace.errors import LayertraceError
    from layertrace.io import atomic_path

    target = tmp_path / "result.json"
    target.write_text("old\n")
    with pytest.raises(LayertraceError, match="result.json: cannot be written .*free space"):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise OSError(errno.ENOSPC, "No space left on device")
    assert target.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["result.json"]
