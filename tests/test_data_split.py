"""``imclass.data.split``: stratified (multi-label too), reproducible, duplicate groups kept together."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pandas as pd
import pytest

from imclass.data import DatasetError, load_dataset, split
from imclass.data.stratify import iterative_stratification, stratified_folds
from synthetic_datasets import make_clean, photo, save


def test_iterative_stratification_single_label_hits_the_fractions():
    counts = np.repeat(np.eye(3), [50, 40, 10], axis=0)
    parts = iterative_stratification(counts, np.ones(len(counts)), [0.7, 0.2, 0.1], rng=np.random.default_rng(0))
    for c, n in enumerate((50, 40, 10)):
        got = np.bincount(parts[counts[:, c] == 1], minlength=3)
        assert np.all(np.abs(got - np.array([0.7, 0.2, 0.1]) * n) <= 1), (c, got)


def test_iterative_stratification_multi_label_spreads_every_class():
    rng = np.random.default_rng(0)
    y = (rng.random((400, 5)) < np.array([0.4, 0.3, 0.2, 0.1, 0.05])).astype(int)
    parts = iterative_stratification(y, np.ones(len(y)), [0.8, 0.2], rng=np.random.default_rng(1))
    for c in range(5):
        share = y[parts == 1, c].sum() / y[:, c].sum()
        assert abs(share - 0.2) <= 0.06, (c, share)
    assert abs((parts == 1).mean() - 0.2) <= 0.02


def test_stratified_folds_keep_groups_whole():
    y = np.repeat([0, 1], 30)
    groups = np.arange(60) // 3
    folds = stratified_folds(y, groups, 5)
    assert len(folds) == 5
    for train, test in folds:
        assert not set(groups[train]) & set(groups[test])
        assert set(y[test]) == {0, 1}


@pytest.fixture()
def folder(tmp_path):
    root = tmp_path / "data"
    make_clean(root, per_class=30, splits=("",))  # root/<class>/*, no split yet
    # planted: an exact copy and a near copy of two images, which must land in their original's split
    first = sorted((root / "cat").iterdir())[0]
    shutil.copy(first, root / "cat" / "copy_of_first.jpg")
    second = sorted((root / "dog").iterdir())[0]
    from PIL import Image

    save(Image.open(second).resize((50, 38)), root / "dog" / "near_second.jpg", quality=70)
    return root, (first, root / "cat" / "copy_of_first.jpg"), (second, root / "dog" / "near_second.jpg")


def _split_of(ds, path) -> str:
    return ds.table.set_index("path").loc[os.path.abspath(path), "split"]


def test_split_is_stratified_reproducible_and_groups_duplicates(folder, tmp_path):
    root, exact, near = folder
    res = split(root, val=0.2, test=0.1, seed=0, embeddings=False, cache=False, out=tmp_path / "out")
    ds = res.dataset
    assert set(ds.table["split"]) == {"train", "val", "test"}
    for c in ds.classes:
        counts = ds.table[ds.table["labels"].map(lambda labs, c=c: c in labs)]["split"].value_counts()
        total = counts.sum()
        assert abs(counts["val"] - 0.2 * total) <= 2 and abs(counts["test"] - 0.1 * total) <= 2
    assert _split_of(ds, exact[0]) == _split_of(ds, exact[1])
    assert _split_of(ds, near[0]) == _split_of(ds, near[1])
    assert res.grouped_rows == 4 and res.assigned == len(ds) and res.kept == 0
    again = split(root, val=0.2, test=0.1, seed=0, embeddings=False, cache=False).dataset
    assert list(again.table["split"]) == list(ds.table["split"])
    other = split(root, val=0.2, test=0.1, seed=1, embeddings=False, cache=False).dataset
    assert list(other.table["split"]) != list(ds.table["split"])
    # the CSV re-imports to the same assignment
    back = load_dataset(res.csv)
    assert dict(zip(back.paths, back.table["split"])) == dict(zip(ds.paths, ds.table["split"]))


def test_without_grouping_duplicates_may_separate(folder):
    root, exact, _ = folder
    seps = 0
    for seed in range(8):
        ds = split(root, val=0.5, seed=seed, group_duplicates=False, cache=False).dataset
        seps += _split_of(ds, exact[0]) != _split_of(ds, exact[1])
    assert seps > 0  # grouping is what keeps them together


def test_existing_splits_are_kept_unless_resplit(tmp_path):
    make_clean(tmp_path, per_class=12, splits=("train", "val"))
    ds = load_dataset(tmp_path)
    before = list(ds.table["split"])
    res = split(ds, val=0.3, embeddings=False, cache=False)
    assert list(res.dataset.table["split"]) == before and res.assigned == 0 and res.kept == len(ds)
    res = split(ds, val=0.3, test=0.2, resplit=True, embeddings=False, cache=False)
    shares = res.dataset.table["split"].value_counts(normalize=True)
    assert abs(shares["val"] - 0.3) < 0.08 and abs(shares["test"] - 0.2) < 0.08


def test_unassigned_rows_top_up_and_follow_their_duplicates(tmp_path):
    rows = []
    for k in range(40):
        save(photo(k), tmp_path / "img" / f"{k}.jpg")
        rows.append({"filename": f"img/{k}.jpg", "label": "ab"[k % 2], "split": "test" if k < 6 else ""})
    shutil.copy(tmp_path / "img" / "0.jpg", tmp_path / "img" / "copy0.jpg")  # duplicate of a test image
    rows.append({"filename": "img/copy0.jpg", "label": "a", "split": ""})
    pd.DataFrame(rows).to_csv(tmp_path / "labels.csv", index=False)
    res = split(tmp_path / "labels.csv", val=0.25, test=0.15, embeddings=False, cache=False)
    ds = res.dataset
    assert all(_split_of(ds, tmp_path / "img" / f"{k}.jpg") == "test" for k in range(6))
    assert _split_of(ds, tmp_path / "img" / "copy0.jpg") == "test"
    counts = ds.table["split"].value_counts()
    assert counts["test"] == 7  # 6 kept + the copy; 0.15 x 41 = 6.15 are already there
    assert abs(counts["val"] - 0.25 * len(ds)) <= 1.5
    assert res.kept == 6 and res.assigned == 35


def test_multi_label_split(tmp_path):
    rng = np.random.default_rng(0)
    names = ["sea", "sky", "tree"]
    rows = []
    for k in range(90):
        save(photo(k), tmp_path / f"{k}.jpg")
        labs = [n for n in names if rng.random() < 0.4] or ["sea"]
        rows.append({"filename": f"{k}.jpg", "labels": " ".join(labs)})
    pd.DataFrame(rows).to_csv(tmp_path / "labels.csv", index=False)
    res = split(tmp_path / "labels.csv", val=0.3, embeddings=False, cache=False, out=tmp_path / "out")
    ds = res.dataset
    assert ds.multi_label
    for c in names:
        has = ds.table["labels"].map(lambda labs, c=c: c in labs)
        share = (ds.table["split"][has] == "val").mean()
        assert abs(share - 0.3) < 0.1, (c, share)
    with pytest.raises(DatasetError, match="multi-label"):
        split(ds, val=0.3, embeddings=False, cache=False, out=tmp_path / "m", materialize=True)


def test_materialize_writes_split_folders_of_links(folder, tmp_path):
    root, _, _ = folder
    out = tmp_path / "mat"
    res = split(root, val=0.2, embeddings=False, cache=False, out=out, materialize=True)
    files = [p for p in out.rglob("*.jpg")]
    assert len(files) == len(res.dataset) and all(p.is_symlink() for p in files)
    again = load_dataset(out)  # imports as split folders
    assert sorted(again.table["split"].value_counts().items()) == sorted(
        res.dataset.table["split"].value_counts().items())
    assert load_dataset(res.csv).fingerprint() == again.fingerprint()


def test_bad_fractions_are_a_dataset_error(folder):
    root, _, _ = folder
    with pytest.raises(DatasetError, match="fractions"):
        split(root, val=0.6, test=0.5, embeddings=False, cache=False)
