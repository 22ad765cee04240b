"""``imclass predict --ray`` and ``imclass.distributed``: on a local Ray instance (2 CPUs, small object store), the
output is the single-process output (same rows, order, error rows), every image exactly once, through resumes,
Parquet parts and an actor killed mid-run; embeddings computed on Ray land in the embedding cache.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import SAMPLES, run_cli

ray = pytest.importorskip("ray")  # the [ray] extra: part of [dev], so this never skips under `make test`

from imclass import distributed  # noqa: E402
from imclass.labelling.sinks import read_rows  # noqa: E402

pytestmark = pytest.mark.slow  # starts Ray or a studio runner, or takes seconds


@pytest.fixture(scope="module")
def ray_local():
    """One local Ray instance for the module: 2 CPUs, a 100 MB object store, no dashboard."""
    if ray.is_initialized():
        ray.shutdown()
    ray.init(num_cpus=2, object_store_memory=100 * 1024 * 1024, include_dashboard=False, log_to_driver=False,
             logging_level="ERROR")
    yield
    ray.shutdown()


def make_library(root: Path, n: int = 40) -> Path:
    """Small photos of several kinds, in folders, plus the awkward names and broken files of real libraries."""
    rng = np.random.default_rng(0)
    photos = [Image.open(SAMPLES / name).convert("RGB") for name in ("cat.jpg", "coffee.jpg", "palace.jpg")]
    for i in range(n):
        folder = root / f"set{i % 3}"
        folder.mkdir(parents=True, exist_ok=True)
        img = photos[i % 3].resize((96 + i, 80 + i // 2))
        arr = np.clip(np.asarray(img, dtype=np.int16) + rng.integers(-20, 20, (img.height, img.width, 3)), 0, 255)
        Image.fromarray(arr.astype(np.uint8)).save(folder / f"img {i:03d}.jpg", quality=85)
    (root / "odd").mkdir()
    shutil.copy(SAMPLES / "cat.jpg", root / "odd" / "café, menu:1 #2.jpg")
    shutil.copy(SAMPLES / "coffee.jpg", root / "odd" / "_underscore.jpg")
    (root / "odd" / "empty.jpg").write_bytes(b"")
    data = (SAMPLES / "palace.jpg").read_bytes()
    (root / "odd" / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (root / "odd" / "notes.png").write_text("not an image\n", encoding="utf-8")
    (root / "odd" / "gone.jpg").symlink_to(root / "odd" / "deleted-before-the-run.jpg")
    return root


@pytest.fixture(scope="module")
def library(tmp_path_factory):
    return make_library(tmp_path_factory.mktemp("ray-lib") / "photos")


@pytest.fixture(scope="module")
def reference(library, tmp_path_factory):
    """The single-process output of the library (the one to match)."""
    import imclass

    out = tmp_path_factory.mktemp("ray-ref") / "single.csv"
    imclass.label_library([library], output=out, ids=True, top_k=3)
    return read_rows(out)


def assert_same_rows(got: list[dict], want: list[dict], ordered: bool = True) -> None:
    """Same paths (each once; in order when ``ordered``), same labels and error rows, scores within 1e-5."""
    paths = [r["path"] for r in got]
    assert not [p for p, n in Counter(paths).items() if n > 1], "a path was written more than once"
    if ordered:
        assert paths == [r["path"] for r in want]
    else:
        assert sorted(paths) == sorted(r["path"] for r in want)
    by_path = {r["path"]: r for r in want}
    for row in got:
        ref = by_path[row["path"]]
        for key in [k for k in ref if k.startswith("label") or k in ("error", "class_index", "wnid")]:
            assert _text(row.get(key)) == _text(ref[key]), (row["path"], key, row.get(key), ref[key])
        for key in [k for k in ref if k.startswith("score")]:
            if ref[key] not in ("", None):
                assert abs(float(row[key]) - float(ref[key])) <= 1e-5, (row["path"], key)


def _text(v) -> str:
    return "" if v is None else str(v)


def test_ray_output_is_the_single_process_output(ray_local, library, reference, tmp_path):
    out = tmp_path / "ray.csv"
    s = distributed.predict([library], output=out, ids=True, top_k=3, actors=2)
    rows = read_rows(out)
    assert_same_rows(rows, reference)
    errors = {os.path.basename(r["path"]): r["error"] for r in rows if r["error"]}
    assert errors == {"empty.jpg": "empty file (0 bytes)", "gone.jpg": "broken symlink",
                      "truncated.jpg": "corrupt image: truncated or corrupt image data",
                      "notes.png": "not an image (unrecognised file format)"}
    assert s.processed == len(reference) and s.errors == 4 and s.skipped == 0
    assert s.driver_labelled == 0  # odd names too (spaces, commas, ':', '#', a leading '_') were read by Ray
    assert s.plan.startswith("2 actors") and s.cluster == "existing"


def test_ray_parquet_parts_resume_and_exactly_once(ray_local, library, reference, tmp_path):
    out = tmp_path / "labels.parquet"
    s = distributed.predict([library], output=out, ids=True, top_k=3, part_rows=10)
    assert out.is_dir() and s.parts == -(-len(reference) // 10)
    import pyarrow.parquet as pq

    table = pq.read_table(out)  # pyarrow reads the folder as one dataset
    assert table.num_rows == len(reference)
    assert {"topk", "class_index", "wnid"} <= set(table.column_names)
    assert_same_rows([_flat(r) for r in table.to_pylist()], reference)
    # an interrupted run: two parts missing, one half-written temporary left behind; --resume redoes just them
    parts = sorted(out.glob("part-*.parquet"))
    lost = sum(pq.read_table(p).num_rows for p in (parts[1], parts[-1]))
    for p in (parts[1], parts[-1]):
        p.unlink()
    (out / ".part-00002.parquet.123-4.tmp").write_bytes(b"PAR1 torn")
    s = distributed.predict([library], output=out, ids=True, top_k=3, part_rows=10, resume=True)
    assert s.processed == lost and s.skipped == len(reference) - lost and s.parts == 2
    assert sorted(p.name for p in out.glob("part-*.parquet")) == [p.name for p in parts]
    assert_same_rows([_flat(r) for r in read_rows(out)], reference)
    # a finished output: nothing to do; one process can resume a folder of parts as well
    import imclass

    assert distributed.predict([library], output=out, part_rows=10, resume=True, ids=True, top_k=3).processed == 0
    assert imclass.label_library([library], output=out, resume=True, ids=True, top_k=3).processed == 0
    with pytest.raises(imclass.ImclassError, match="already exists"):
        distributed.predict([library], output=out, part_rows=10)


def test_ray_resume_of_a_csv_written_by_one_process(ray_local, library, reference, tmp_path):
    out = tmp_path / "half.csv"
    with open(out, "w", encoding="utf-8", newline="") as f:  # half the rows, and a torn last record
        w = csv.DictWriter(f, fieldnames=list(reference[0]), lineterminator="\n")
        w.writeheader()
        w.writerows(reference[:17])
        f.write(reference[17]["path"][:10])
    s = distributed.predict([library], output=out, ids=True, top_k=3, resume=True)
    assert s.skipped == 17 and s.processed == len(reference) - 17
    assert_same_rows(read_rows(out), reference)


def test_ray_dataset_input_and_predictions(ray_local, library, reference, tmp_path):
    """A Ray Dataset of bytes (read_binary_files) in: the same rows, each path once, in arrival order."""
    readable = [r["path"] for r in reference if not r["error"]]
    ds = ray.data.read_binary_files(readable, include_paths=True)
    out = tmp_path / "from-dataset.jsonl"
    s = distributed.predict(ds, output=out, ids=True, top_k=3)
    assert s.processed == len(readable)
    want = [r for r in reference if not r["error"]]
    assert_same_rows([_flat(r) for r in read_rows(out)], want, ordered=False)
    # resume: nothing left; the lazy building block gives the Parquet schema
    assert distributed.predict(ds, output=out, ids=True, top_k=3, resume=True).processed == 0
    lazy = distributed.predictions(ray.data.read_binary_files(readable[:3], include_paths=True), top_k=2)
    rows = lazy.take_all()
    assert sorted(r["path"] for r in rows) == sorted(readable[:3])
    assert all(len(r["topk"]) == 2 and r["error"] is None for r in rows)


def test_ray_embeddings_land_in_the_cache(ray_local, library, tmp_path):
    from imclass.features import Embedder, EmbeddingCache

    paths = sorted(str(p) for p in library.glob("set*/*.jpg"))
    cache = EmbeddingCache(tmp_path / "emb.sqlite3")
    s = distributed.embed([*paths, str(library / "odd" / "gone.jpg")], model="default", cache=cache, local_below=0)
    assert s.plan.startswith("2 actors")
    assert s.computed == len(paths) and s.errors == {str(library / "odd" / "gone.jpg"): "broken symlink"}
    import hashlib

    shas = [hashlib.sha256(Path(p).read_bytes()).hexdigest() for p in paths]
    cached = Embedder("default", cache=cache).embed(paths, shas)
    assert cached.computed == 0 and cached.ok.all()  # every vector came from the cache
    local = Embedder("default", cache=False).embed(paths[:6])
    assert np.abs(cached.vectors[:6] - local.vectors).max() < 1e-4
    # again, with hashes: nothing is read; without: read and hashed on Ray, nothing embedded
    assert distributed.embed(paths, shas, cache=cache, local_below=0).cached == len(paths)
    again = distributed.embed(paths, cache=cache, local_below=0)
    assert again.computed == 0 and again.cached == len(paths)


def test_ray_bad_arguments(ray_local, library, tmp_path):
    import imclass

    with pytest.raises(imclass.ParameterError, match="gpus_per_actor"):
        distributed.predict([library], gpus_per_actor=1, device="cpu")
    with pytest.raises(imclass.ImclassError, match="GPUs"):
        distributed.predict([library], gpus_per_actor=1)
    with pytest.raises(imclass.ImclassError, match="do not fit"):
        distributed.predict([library], actors=2, cpus_per_actor=2)
    with pytest.raises(imclass.ImclassError, match="no such file"):
        distributed.predict([tmp_path / "nothing-here"])
    with pytest.raises(imclass.ParameterError, match="resume"):
        distributed.predict([library], resume=True)


# ---- the CLI, as a user runs it (each run starts its own local Ray instance) --------------------------------

@pytest.mark.slow
def test_cli_ray_bad_inputs_give_the_same_error_rows(tmp_path):
    """The bad-input library of tests/test_bad_inputs_cli.py, unreadable file included: ``--ray`` writes the
    rows the single process writes."""
    from test_bad_inputs_cli import UNREADABLE, build_library, unreadable_strategy

    lib = tmp_path / "library"
    build_library(lib)
    kwargs, how = unreadable_strategy(tmp_path)
    if kwargs is not None:
        shutil.copy(SAMPLES / "cat.jpg", lib / UNREADABLE[0])
        (lib / UNREADABLE[0]).chmod(0)
    try:
        one = run_cli("predict", str(lib), "-o", str(tmp_path / "one.csv"), "-q", **(kwargs or {}))
        many = run_cli("predict", str(lib), "--ray", "--actors", "2", "-o", str(tmp_path / "ray.csv"), "--json",
                       **(kwargs or {}))
    finally:
        if kwargs is not None:
            (lib / UNREADABLE[0]).chmod(0o644)
    assert one.returncode == 2 and many.returncode == 2, many.stderr[-3000:]
    assert "Traceback" not in many.stderr and "Ray: 2 actors" in many.stderr, many.stderr[-3000:]
    want, got = read_rows(tmp_path / "one.csv"), read_rows(tmp_path / "ray.csv")
    assert_same_rows(got, want)
    printed = [json.loads(line) for line in many.stdout.splitlines() if line.strip()]  # --json: rows on stdout too
    assert_same_rows([_flat(row) for row in printed], want, ordered=False)
    if kwargs is not None:
        row = next(r for r in got if r["path"].endswith(UNREADABLE[0]))
        assert row["error"] == UNREADABLE[1], (how, row)


@pytest.mark.slow
def test_cli_ray_actor_killed_mid_run(tmp_path):
    """SIGKILL of an actor after the first part is written and before the last: the run finishes, every image is
    in the output once, and the output is the single-process one."""
    lib = make_library(tmp_path / "photos", n=420)
    out, marker = tmp_path / "labels.parquet", tmp_path / "killed"
    r = run_cli("predict", str(lib), "--ray", "--actors", "2", "-o", str(out), "--part-rows", "40", "-q",
                env_extra={"IMCLASS_KILL_AT": "ray.batch:3", "IMCLASS_KILL_ONCE": str(marker)})
    assert r.returncode == 2, r.stderr[-3000:]  # the broken files of the library
    assert marker.exists(), "no actor was killed"
    parts = sorted(out.glob("part-*.parquet"), key=lambda p: p.stat().st_mtime_ns)
    killed_at = marker.stat().st_mtime_ns
    assert parts[0].stat().st_mtime_ns <= killed_at <= parts[-1].stat().st_mtime_ns, "not killed mid-run"
    one = run_cli("predict", str(lib), "-o", str(tmp_path / "one.csv"), "-q")
    assert one.returncode == 2
    assert_same_rows([_flat(row) for row in read_rows(out)], read_rows(tmp_path / "one.csv"))


@pytest.mark.slow
def test_cli_ray_flags_need_ray():
    r = run_cli("predict", str(SAMPLES), "--actors", "2", "--ray-address", "auto")
    assert r.returncode == 1 and "--ray-address, --actors only apply with --ray" in r.stderr, r.stderr
    r = run_cli("train", str(SAMPLES), "--mode", "finetune", "--ray", "-o", "unused")
    assert r.returncode == 1 and "fine-tuning scales with --devices" in r.stderr, r.stderr


def _flat(row: dict) -> dict:
    """A JSONL/Parquet row with the CSV's ranking columns (label_2, score_2, ...) for comparison."""
    out = {k: row.get(k) for k in ("path", "label", "score", "error", "class_index", "wnid")}
    topk = row.get("topk") or []
    rest = topk[1:] if topk and topk[0]["label"] == row["label"] else topk
    for i, t in enumerate(rest, start=2):
        out[f"label_{i}"], out[f"score_{i}"] = t["label"], t["score"]
    return out



def test_cli_probe_and_audit_embed_on_ray(ray_local, tmp_path, capsys):
    """``imclass train --ray`` computes the probe's embeddings on Ray into the cache; ``imclass data audit --ray``
    then finds them all there (nothing left to compute)."""
    from imclass.cli import main
    from imclass.features import Embedder, EmbeddingCache
    from imclass.features.cache import default_path

    rng = np.random.default_rng(1)
    for name, colour in {"red": (200, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 200)}.items():
        (tmp_path / "data" / name).mkdir(parents=True)
        for i in range(22):  # 66 files: enough to go to Ray (distributed.embeddings.MIN_REMOTE)
            arr = np.clip(np.array(colour) + rng.normal(0, 50, (48, 48, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(arr).save(tmp_path / "data" / name / f"{i}.png")
    key = Embedder("default").key  # the backbone's vectors (the run may cache other features of its own)
    before = EmbeddingCache(default_path()).count(key)
    assert main(["train", str(tmp_path / "data"), "--ray", "--actors", "1", "-o", str(tmp_path / "run"), "-q"]) == 0
    assert EmbeddingCache(default_path()).count(key) == before + 66
    assert (tmp_path / "run" / "imclass.json").exists()
    assert main(["data", "audit", str(tmp_path / "data"), "--ray", "--no-label-check", "--json"]) == 0
    assert EmbeddingCache(default_path()).count(key) == before + 66
    assert json.loads(capsys.readouterr().out)["dataset"]["images"] == 66


def test_ray_rows_of_a_hierarchy_model_carry_label_path_and_known_score(ray_local, tmp_path):
    """The columns a model's rows carry (label_path, known_score) are the single-process output's on Ray too."""
    import imclass
    from test_hierarchy import LEAVES
    from test_train import blob_image

    rng = np.random.default_rng(0)
    for leaf, colour in LEAVES.items():
        for i in range(8):
            blob_image(tmp_path / "tree" / leaf / f"{i}.jpg", colour, rng)
    imclass.train(tmp_path / "tree", out=tmp_path / "run", mode="probe", hierarchy=True, seed=0)
    imclass.label_library([tmp_path / "tree"], model=str(tmp_path / "run"), output=tmp_path / "one.csv")
    distributed.predict([tmp_path / "tree"], model=str(tmp_path / "run"), output=tmp_path / "ray.csv", actors=1)
    want, got = read_rows(tmp_path / "one.csv"), read_rows(tmp_path / "ray.csv")
    assert "label_path" in got[0] and "known_score" in got[0]
    by_path = {r["path"]: r for r in want}
    assert all(r["label_path"] == by_path[r["path"]]["label_path"] for r in got)
    assert any(r["label_path"].startswith("sports>dance>") for r in got)
