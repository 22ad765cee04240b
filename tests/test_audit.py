"""Dataset audit on synthetic data with planted faults: every planted fault is found, a clean set has none."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from imclass.data import AuditResult, audit, load_dataset, write_report
from imclass.data.duplicates import find_duplicates
from imclass.data.label_issues import check_labels
from imclass.data.outliers import outlier_scores
from imclass.data.scan import ScanCache, scan_dataset
from synthetic_datasets import make_clean, photo, plant_faults, save


@pytest.fixture(scope="module")
def faulty(tmp_path_factory):
    root = tmp_path_factory.mktemp("faulty")
    make_clean(root, per_class=10)
    planted = plant_faults(root)
    ds = load_dataset(root)
    return ds, planted, audit(ds, embeddings=False, cache=False)


def _groups(items) -> list[set[str]]:
    return [set(g["paths"]) for g in items]


def test_every_planted_fault_is_reported(faulty):
    _, p, res = faulty
    assert {x["path"] for x in res.corrupt} == set(p.corrupt)  # truncated, cut tail, empty, damaged PNG data
    assert {x["path"] for x in res.non_images} == set(p.non_images)
    for g in p.exact_duplicates:
        assert g in _groups(res.exact_duplicates)
    assert len(res.exact_duplicates) == len(p.exact_duplicates)
    for g in p.conflicts:
        assert g in _groups(c for c in res.conflicts if c["kind"] == "exact")
    assert len(res.conflicts) == len(p.conflicts)
    for g in p.leaks:
        assert g in _groups(res.leaks)
    assert len(res.leaks) == len(p.leaks)
    assert {x["path"] for x in res.wrong_extension} == set(p.wrong_extension)
    assert res.wrong_extension[0]["format"] == "PNG"
    assert {x["path"] for x in res.tiny} == set(p.tiny)
    assert {x["path"] for x in res.odd_aspect} == set(p.odd_aspect)
    assert res.colour["minority"] == "grey" and set(res.colour["files"]) == set(p.grey)
    for g in p.near:
        assert any(g <= n for n in _groups(res.near_duplicates))
    assert res.unreadable == len(p.corrupt) + len(p.non_images)


def test_reasons_name_the_problem(faulty):
    _, _, res = faulty
    why = {Path(x["path"]).name: x["reason"] for x in res.corrupt}
    assert "truncated" in why["truncated.jpg"]
    assert "empty" in why["empty.jpg"]
    assert why["bad_crc.png"].startswith("corrupt")


def test_clean_synthetic_set_reports_none(tmp_path):
    make_clean(tmp_path, per_class=20, splits=("train", "val", "test"))
    res = audit(tmp_path, embeddings=False, cache=False)
    c = res.counts()
    for key in ("corrupt", "non_images", "wrong_extension", "tiny", "odd_aspect", "grey_colour_minority",
                "exact_duplicate_groups", "near_duplicate_groups", "conflicts", "leaks"):
        assert c[key] == 0, (key, c)
    assert res.imbalance_ratio == 1.0
    assert set(res.split_coverage["counts"]) == {"train", "val", "test"} and not res.split_coverage["missing"]
    assert any("embeddings off" in n for n in res.notes)


def test_class_counts_imbalance_and_missing_class_in_split(tmp_path):
    for k in range(9):
        save(photo(k), tmp_path / "train" / "big" / f"{k}.jpg")
    for k in range(3):
        save(photo(100 + k), tmp_path / "train" / "small" / f"{k}.jpg")
    save(photo(200), tmp_path / "val" / "big" / "v.jpg")
    res = audit(tmp_path, embeddings=False, cache=False)
    assert res.class_counts == {"big": 10, "small": 3}
    assert res.imbalance_ratio == pytest.approx(10 / 3, abs=0.01)
    assert res.split_coverage["missing"] == {"val": ["small"]}


def test_grey_is_decided_from_pixels_not_mode(tmp_path):
    files = make_clean(tmp_path, per_class=3, splits=("train",))
    save(photo(500).convert("L"), tmp_path / "train" / "cat" / "stored_grey.png", fmt="PNG")  # mode L
    rgb_grey = save(photo(501, grey=True), tmp_path / "train" / "dog" / "rgb_grey.png", fmt="PNG")  # mode RGB
    res = audit(tmp_path, embeddings=False, cache=False)
    assert res.colour["grey"] == 2 and res.colour["colour"] == len(files)
    assert str(rgb_grey) in res.colour["files"]


def test_scan_cache_reuses_results(tmp_path):
    files = make_clean(tmp_path / "d", per_class=2, splits=("train",))
    ds = load_dataset(tmp_path / "d")
    cache = ScanCache(tmp_path / "scan.sqlite3")
    first = scan_dataset(ds.paths, list(ds.table["sha256"]), list(ds.table["error"]), cache=cache)
    assert len(cache.get(list(ds.table["sha256"]))) == len(files)
    calls = []
    second = scan_dataset(ds.paths, list(ds.table["sha256"]), list(ds.table["error"]), cache=cache,
                          progress=lambda d, t: calls.append((d, t)))
    assert [(f.grey, f.phash) for f in first] == [(f.grey, f.phash) for f in second]
    assert calls[0] == (len(files), len(files))  # everything known before decoding anything


# ---- embedding-based checks, with vectors made to order ----------------------------------------------

def _blobs(n_per: int, classes: int, dim: int, sep: float, seed: int = 0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 1, (classes, dim)) * sep / np.sqrt(dim / 32)
    y = np.repeat(np.arange(classes), n_per)
    return centres, y, (centres[y] + rng.normal(0, 1, (len(y), dim))).astype(np.float32)


def test_label_check_finds_flipped_labels():
    _, y, x = _blobs(60, 3, 256, 5.0)
    rng = np.random.default_rng(1)
    flipped = rng.choice(len(y), 6, replace=False)
    noisy = y.copy()
    noisy[flipped] = (y[flipped] + 1) % 3
    res = check_labels(x, noisy, np.arange(len(y)), multi_label=False, n_classes=3)
    found = set(res.issues)
    assert len(found & set(flipped.tolist())) >= 5
    assert found <= set(flipped.tolist())  # nothing else flagged on clean, well separated data
    assert res.folds == 5 and res.checked == len(y)
    assert all(np.argmax(res.pred_probs[i]) == y[i] for i in res.issues)  # suggestion = the true class


def test_label_check_multi_label_finds_missing_labels():
    rng = np.random.default_rng(0)
    k, n, dim = 4, 240, 64
    centres = rng.normal(0, 1, (k, dim)) * 3
    y = (rng.random((n, k)) < 0.35).astype(int)
    y[y.sum(axis=1) == 0, 0] = 1
    x = (y @ centres + rng.normal(0, 1, (n, dim))).astype(np.float32)
    noisy = y.copy()
    changed = rng.choice(n, 5, replace=False)
    for i in changed:
        j = np.flatnonzero(y[i])[0]
        noisy[i, j] = 0
        noisy[i, (j + 1) % k] = 1 - noisy[i, (j + 1) % k]
    res = check_labels(x, noisy, np.arange(n), multi_label=True, n_classes=k)
    assert len(set(res.issues) & set(changed.tolist())) >= 4
    assert len(res.issues) <= 10


def test_label_check_groups_duplicates_within_one_fold(monkeypatch):
    """Every duplicate group is held out whole in one fold (a copy cannot vouch for its own label)."""
    from imclass.data import label_issues

    _, y, x = _blobs(20, 2, 32, 5.0)
    groups = np.random.default_rng(0).permutation(np.arange(len(y)) // 4)  # groups of 4 rows, scattered
    seen = []
    real = label_issues.out_of_fold_logits

    def spy(x_, y_, folds, **kw):
        seen.append(folds)
        return real(x_, y_, folds, **kw)

    monkeypatch.setattr(label_issues, "out_of_fold_logits", spy)
    res = check_labels(x, y, groups, multi_label=False, n_classes=2, folds=3)
    assert res.folds == 3 and len(seen) == 1 and len(seen[0]) == 3
    held = [set(h.tolist()) for _, h in seen[0]]
    assert sorted(i for h in held for i in h) == list(range(len(y)))  # a partition of every row
    for g in np.unique(groups):
        members = set(np.flatnonzero(groups == g).tolist())
        assert sum(bool(members & h) for h in held) == 1, g  # the whole group in exactly one fold
        assert any(members <= h for h in held)
    for fit, h in seen[0]:
        assert not set(fit.tolist()) & set(h.tolist())


def test_label_check_skips_single_image_classes():
    _, y, x = _blobs(10, 2, 16, 5.0)
    y = np.concatenate([y, [2]])
    x = np.vstack([x, x[:1]])
    res = check_labels(x, y, np.arange(len(y)), multi_label=False, n_classes=3)
    assert res.checked == 20 and np.isnan(res.quality[-1])
    assert any("single image" in n for n in res.notes)


def test_outlier_far_from_everything_is_flagged_first():
    _, _, x = _blobs(50, 3, 64, 4.0)
    x = np.abs(x)  # non-negative, like pooled post-ReLU features
    v = np.vstack([x, -x.mean(axis=0, keepdims=True)]).astype(np.float32)
    res = outlier_scores(v, [None] * len(v))
    assert res.flagged and res.flagged[0] == len(v) - 1
    assert len(res.flagged) <= 0.03 * len(v)


def test_outlier_copies_count_once():
    _, _, x = _blobs(40, 2, 32, 4.0)
    far = -np.abs(x).mean(axis=0, keepdims=True) * 5
    v = np.vstack([np.abs(x), far, far, far]).astype(np.float32)
    shas = [f"s{i}" for i in range(len(x))] + ["same"] * 3
    res = outlier_scores(v, shas)
    assert set(res.flagged[:3]) == {len(x), len(x) + 1, len(x) + 2}


def test_embedding_neighbours_are_candidates_the_pixels_decide():
    """Close embeddings only propose a pair: two different photos with identical vectors are not grouped, a
    real copy with a distant vector still is (it is a perceptual-hash neighbour)."""
    from PIL import Image, ImageOps

    from conftest import SAMPLES
    from imclass.data.verify import working_image

    photos = [Image.open(SAMPLES / n).convert("RGB") for n in ("cat.jpg", "coffee.jpg", "palace.jpg")]
    images = [*photos, ImageOps.mirror(photos[2]), photos[0]]
    shas = ["a", "b", "c", "d", "a"]
    v = np.random.default_rng(0).normal(0, 1, (5, 16)).astype(np.float32)
    v[1] = v[0]  # cat and coffee look identical to the embedding
    import imagehash

    hashes = [int(str(imagehash.phash(im)), 16) for im in images]
    mirrors = [int(str(imagehash.phash(ImageOps.mirror(im))), 16) for im in images]
    g = find_duplicates(shas, hashes, v, mirror_phashes=mirrors, load=lambda r: working_image(images[r]))
    assert g.exact == [[0, 4]]
    assert [(n["rows"], n["certainty"]) for n in g.near] == [([2, 3], "duplicate")]
    assert g.near[0]["pairs"][0][2].mirrored
    assert g.group_id[0] == g.group_id[4] and g.group_id[2] == g.group_id[3] and g.group_id[0] != g.group_id[1]
    assert g.stats["candidates"] >= 2 and g.stats["verified"] >= 1


def test_audit_with_given_embeddings_reports_label_errors_and_outliers(tmp_path):
    make_clean(tmp_path, per_class=24, splits=("train",))
    ds = load_dataset(tmp_path)
    rng = np.random.default_rng(3)
    centres = rng.normal(0, 1, (3, 128)) * 3
    y = ds.targets()
    v = np.abs(centres[y] + rng.normal(0, 1, (len(ds), 128))).astype(np.float32)
    wrong = int(np.flatnonzero(y == 0)[5])
    v[wrong] = np.abs(centres[2] + rng.normal(0, 1, 128))  # looks like class 2, filed under class 0
    odd = int(np.flatnonzero(y == 1)[3])
    v[odd] = -np.abs(v.mean(axis=0)) * 4  # looks like nothing else
    progress = []
    res = audit(ds, embeddings=v, cache=False, progress=lambda s, d, t: progress.append(s))
    issues = {x["path"]: x for x in res.label_issues}
    assert ds.paths[wrong] in issues
    assert issues[ds.paths[wrong]]["given"] == [ds.classes[0]]
    assert issues[ds.paths[wrong]]["suggested"] == [ds.classes[2]]
    assert res.outliers and res.outliers[0]["path"] == ds.paths[odd]
    assert res.thresholds["outlier_threshold"] < res.outliers[0]["score"]
    assert res.label_check["folds"] == 5 and res.label_check["accuracy"] > 0.9
    assert {"decode", "neighbours", "labels"} <= set(progress)


def test_to_dict_is_json_and_round_trips(faulty):
    _, _, res = faulty
    d = json.loads(json.dumps(res.to_dict()))
    assert d["counts"]["corrupt"] == len(res.corrupt)
    d.pop("counts")
    assert AuditResult(**d).counts() == res.counts()


def test_html_report_is_self_contained(faulty, tmp_path):
    ds, _, res = faulty
    path = write_report(res, tmp_path / "report", ds)
    html = path.read_text()
    assert path.name == "audit.html"
    assert "data:image/jpeg;base64," in html and "data:image/png;base64," in html
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", html)  # nothing fetched from elsewhere
    assert "http://" not in html and "https://" not in html
    for name in ("truncated.jpg", "notes.jpg", "conflict_c.jpg", "leak_b.jpg"):
        assert name in html
    assert html.count("<figure") >= 10


def test_uninspected_dataset_is_inspected_first(faulty):
    ds, p, _ = faulty
    bare = load_dataset(ds.root, inspect=False)
    assert bare.table["sha256"].isna().all()
    res = audit(bare, embeddings=False, cache=False)
    assert {x["path"] for x in res.corrupt} == set(p.corrupt)
    assert len(res.exact_duplicates) == len(p.exact_duplicates)


def test_tiny_dataset_skips_what_it_cannot_judge(tmp_path):
    save(photo(1), tmp_path / "a" / "1.jpg")
    save(photo(2), tmp_path / "a" / "2.jpg")
    ds = load_dataset(tmp_path)
    res = audit(ds, embeddings=np.ones((2, 8), np.float32), cache=False)
    assert res.label_issues == [] and res.outliers == []
    assert any("label check" in n for n in res.notes) and any("outlier" in n for n in res.notes)
    assert res.imbalance_ratio == 1.0
