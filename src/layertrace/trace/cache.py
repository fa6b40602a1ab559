"""A per-sample feature cache: rows of (S, d) float32 features, in RAM or in a file on disk.

The analysis needs every sample's features twice only when an exact statistic depends on the
whole dataset before any sample can be scored: the mean-centred COS (the centre is the mean over
all samples) and the optional RBF CKA / Procrustes matrices. :class:`FeatureCache` keeps those rows

* ``"ram"``  - in memory: n * S * d * 4 bytes (2,000 MiniLM sentences, 7 layers of width 384: 21 MB);
* ``"disk"`` - in a flat float32 file in a temporary folder, read back chunk by chunk, so the
  process memory stays bounded by one chunk whatever n is (the disk holds n * S * d * 4 bytes);
* ``"auto"`` - in memory up to ``ram_limit_bytes``, then the rows spill to a file and every later
  row goes to disk.

Rows keep their insertion order; :meth:`chunks` reads them back as (S, b, d) arrays, the layout
the similarity metrics take.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator, Literal

import numpy as np

CacheMode = Literal["ram", "disk", "auto"]


class FeatureCache:
    """Append-only cache of per-sample multi-layer features.

    Args:
        n_layers: S, traced layers per row.
        dim: d, feature width.
        mode: ``"ram"``, ``"disk"`` or ``"auto"`` (RAM up to ``ram_limit_bytes``, then disk).
        ram_limit_bytes: the RAM budget of ``"auto"``.
        directory: where the disk file's temporary folder is created (default: the system temp dir).

    Use as a context manager (or call :meth:`close`) so the disk file is removed.
    """

    def __init__(self, n_layers: int, dim: int, mode: CacheMode = "auto", ram_limit_bytes: int = 2 << 30,
                 directory: str | os.PathLike | None = None):
        if mode not in ("ram", "disk", "auto"):
            raise ValueError(f"cache mode must be 'ram', 'disk' or 'auto', got {mode!r}")
        self.n_layers = int(n_layers)
        self.dim = int(dim)
        self.mode = mode
        self.ram_limit_bytes = int(ram_limit_bytes)
        self.directory = directory
        self.n_rows = 0
        self._ram: list[np.ndarray] = []
        self._folder: Path | None = None
        self._file = None
        self._path: Path | None = None

    # ------------------------------------------------------------------ writing
    @property
    def row_bytes(self) -> int:
        return self.n_layers * self.dim * 4

    @property
    def on_disk(self) -> bool:
        """True once rows live in the disk file."""
        return self._path is not None

    @property
    def nbytes(self) -> int:
        return self.n_rows * self.row_bytes

    def append(self, features) -> None:
        """Add one batch of rows.

        Args:
            features: (S, b, d) torch tensor or numpy array (any float dtype; stored as float32).
        """
        if hasattr(features, "detach"):
            features = features.detach().float().cpu().numpy()
        rows = np.ascontiguousarray(np.asarray(features, dtype=np.float32).transpose(1, 0, 2))
        if rows.shape[1:] != (self.n_layers, self.dim):
            raise ValueError(f"expected features (S={self.n_layers}, b, d={self.dim}), got {np.asarray(features).shape}")
        if self.mode == "disk" or (self.mode == "auto" and (self.n_rows + len(rows)) * self.row_bytes > self.ram_limit_bytes):
            self._spill()
            self._file.write(rows.tobytes())
        else:
            self._ram.append(rows)
        self.n_rows += len(rows)

    def _spill(self) -> None:
        """Open the disk file (once) and move any RAM rows into it."""
        if self._file is not None:
            return
        self._folder = Path(tempfile.mkdtemp(prefix="layertrace-features-", dir=self.directory))
        self._path = self._folder / "features.f32"
        self._file = open(self._path, "wb")
        for rows in self._ram:
            self._file.write(rows.tobytes())
        self._ram = []

    # ------------------------------------------------------------------ reading
    def _ram_rows(self) -> np.ndarray:
        """The RAM rows as one (n, S, d) array (concatenated once, then kept as one piece)."""
        if not self._ram:
            return np.zeros((0, self.n_layers, self.dim), np.float32)
        if len(self._ram) > 1:
            self._ram = [np.concatenate(self._ram)]
        return self._ram[0]

    def chunks(self, chunk_rows: int = 1024, boundaries: list[int] | None = None) -> Iterator[np.ndarray]:
        """Yield the cached rows in order as float32 arrays of shape (S, b, d).

        Args:
            chunk_rows: rows per chunk (memory per chunk: chunk_rows * S * d * 4 bytes).
            boundaries: optional row counts to yield instead (e.g. the original batch sizes);
                they must sum to ``n_rows``.
        """
        sizes = list(boundaries) if boundaries is not None else [
            min(chunk_rows, self.n_rows - start) for start in range(0, self.n_rows, max(1, chunk_rows))]
        if sum(sizes) != self.n_rows:
            raise ValueError(f"chunk sizes sum to {sum(sizes)}, cache has {self.n_rows} rows")
        if not self.on_disk:
            flat = self._ram_rows()
            start = 0
            for size in sizes:
                yield flat[start:start + size].transpose(1, 0, 2)
                start += size
            return
        self._file.flush()
        with open(self._path, "rb") as fh:
            for size in sizes:
                block = np.fromfile(fh, dtype=np.float32, count=size * self.n_layers * self.dim)
                yield block.reshape(size, self.n_layers, self.dim).transpose(1, 0, 2)

    def array(self) -> np.ndarray:
        """All rows as one (S, n, d) float32 array (in RAM; for the disk cache this reads the file)."""
        parts = list(self.chunks(chunk_rows=max(1, self.n_rows)))
        return parts[0] if parts else np.zeros((self.n_layers, 0, self.dim), np.float32)

    def rows(self, index: np.ndarray) -> np.ndarray:
        """Selected rows (sorted ``index`` into ``0..n_rows-1``) as an (S, k, d) float32 array."""
        index = np.asarray(index, dtype=np.int64)
        if not self.on_disk:
            return self._ram_rows()[index].transpose(1, 0, 2)
        self._file.flush()
        mm = np.memmap(self._path, dtype=np.float32, mode="r", shape=(self.n_rows, self.n_layers, self.dim))
        try:
            return np.array(mm[index]).transpose(1, 0, 2)
        finally:
            del mm

    # ------------------------------------------------------------------ cleanup
    def close(self) -> None:
        """Drop the rows and delete the disk file."""
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._folder is not None:
            shutil.rmtree(self._folder, ignore_errors=True)
            self._folder = None
            self._path = None
        self._ram = []

    def __enter__(self) -> "FeatureCache":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:  # best effort; close() is the contract
        try:
            self.close()
        except Exception:
            pass
