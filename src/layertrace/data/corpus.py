"""Plain-text corpora for causal language models, and fixed-length token blocks.

``load_text_corpus("embedded")`` is the bundled Rotten Tomatoes sentences plus BBC News articles,
with the *same* splits as the classification loaders (so an LM trained on the corpus' train split
has never seen a classification test text). Local ``.txt`` files and HF datasets work too.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from ..errors import LayertraceError
from .base import SPLITS, as_seed, check_split, read_text_file, stratified_split

CORPUS_EXTENSIONS = (".txt", ".raw", ".tokens")
_SPLIT_WORDS = {"train": ("train",), "validation": ("valid", "validation", "val", "dev"), "test": ("test",)}


def _paragraphs(text: str) -> list[str]:
    """Documents of one file: blocks separated by blank lines, stripped, empty ones dropped."""
    blocks, current = [], []
    for line in text.splitlines():
        if line.strip():
            current.append(line.rstrip())
        elif current:
            blocks.append("\n".join(current).strip())
            current = []
    if current:
        blocks.append("\n".join(current).strip())
    return [b for b in blocks if b]


def _split_of_file(path: Path) -> str | None:
    """'train' / 'validation' / 'test' when the file name says so (e.g. wiki.valid.raw), else None."""
    parts = path.name.lower().replace("-", ".").replace("_", ".").split(".")
    for split, words in _SPLIT_WORDS.items():
        if any(w in parts for w in words):
            return split
    return None


def _corpus_files(source: str | os.PathLike | Sequence[str | os.PathLike]) -> list[Path]:
    items = [source] if isinstance(source, (str, os.PathLike)) else list(source)
    files: list[Path] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in CORPUS_EXTENSIONS)
            if not found:
                raise LayertraceError(f"text corpus: no {'/'.join(CORPUS_EXTENSIONS)} files under {p}")
            files.extend(found)
        elif p.is_file():
            files.append(p)
        else:
            raise LayertraceError(
                f"text corpus: {p} does not exist; pass source='embedded', .txt file(s) or a folder of .txt files"
            )
    return files


def _local_corpus(source, split: str, split_seed: int) -> list[str]:
    files = _corpus_files(source)
    named = {f: _split_of_file(f) for f in files}
    if any(named.values()):
        # files name their split (wiki.train.raw, wiki.valid.raw, ...): use exactly those files
        chosen = [f for f in files if named[f] == split]
        if not chosen:
            raise LayertraceError(f"text corpus: none of {[f.name for f in files]} is a {split!r} file")
        return [d for f in chosen for d in _paragraphs(read_text_file(f))]
    documents = [d for f in files for d in _paragraphs(read_text_file(f))]
    if not documents:
        raise LayertraceError(f"text corpus: the files {[str(f) for f in files]} hold no text")
    # identical paragraphs (boilerplate, repeated headers) stay in one split
    index = stratified_split(np.zeros(len(documents), np.int64), split_seed, groups=documents)[SPLITS.index(split)]
    return [documents[i] for i in index]


def load_text_corpus(source: str | os.PathLike | Sequence[str | os.PathLike] = "embedded", split: str = "train",
                     seed: int = 0, *, split_seed: int = 0, shuffle: bool = True, **options) -> list[str]:
    """Documents (``list[str]``) of a text corpus split, for causal-LM training and evaluation.

    source:
      * ``"embedded"``: Rotten Tomatoes labelled sentences + BBC News articles, each source's split
        as in :func:`load_dataset` (RT by movie, BBC per topic; 80/10/10, ``split_seed``):
        train 10,272 + 1,777, validation 1,269 + 222, test 1,267 + 226 documents (``split_seed=0``).
      * a ``.txt`` file, a list of files, or a folder (``.txt``/``.raw``/``.tokens`` files, recursively):
        each file is cut into documents at blank lines. If file names name their split
        (``wiki.train.raw``, ``wiki.valid.raw``, ``wiki.test.raw``) those files are the splits;
        otherwise the documents are split 80/10/10 with ``split_seed`` (identical documents together).
      * ``"hf:<name or save_to_disk folder>"`` with ``config=``/``text_column=`` options (HF datasets;
        empty rows dropped).
    seed: order of the returned documents (a seeded shuffle; ``shuffle=False`` keeps source order).
    """
    check_split("text corpus", split)
    seed, split_seed = as_seed(seed), as_seed(split_seed)
    if isinstance(source, str) and source == "embedded":
        from .text import load_bbc_news, load_rotten_tomatoes

        documents = (load_rotten_tomatoes(split, split_seed=split_seed).texts
                     + load_bbc_news(split, split_seed=split_seed).texts)
    elif isinstance(source, str) and source.startswith("hf:"):
        from .hub import load_hub_corpus

        documents = load_hub_corpus(source, split, split_seed=split_seed, **options)
    else:
        if options:
            raise LayertraceError(f"text corpus: options {sorted(options)} only apply to 'hf:' sources")
        documents = _local_corpus(source, split, split_seed)
    if shuffle:
        order = np.random.default_rng(seed).permutation(len(documents))
        documents = [documents[i] for i in order]
    return list(documents)


def chunk_tokens(token_ids: Iterable[int] | np.ndarray, block_size: int) -> np.ndarray:
    """Cut a 1-D token stream into consecutive blocks: int64 ``(n_blocks, block_size)``.

    ``n_blocks = len(token_ids) // block_size``; the incomplete tail is dropped. Block i is
    ``token_ids[i*block_size:(i+1)*block_size]``.
    """
    if isinstance(block_size, bool) or not isinstance(block_size, (int, np.integer)) or block_size <= 0:
        raise LayertraceError(f"block_size={block_size!r} must be a positive integer")
    ids = np.asarray(token_ids if isinstance(token_ids, np.ndarray) else list(token_ids))
    if ids.ndim != 1:
        raise LayertraceError(f"chunk_tokens needs a 1-D token stream, got shape {ids.shape}; concatenate documents first")
    if ids.size and ids.dtype.kind not in "iu":
        raise LayertraceError(f"chunk_tokens needs integer token ids, got {ids.dtype}")
    if len(ids) < block_size:
        raise LayertraceError(
            f"only {len(ids)} tokens, fewer than one block of {block_size}; use more text or a smaller block_size"
        )
    n_blocks = len(ids) // block_size
    return ids[: n_blocks * block_size].astype(np.int64).reshape(n_blocks, block_size)


def _encode(tokenizer, text: str) -> list[int]:
    """Token ids of ``text`` without the tokenizer's own special tokens (no BOS per document)."""
    try:
        return tokenizer(text, add_special_tokens=False)["input_ids"]
    except TypeError:  # a plain callable ``text -> {"input_ids"}`` adds no special tokens anyway
        return tokenizer(text)["input_ids"]


def token_blocks(tokenizer, documents: Iterable[str], block_size: int, max_blocks: int | None = None) -> np.ndarray:
    """The one corpus -> token-block builder (causal-LM training, analysis and the LM demo track).

    Each document is encoded on its own (``add_special_tokens=False``) and followed by the
    tokenizer's end-of-sequence token, the layout GPT-2 was trained with and the one the LM track's
    numbers depend on; a tokenizer without one separates documents by a blank line (``"\\n\\n"``
    appended to the document). The stream is cut by :func:`chunk_tokens`.

    Args:
        tokenizer: a Hugging Face tokenizer (``__call__`` with ``add_special_tokens``, ``eos_token_id``).
        documents: the texts, in order.
        block_size: tokens per block.
        max_blocks: stop reading documents once this many blocks (plus one) are filled; ``None``: all.
    Returns:
        int64 ``(n_blocks, block_size)``, ``n_blocks <= max_blocks``.
    """
    eos = getattr(tokenizer, "eos_token_id", None)
    stream: list[int] = []
    need = None if max_blocks is None else block_size * (int(max_blocks) + 1)
    for doc in documents:
        if eos is not None:
            stream.extend(_encode(tokenizer, doc))
            stream.append(int(eos))
        else:
            stream.extend(_encode(tokenizer, doc + "\n\n"))
        if need is not None and len(stream) >= need:
            break
    blocks = chunk_tokens(np.asarray(stream, dtype=np.int64), block_size)
    return blocks if max_blocks is None else blocks[: int(max_blocks)]
