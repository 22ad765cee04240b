"""``imclass.data.clean`` and ``imclass.data.resize``: new folders, originals untouched, re-importable output."""

from __future__ import annotations

import csv
import hashlib
import os
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from imclass.data import DatasetError, clean, load_dataset, resize
from imclass.data.clean import parse_drop
from imclass.data.resize import is_complete
from imclass.errors import ParameterError
from synthetic_datasets import make_clean, photo, plant_faults, save


def _tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture()
def faulty(tmp_path):
    root = tmp_path / "data"
    make_clean(root, per_class=6)
    return root, plant_faults(root)


def _excluded(out: Path) -> dict[str, str]:
    with open(out / "excluded.csv", newline="") as f:
        return {r["path"]: r["reason"] for r in csv.DictReader(f)}


def test_clean_default_drops_links_and_keeps_one_per_duplicate_group(faulty, tmp_path):
    root, p = faulty
    before = _tree_digest(root)
    out = tmp_path / "clean"
    res = clean(root, out, embeddings=False, cache=False)
    assert _tree_digest(root) == before  # originals untouched
    excluded = _excluded(out)
    kept = load_dataset(out / "manifest.csv")
    kept_names = {os.path.relpath(os.path.realpath(x), root) for x in kept.paths}
    assert len(kept) == len(res.dataset) == len(load_dataset(root)) - len(excluded)
    for bad in p.corrupt + p.non_images:
        assert bad in excluded and os.path.relpath(bad, root) not in kept_names
    for group in p.conflicts:  # label unknown: every copy goes
        assert all("conflicting labels" in excluded[x] for x in group)
    dup_only = [g for g in p.exact_duplicates if g not in p.conflicts]
    for group in dup_only:  # plain duplicates and leaks keep exactly one file
        assert sum(os.path.relpath(x, root) in kept_names for x in group) == 1
    leak_b = next(g for g in p.leaks if any("leak_b" in x for x in g))
    assert str(root / "train" / "dog" / "leak_b.jpg") not in excluded  # the training copy stays
    assert any("leak" in excluded[x] or "duplicate" in excluded[x] for x in leak_b if x in excluded)
    # links, same folder structure, manifest re-imports to the same content
    files = [f for f in out.rglob("*.jpg")]
    assert files and all(f.is_symlink() for f in files)
    assert (out / "train" / "cat").is_dir() and (out / "val" / "dog").is_dir()
    assert set(kept.table["sha256"]) <= set(load_dataset(root).table["sha256"])
    assert set(kept.table["split"]) == {"train", "val"}


def test_clean_copy_mode_and_chosen_drops(faulty, tmp_path):
    root, p = faulty
    out = tmp_path / "copied"
    res = clean(root, out, drop="corrupt,tiny,odd-aspect,wrong-extension", mode="copy", embeddings=False,
                cache=False)
    files = [f for f in out.rglob("*") if f.is_file() and f.suffix in (".jpg", ".png")]
    assert files and not any(f.is_symlink() for f in files)
    excluded = _excluded(out)
    assert set(excluded) == set(p.corrupt + p.tiny + p.odd_aspect + p.wrong_extension)
    assert "wrong extension: PNG file named .jpg" in excluded[p.wrong_extension[0]]
    assert res.to_dict()["reasons"]["corrupt"] == len(p.corrupt)
    # duplicates were not asked to be dropped: all copies stay
    assert all(str(out / Path(x).relative_to(root)) in res.dataset.paths for g in p.exact_duplicates for x in g)


def test_clean_refuses_unsafe_targets(faulty, tmp_path):
    root, _ = faulty
    with pytest.raises(DatasetError, match="own folder"):
        clean(root, root, embeddings=False, cache=False)
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "x.txt").write_text("x")
    with pytest.raises(DatasetError, match="not empty"):
        clean(root, busy, embeddings=False, cache=False)
    with pytest.raises(ParameterError, match="drop has unknown choices typos"):
        parse_drop("corrupt,typos")
    assert parse_drop("all")[0] == "corrupt" and parse_drop("label_errors") == ("label-errors",)


def test_clean_csv_multi_label_round_trip(tmp_path):
    rows = []
    for k in range(12):
        save(photo(k), tmp_path / "src" / "images" / f"{k}.jpg")
        rows.append({"filename": f"{k}.jpg", "labels": "sea sky" if k % 3 else "sky", "split": "train"})
    (tmp_path / "src" / "images" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 nope")
    rows.append({"filename": "broken.jpg", "labels": "sea", "split": "val"})
    pd.DataFrame(rows).to_csv(tmp_path / "src" / "labels.csv", index=False)
    res = clean(tmp_path / "src" / "labels.csv", tmp_path / "out", embeddings=False, cache=False)
    again = load_dataset(tmp_path / "out" / "manifest.csv")
    assert again.multi_label and len(again) == 12
    assert (tmp_path / "out" / "images" / "3.jpg").is_symlink()
    assert sorted(map(tuple, again.table["labels"])) == sorted(map(tuple, res.dataset.table["labels"]))


# ---- resize -------------------------------------------------------------------------------------------

def _oriented_jpeg(path: Path, size=(60, 40), orientation: int = 6) -> Path:
    img = photo(7, size)
    exif = Image.Exif()
    exif[0x0112] = orientation  # 6: rotate 90 degrees clockwise to display
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, "JPEG", exif=exif, quality=92)
    return path


def test_resize_shortest_side_keeps_folders_and_reports_unreadable(tmp_path):
    src = tmp_path / "src"
    save(photo(1, (120, 80)), src / "train" / "cat" / "wide.jpg")
    save(photo(2, (50, 90)), src / "train" / "dog" / "tall.png", fmt="PNG")
    _oriented_jpeg(src / "val" / "cat" / "rotated.jpg")
    (src / "val" / "dog").mkdir(parents=True)
    (src / "val" / "dog" / "bad.jpg").write_bytes(b"not a jpeg")
    calls = []
    res = resize(src, tmp_path / "out", size=32, progress=lambda d, t: calls.append((d, t)))
    assert res.written == 3 and [x["path"] for x in res.failed] == [str(src / "val" / "dog" / "bad.jpg")]
    sizes = {p.relative_to(tmp_path / "out").as_posix(): Image.open(p).size for p in (tmp_path / "out").rglob("*.*")}
    assert sizes == {"train/cat/wide.jpg": (48, 32), "train/dog/tall.png": (32, 58), "val/cat/rotated.jpg": (32, 48)}
    assert Image.open(tmp_path / "out" / "train" / "dog" / "tall.png").format == "PNG"
    assert calls[-1] == (4, 4)
    assert load_dataset(tmp_path / "out").table["split"].tolist().count("train") == 2


def test_resize_crop_and_resume(tmp_path):
    src = tmp_path / "src"
    for k in range(4):
        save(photo(k, (100 + 10 * k, 70)), src / "a" / f"{k}.jpg")
    out = tmp_path / "out"
    first = resize(src, out, size=40, crop=32)
    assert first.written == 4 and all(Image.open(p).size == (32, 32) for p in out.rglob("*.jpg"))
    again = resize(src, out, size=40, crop=32)
    assert again.written == 0 and again.skipped == 4
    (out / "a" / "1.jpg").unlink()
    data = (out / "a" / "2.jpg").read_bytes()
    (out / "a" / "2.jpg").write_bytes(data[: len(data) // 2])  # an interrupted, foreign write
    assert not is_complete(out / "a" / "2.jpg", 40, 32)
    third = resize(src, out, size=40, crop=32)
    assert third.written == 2 and third.skipped == 2
    assert is_complete(out / "a" / "2.jpg", 40, 32)
    assert resize(src, out, size=48, crop=32).skipped == 4  # same output size: still complete
    assert resize(src, out, size=40, crop=24).written == 4  # other crop: redone
    assert not list(out.rglob(".*.tmp"))


def test_resize_csv_dataset_writes_reimportable_csv(tmp_path):
    rows = []
    for k in range(5):
        save(photo(k, (90, 60)), tmp_path / "src" / "images" / f"{k}.jpg")
        rows.append({"filename": f"{k}.jpg", "label": "ab"[k % 2], "split": "train" if k < 4 else "test"})
    pd.DataFrame(rows).to_csv(tmp_path / "src" / "labels.csv", index=False)
    res = resize(tmp_path / "src" / "labels.csv", tmp_path / "out", size=30)
    assert res.csv == tmp_path / "out" / "labels.csv"
    again = load_dataset(res.csv)
    orig = load_dataset(tmp_path / "src" / "labels.csv")
    assert [Path(p).name for p in again.paths] == [Path(p).name for p in orig.paths]
    assert list(again.table["split"]) == list(orig.table["split"])
    assert list(again.table["labels"]) == list(orig.table["labels"])
    assert all(min(Image.open(p).size) == 30 for p in again.paths)


def test_resize_refuses_to_overwrite_originals(tmp_path):
    save(photo(1), tmp_path / "a" / "x.jpg")
    with pytest.raises(DatasetError):
        resize(tmp_path, tmp_path, size=16)
    with pytest.raises(ParameterError, match="crop must be between 1 and size"):
        resize(tmp_path, tmp_path / "o", size=16, crop=20)
