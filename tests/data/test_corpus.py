"""Plain-text corpora from local files, and chunking token streams into blocks."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from layertrace.data import chunk_tokens, load_text_corpus
from layertrace.errors import LayertraceError


@settings(max_examples=80, deadline=None)
@given(n=st.integers(1, 500), block=st.integers(1, 64))
def test_chunk_tokens_is_consecutive_blocks_without_the_tail(n, block):
    ids = list(range(1000, 1000 + n))
    if n < block:
        with pytest.raises(LayertraceError, match="fewer than one block"):
            chunk_tokens(ids, block)
        return
    blocks = chunk_tokens(ids, block)
    assert blocks.dtype == np.int64 and blocks.shape == (n // block, block)
    for i in range(blocks.shape[0]):  # naive reference
        assert blocks[i].tolist() == ids[i * block:(i + 1) * block]
    assert np.array_equal(chunk_tokens(np.asarray(ids, dtype=np.int32), block), blocks)


def test_chunk_tokens_errors():
    with pytest.raises(LayertraceError, match="block_size"):
        chunk_tokens([1, 2, 3], 0)
    with pytest.raises(LayertraceError, match="1-D"):
        chunk_tokens(np.zeros((2, 8), np.int64), 4)
    with pytest.raises(LayertraceError, match="integer token ids"):
        chunk_tokens(np.zeros(8, np.float32), 4)


def test_local_files_become_paragraph_documents_split_80_10_10(tmp_path):
    text = "\n\n".join(f"Paragraph {i} line one.\nParagraph {i} line two." for i in range(40))
    (tmp_path / "book.txt").write_text(text + "\n\n\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "more.txt").write_text("\n".join(["Extra A.", "", "", "Extra B."]) + "\n\n" + "Paragraph 0 line one.\nParagraph 0 line two.")
    parts = {s: load_text_corpus(tmp_path, s, shuffle=False) for s in ("train", "validation", "test")}
    all_docs = [d for p in parts.values() for d in p]
    assert len(all_docs) == 43 and "Paragraph 7 line one.\nParagraph 7 line two." in all_docs
    assert len(set(all_docs)) == 42  # one paragraph appears in both files ...
    assert sum("Paragraph 0 line one" in d for d in parts["train"]) in (0, 2)  # ... and stays in one split
    assert [len(set(p)) for p in parts.values()] == [34, 4, 4]  # 42 distinct documents, 80/10/10
    assert not (set(parts["train"]) & set(parts["test"]) or set(parts["train"]) & set(parts["validation"]))
    shuffled = load_text_corpus(tmp_path, "train", seed=4)
    assert sorted(shuffled) == sorted(parts["train"]) and shuffled == load_text_corpus(tmp_path, "train", seed=4)
    single = load_text_corpus([tmp_path / "book.txt"], "train", shuffle=False)
    assert len(single) == 32


def test_files_that_name_their_split_are_used_as_is(tmp_path):
    for split, word in (("train", "train"), ("validation", "valid"), ("test", "test")):
        (tmp_path / f"wiki.{word}.raw").write_text(f" = {split} title = \n\n {split} body one \n\n {split} body two \n")
    assert load_text_corpus(tmp_path, "validation", shuffle=False) == [
        "= validation title =", "validation body one", "validation body two"]
    only_train = tmp_path / "only"
    only_train.mkdir()
    (only_train / "train.txt").write_text("x")
    with pytest.raises(LayertraceError, match="is a 'test' file"):
        load_text_corpus(only_train, "test")


def test_corpus_errors(tmp_path):
    with pytest.raises(LayertraceError, match="does not exist"):
        load_text_corpus(tmp_path / "nothing.txt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(LayertraceError, match="no .txt"):
        load_text_corpus(tmp_path / "empty")
    (tmp_path / "blank.txt").write_text("\n\n  \n")
    with pytest.raises(LayertraceError, match="hold no text"):
        load_text_corpus(tmp_path / "blank.txt")
    with pytest.raises(LayertraceError, match="no split 'dev'"):
        load_text_corpus(tmp_path / "blank.txt", "dev")
    with pytest.raises(LayertraceError, match="only apply to 'hf:'"):
        load_text_corpus(tmp_path / "blank.txt", config="x")
