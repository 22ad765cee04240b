"""Output writers: formats, per-batch flushing, torn-record recovery and exactly-once resume."""

from __future__ import annotations

import csv
import json

import pyarrow.parquet as pq
import pytest

from imclass.errors import OutputError
from imclass.labelling.sinks import open_sink, read_rows
from imclass.prediction import Prediction


def preds(names, err_at=()):
    out = []
    for i, n in enumerate(names):
        if i in err_at:
            out.append(Prediction(n, error="corrupt image: boom"))
        else:
            out.append(Prediction(n, "cat", 0.9, [("cat", 0.9), ("dog", 0.05), ("fox", 0.01)]))
    return out


@pytest.mark.parametrize("ext", ["csv", "jsonl", "json", "parquet"])
def test_roundtrip_each_format(tmp_path, ext):
    out = tmp_path / f"p.{ext}"
    names = ["a.jpg", "dir with space/b, c.jpg", "ünï/çødé.png", 'quote"d\nnewline.jpg']
    with open_sink(out, top_k=3) as sink:
        sink.write(preds(names[:2], err_at=(1,)))
        sink.write(preds(names[2:]))
    rows = read_rows(out)
    assert [r["path"] for r in rows] == names
    assert rows[0]["label"] == "cat" and float(rows[0]["score"]) == pytest.approx(0.9)
    assert rows[1]["error"] == "corrupt image: boom" and not rows[1]["label"]
    if ext == "csv":
        assert rows[0]["label_2"] == "dog" and float(rows[0]["score_3"]) == pytest.approx(0.01)
    else:
        assert [t["label"] for t in rows[0]["topk"]] == ["cat", "dog", "fox"]
    assert not (tmp_path / f"p.{ext}.partial.jsonl").exists()


def test_csv_keeps_the_top_guess_of_a_row_without_a_top_label(tmp_path):
    out = tmp_path / "p.csv"
    top = [("cat", 0.4), ("dog", 0.35), ("fox", 0.25)]
    with open_sink(out, top_k=3) as sink:
        sink.write([Prediction("known.jpg", "cat", 0.4, top), Prediction("rejected.jpg", "unknown", 0.4, top),
                    Prediction("tags.jpg", "cat;dog", 0.4, top, labels=["cat", "dog"]),
                    Prediction("none.jpg", "", 0.4, top, labels=[])])
    known, rejected, tags, none = read_rows(out)
    assert (known["label_2"], known["label_3"]) == ("dog", "fox")  # the runners-up
    assert rejected["label"] == "unknown" and (rejected["label_2"], rejected["label_3"]) == ("cat", "dog")
    assert float(rejected["score_2"]) == pytest.approx(0.4)
    assert (tags["label_2"], none["label_2"]) == ("cat", "cat")


def test_existing_output_needs_resume_or_overwrite(tmp_path):
    out = tmp_path / "p.csv"
    with open_sink(out, top_k=1) as s:
        s.write(preds(["a.jpg"]))
    with pytest.raises(OutputError, match="--resume"):
        open_sink(out, top_k=1)
    with open_sink(out, top_k=1, overwrite=True) as s:
        assert s.done == set()
    assert read_rows(out) == []


def test_csv_torn_last_record_is_cut_and_redone(tmp_path):
    out = tmp_path / "p.csv"
    with open_sink(out, top_k=1) as s:
        s.write(preds(["a.jpg", "b.jpg"]))
    with open(out, "a", encoding="utf-8") as f:  # a kill -9 in the middle of writing a record
        f.write('"c with, comma.jpg",ca')
    with open_sink(out, top_k=1, resume=True) as s:
        assert s.done == {"a.jpg", "b.jpg"}
        s.write(preds(["c with, comma.jpg"]))
    assert [r["path"] for r in read_rows(out)] == ["a.jpg", "b.jpg", "c with, comma.jpg"]


def test_csv_torn_inside_quoted_newline(tmp_path):
    out = tmp_path / "p.csv"
    with open_sink(out, top_k=1) as s:
        s.write(preds(["a.jpg"]))
    with open(out, "a", encoding="utf-8") as f:
        f.write('"line\nbreak')  # torn inside a quoted field that contains a newline
    with open_sink(out, top_k=1, resume=True) as s:
        assert s.done == {"a.jpg"}
    with open(out, encoding="utf-8", newline="") as f:
        assert list(csv.reader(f))[-1][0] == "a.jpg"


def test_csv_resume_with_other_top_k_is_refused(tmp_path):
    out = tmp_path / "p.csv"
    with open_sink(out, top_k=3) as s:
        s.write(preds(["a.jpg"]))
    with pytest.raises(OutputError, match="top-k"):
        open_sink(out, top_k=5, resume=True)


def test_jsonl_torn_line_and_error_count(tmp_path):
    out = tmp_path / "p.jsonl"
    with open_sink(out, top_k=2) as s:
        s.write(preds(["a", "b", "c"], err_at=(2,)))
    with open(out, "a", encoding="utf-8") as f:
        f.write('{"path": "d", "lab')
    s = open_sink(out, top_k=2, resume=True)
    assert s.done == {"a", "b", "c"} and s.errors_before == 1
    s.close()
    assert all(json.loads(line) for line in out.read_text().splitlines())


@pytest.mark.parametrize("ext", ["json", "parquet"])
def test_journal_survives_interruption_and_resumes(tmp_path, ext):
    out = tmp_path / f"p.{ext}"
    journal = tmp_path / f"p.{ext}.partial.jsonl"
    with pytest.raises(KeyboardInterrupt), open_sink(out, top_k=2) as s:
        s.write(preds(["a", "b"]))
        raise KeyboardInterrupt
    assert journal.exists() and not out.exists()
    with open_sink(out, top_k=2, resume=True) as s:
        assert s.done == {"a", "b"}
        s.write(preds(["c"]))
    assert [r["path"] for r in read_rows(out)] == ["a", "b", "c"] and not journal.exists()
    # resuming a finished file keeps its rows and appends new ones
    with open_sink(out, top_k=2, resume=True) as s:
        assert s.done == {"a", "b", "c"}
        s.write(preds(["d"]))
    assert [r["path"] for r in read_rows(out)] == ["a", "b", "c", "d"]
    if ext == "parquet":
        assert pq.read_schema(out).field("topk").type.value_type.names == ["label", "score"]


def test_unknown_extension_and_directory(tmp_path):
    with pytest.raises(OutputError, match="unknown output format"):
        open_sink(tmp_path / "p.xlsx", top_k=1)
    with pytest.raises(OutputError, match="directory"):
        open_sink(tmp_path, top_k=1)


@pytest.mark.parametrize("ext", ["jsonl", "json", "parquet"])
def test_multi_label_predictions_keep_labels(tmp_path, ext):
    """A multi-label model's rows carry ``labels`` (every label above its threshold) in every format."""
    out = tmp_path / f"p.{ext}"
    rows_in = [Prediction("a.jpg", "sea;sunset", 0.9, [("sea", 0.9), ("sunset", 0.8), ("trees", 0.1)],
                          labels=["sea", "sunset"]),
               Prediction("b.jpg", "", 0.2, [("trees", 0.2), ("sea", 0.1)], labels=[]),
               Prediction("c.jpg", error="corrupt image: boom")]
    with open_sink(out, top_k=3) as sink:
        sink.write(rows_in)
    rows = read_rows(out)
    assert [r.get("labels") for r in rows] == [["sea", "sunset"], [], None]
    if ext == "parquet":
        assert pq.read_schema(out).field("labels").type.value_type == "string"
