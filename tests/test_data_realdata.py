"""Dataset import, audit and split on the real sets in ../shared/datasets (skipped when absent)."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image, ImageDraw

from imclass.data import audit, load_dataset, split

pytestmark = [pytest.mark.realdata, pytest.mark.slow]

FLOWERS_CONFLICTS = {"15922772266_1167a06620.jpg", "17291451621_0e39f08b9e_n.jpg", "17104364030_ee31ee279b_n.jpg",
                     "17291930305_79deae6a90_n.jpg"}


def test_flowers5_rose_tulip_copies_are_conflicting_duplicates(datasets):
    res = audit(datasets / "flowers5" / "all", embeddings=False)
    exact = [c for c in res.conflicts if c["kind"] == "exact"]
    assert {Path(p).name for c in exact for p in c["paths"]} == FLOWERS_CONFLICTS
    for c in exact:
        assert sorted(lab for labs in c["labels"] for lab in labs) == ["rose", "tulip"]
        assert {Path(p).parent.name for p in c["paths"]} == {"rose", "tulip"}
    assert len(res.exact_duplicates) == 6  # as SOURCE.txt says: 6 groups, 4 of them across classes
    assert res.corrupt == [] and res.non_images == []
    assert res.colour["minority"] == "grey" and 0 < len(res.colour["files"]) < 200


def test_natural_scenes_imports_identically_from_both_csvs(datasets):
    root = datasets / "natural_scenes_multilabel"
    hot = load_dataset(root / "labels.csv")
    names = load_dataset(root / "labels_list.csv")
    assert hot.multi_label and names.multi_label
    assert len(hot) == len(names) == 1500
    assert hot.classes == names.classes == ["desert", "mountain", "sea", "sunset", "trees"]
    a = hot.table.sort_values("path").reset_index(drop=True)
    b = names.table.sort_values("path").reset_index(drop=True)
    assert a["path"].tolist() == b["path"].tolist()
    assert a["labels"].map(tuple).tolist() == b["labels"].map(tuple).tolist()
    assert a["split"].tolist() == b["split"].tolist()
    assert hot.fingerprint() == names.fingerprint()
    assert dict(hot.table["split"].value_counts()) == {"train": 1400, "test": 100}


def _not_found_picture(path: Path) -> Path:
    img = Image.new("RGB", (224, 224), (230, 230, 230))
    d = ImageDraw.Draw(img)
    d.rectangle((60, 50, 164, 130), outline=(150, 150, 150), width=4)
    d.line((60, 130, 100, 90, 125, 110, 164, 70), fill=(150, 150, 150), width=4)
    d.text((70, 160), "image not found", fill=(90, 90, 90))
    img.save(path, "PNG")
    return path


@pytest.fixture(scope="session")
def scenes_audit(datasets, tmp_path_factory):
    """Half of natural scenes (odd ids: 750 images, every class) plus a planted placeholder picture, audited
    once with embeddings (~30-60 s with a cold embedding cache on 2 cores)."""
    tmp = tmp_path_factory.mktemp("scenes")
    ds = load_dataset(datasets / "natural_scenes_multilabel" / "labels_list.csv")
    ds = ds.with_table(ds.table[ds.table["path"].map(lambda p: int(Path(p).stem) % 2 == 1)])
    csv = ds.to_csv(tmp / "labels.csv")
    placeholder = _not_found_picture(tmp / "placeholder.png")
    with open(csv, "a", encoding="utf-8") as f:
        f.write(f"{placeholder.name},sea,train\n")
    planted = load_dataset(csv)
    assert planted.multi_label and len(planted) == 751
    return planted, str(placeholder.resolve()), audit(planted)


def test_natural_scenes_placeholder_is_an_outlier(scenes_audit):
    _, placeholder, res = scenes_audit
    flagged = [x["path"] for x in res.outliers]
    assert placeholder in flagged[:3]
    assert len(flagged) <= 0.02 * 751


def test_natural_scenes_multi_label_check_and_leaks(scenes_audit):
    ds, _, res = scenes_audit
    lc = res.label_check
    assert lc["folds"] == 5 and lc["checked"] == len(ds) and "one-vs-rest" in lc["probe"]
    assert 0 < len(res.label_issues) < 0.15 * len(ds)
    worst = res.label_issues[0]
    assert worst["suggested"] != worst["given"] and worst["quality"] <= res.label_issues[-1]["quality"]
    # near-identical photos filed in both train and test (pHash distance 0, different bytes)
    leaked = [{Path(p).name for p in g["paths"]} for g in res.leaks]
    assert {"39.jpg", "43.jpg"} in leaked
    assert res.exact_duplicates == [] and res.conflicts == []


def test_neu_steel_split_keeps_the_duplicate_pair_together(datasets):
    root = datasets / "neu_steel_defects"
    res = split(root, val=0.2, test=0.1, resplit=True, embeddings=False, seed=0)
    ds = res.dataset
    where = dict(zip((Path(p).name for p in ds.paths), ds.table["split"]))
    assert where["patches_101.jpg"] == where["patches_105.jpg"] and res.grouped_rows >= 2
    for c in ds.classes:
        counts = ds.table[ds.table["labels"].map(lambda labs, c=c: c in labs)]["split"].value_counts()
        assert abs(counts["val"] / counts.sum() - 0.2) < 0.02 and abs(counts["test"] / counts.sum() - 0.1) < 0.02
    kept = split(root, val=0.2, embeddings=False)  # existing split folders are kept
    assert kept.assigned == 0 and kept.dataset.class_counts("val")["crazing"] == 5
