"""`imclass predict` driven as a user would: formats, sorting, kill -9 and resume, exit codes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from conftest import ROOT, SAMPLES, make_image, run_cli
from imclass.labelling.sinks import read_rows

pytestmark = pytest.mark.slow


def test_predict_samples_jsonl_and_sorting(tmp_path):
    out = tmp_path / "pred.jsonl"
    sorted_dir = tmp_path / "sorted"
    r = run_cli("predict", str(SAMPLES), "-o", str(out), "-k", "3", "--sort-into", str(sorted_dir), "--copy")
    assert r.returncode == 0, r.stderr
    rows = {os.path.basename(row["path"]): row for row in read_rows(out)}
    assert set(rows) == {"cameraman.png", "cat.jpg", "coffee.jpg", "palace.jpg"}
    assert rows["coffee.jpg"]["label"] == "espresso"
    assert rows["cat.jpg"]["label"] in {"tabby", "tiger cat", "Egyptian cat"}
    assert all(len(r["topk"]) == 3 and r["error"] is None for r in rows.values())
    # every image copied once under its label; originals untouched
    copied = {p.name: p.parent.name for p in sorted_dir.rglob("*") if p.is_file()}
    assert copied == {name: row["label"] for name, row in rows.items()}
    assert (sorted_dir / "espresso" / "coffee.jpg").read_bytes() == (SAMPLES / "coffee.jpg").read_bytes()
    assert "Labelled 4 images" in r.stderr


def test_quickstart_labels_every_sample_right(tmp_path):
    """The Makefile's quickstart command: the first output a person sees names what is in each photo, the
    results on stdout (also when redirected), with the rates of the bar and the summary in agreement."""
    out = tmp_path / "samples-predictions.csv"
    r = run_cli("predict", "samples", "--top-k", "3", "--out", str(out), "--overwrite", cwd=ROOT)
    assert r.returncode == 0, r.stderr
    labels = {os.path.basename(row["path"]): row["label"] for row in read_rows(out)}
    assert labels["cameraman.png"] == "tripod" and labels["coffee.jpg"] == "espresso"
    assert labels["palace.jpg"] == "palace" and labels["cat.jpg"] in {"tabby", "tiger cat", "Egyptian cat"}
    assert "deprecated" not in r.stderr
    makefile = (ROOT / "Makefile").read_text()
    assert "imclass predict samples --top-k 3 --out samples-predictions.csv --overwrite" in makefile
    r = run_cli("predict", "samples", "-k", "2", cwd=ROOT)  # no --out: the results are the stdout lines
    lines = r.stdout.splitlines()
    assert r.returncode == 0 and len(lines) == 4 and any("espresso" in line for line in lines)
    assert "Labelled 4 images" in r.stderr and "Labelled" not in r.stdout


def test_usage_errors_exit_1(tmp_path):
    r = run_cli("predict", str(tmp_path / "missing"))
    assert r.returncode == 1 and "no such file" in r.stderr and "Traceback" not in r.stderr
    out = tmp_path / "p.csv"
    out.write_text("path,label,score,error\n")
    r = run_cli("predict", str(SAMPLES), "-o", str(out), "-q")
    assert r.returncode == 1 and "--resume" in r.stderr
    r = run_cli("predict", str(SAMPLES), "--top-k", "0")
    assert r.returncode == 1
    r = run_cli("predict", str(SAMPLES), "--streams", "0")
    assert r.returncode == 1 and "--streams" in r.stderr


def _library(root, n):
    rng = np.random.default_rng(0)
    for i in range(n):
        sub = root / f"sub{i % 3}"
        sub.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, size=(96, 128, 3), dtype=np.uint8)).save(sub / f"img_{i:04d}.jpg")
    broken = make_image(root / "broken.jpg")
    broken.write_bytes(broken.read_bytes()[:100])
    return n + 1


@pytest.mark.parametrize("ext", ["csv", "parquet"])
def test_kill_9_then_resume_gives_each_image_once(tmp_path, ext):
    """Killed by SIGKILL right after its 4th batch is written, then after the 3rd batch of the resumed run:
    the final resume still holds every image exactly once (the crash points are exact, not timed)."""
    lib = tmp_path / "lib"
    total = _library(lib, 160)
    out = tmp_path / f"pred.{ext}"
    progress_file = out if ext == "csv" else tmp_path / f"pred.{ext}.partial.jsonl"
    cmd = [sys.executable, "-m", "imclass", "predict", str(lib), "-o", str(out), "-b", "8", "-q", "-w", "1"]
    for attempt, nth in enumerate((4, 3)):
        proc = subprocess.run(cmd + (["--resume"] if attempt else []), capture_output=True, text=True,
                              timeout=300, env={**os.environ, "IMCLASS_KILL_AT": f"label.batch:{nth}"})
        assert proc.returncode == -signal.SIGKILL, proc.stderr
        assert _rows(progress_file) > 0
    assert not out.exists() or ext == "csv"  # parquet is only written when a run completes
    r = subprocess.run([c for c in cmd if c != "-q"] + ["--resume"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2, r.stderr  # the broken file is an error row
    rows = read_rows(out)
    counts = Counter(row["path"] for row in rows)
    assert len(counts) == total and set(counts.values()) == {1}
    errors = [row for row in rows if row["error"]]
    assert [os.path.basename(row["path"]) for row in errors] == ["broken.jpg"]
    assert "already done (resumed)" in r.stderr


def _rows(path) -> int:
    try:
        with open(path, "rb") as f:
            return f.read().count(b"\n")
    except FileNotFoundError:
        return 0


def test_json_stdout_when_no_output(tmp_path):
    r = run_cli("predict", str(SAMPLES / "coffee.jpg"), str(SAMPLES / "cat.jpg"), "--json", "-q", "-k", "2")
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert [os.path.basename(x["path"]) for x in rows] == ["coffee.jpg", "cat.jpg"]
    assert rows[0]["label"] == "espresso" and len(rows[0]["topk"]) == 2
    one = run_cli("predict", str(SAMPLES / "coffee.jpg"), str(SAMPLES / "cat.jpg"), "--json", "-q", "-k", "2",
                  "--streams", "1", "-b", "1")
    again = [json.loads(line) for line in one.stdout.splitlines()]  # one image per call, one call at a time
    assert [(x["path"], x["label"], [t["label"] for t in x["topk"]]) for x in again] == \
        [(x["path"], x["label"], [t["label"] for t in x["topk"]]) for x in rows]
    assert [x["score"] for x in again] == pytest.approx([x["score"] for x in rows], abs=1e-5)
