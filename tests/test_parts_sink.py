"""Parquet parts folders (what large ``--ray`` runs write) and the crash points of several processes."""

from __future__ import annotations

import os

import pyarrow.parquet as pq
import pytest

from imclass import faults
from imclass.errors import OutputError
from imclass.labelling.sinks import PartsSink, open_sink, read_rows
from imclass.prediction import Prediction


def preds(start: int, n: int, errors: bool = False) -> list[Prediction]:
    if errors:
        return [Prediction(f"img{i}.jpg", error="not an image") for i in range(start, start + n)]
    return [Prediction(f"img{i}.jpg", "cat", 0.9, [("cat", 0.9), ("dog", 0.1)], labels=["cat"],
                       extra={"class_index": [3], "wnid": ["n1"]}) for i in range(start, start + n)]


def test_parts_by_partition_resume_and_one_schema(tmp_path):
    out = tmp_path / "labels.parquet"
    sink = open_sink(out, top_k=2, parts=True, extra_columns=("class_index", "wnid"))
    assert isinstance(sink, PartsSink)
    sink.multi_label = True
    sink.write_part(1, preds(10, 10, errors=True))  # an all-error part first: its schema is still the full one
    sink.write_part(0, preds(0, 10))
    sink.close()
    names = sorted(p.name for p in out.iterdir())
    assert names == ["part-00000.parquet", "part-00001.parquet"]
    table = pq.read_table(out)  # one dataset
    assert table.num_rows == 20 and "labels" in table.column_names
    assert pq.read_schema(out / "part-00001.parquet") == pq.read_schema(out / "part-00000.parquet")
    assert [r["path"] for r in read_rows(out)] == [f"img{i}.jpg" for i in range(20)]
    # resume: the paths of the parts are done; a part for a partition that exists gets a new name
    with pytest.raises(OutputError, match="already exists"):
        open_sink(out, top_k=2)
    again = open_sink(out, top_k=2, resume=True)
    assert isinstance(again, PartsSink) and len(again.done) == 20 and again.errors_before == 10
    again.write_part(1, preds(20, 2))
    again.write(preds(22, 3))  # rows without a partition: numbered parts when closed
    again.close()
    assert {"part-00001-1.parquet", "part-00002.parquet"} <= {p.name for p in out.iterdir()}
    assert pq.read_table(out).num_rows == 25
    # --overwrite removes the parts (only parts: another folder is never removed)
    fresh = open_sink(out, top_k=2, overwrite=True, parts=True)
    fresh.close()
    assert not list(out.iterdir())
    other = tmp_path / "other.parquet"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(OutputError, match="directory"):
        open_sink(other, top_k=2, overwrite=True)
    assert (other / "notes.txt").exists()


def test_a_small_parquet_stays_one_file(tmp_path):
    sink = open_sink(tmp_path / "x.parquet", top_k=2, parts=False)
    sink.write(preds(0, 3))
    sink.close()
    assert (tmp_path / "x.parquet").is_file() and len(read_rows(tmp_path / "x.parquet")) == 3


def test_crash_points_for_one_rank_and_once(tmp_path, monkeypatch):
    killed = []
    monkeypatch.setattr(os, "kill", lambda pid, sig: killed.append(pid))
    monkeypatch.setattr(faults, "_counts", {})
    monkeypatch.setenv(faults.ENV, "finetune.step@1:2")
    monkeypatch.setenv("RANK", "0")
    for _ in range(3):
        faults.checkpoint("finetune.step")
    assert killed == []  # another rank's point
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setattr(faults, "_counts", {})
    faults.checkpoint("finetune.step")
    faults.checkpoint("finetune.step")
    assert killed == [os.getpid()]
    marker = tmp_path / "once"
    monkeypatch.setenv(faults.ENV, "ray.batch:1")
    monkeypatch.setenv(faults.ONCE_ENV, str(marker))
    monkeypatch.setattr(faults, "_counts", {})
    faults.checkpoint("ray.batch")
    monkeypatch.setattr(faults, "_counts", {})  # a restarted process counts from zero: the marker stops it
    faults.checkpoint("ray.batch")
    assert killed == [os.getpid()] * 2 and marker.read_text().strip() == str(os.getpid())
