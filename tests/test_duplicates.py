"""Near-duplicates are the same photo, not the same background: copies of real photos are grouped with their
originals, look-alikes are not; groups never chain; clean keeps every good image unless asked."""

from __future__ import annotations

import io
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageEnhance, ImageFilter, ImageOps

from conftest import SAMPLES
from imclass.data import audit, clean
from imclass.data.duplicates import _stars, find_duplicates
from imclass.data.verify import PairVerifier, Verdict, working_image

PHOTOS = ["cat.jpg", "coffee.jpg", "palace.jpg", "cameraman.png"]


def photo(name: str) -> Image.Image:
    return Image.open(SAMPLES / name).convert("RGB")


def jpeg(im: Image.Image, quality: int) -> Image.Image:
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=quality)
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def crop(im: Image.Image, keep: float, dx: float = 0.5, dy: float = 0.5) -> Image.Image:
    w, h = im.size
    cw, ch = round(w * keep), round(h * keep)
    x, y = round((w - cw) * dx), round((h - ch) * dy)
    return im.crop((x, y, x + cw, y + ch))


def half(im: Image.Image) -> Image.Image:
    return im.resize((im.width // 2, im.height // 2), Image.Resampling.BICUBIC)


COPIES = {
    "jpeg q40": lambda im: jpeg(im, 40),
    "jpeg q60": lambda im: jpeg(im, 60),
    "crop 85% offset": lambda im: crop(im, 0.85, 0.2, 0.8),
    "crop 95%": lambda im: crop(im, 0.95),
    "half size": half,
    "mirrored": ImageOps.mirror,
    "brighter": lambda im: ImageEnhance.Brightness(im).enhance(1.15),
    "all at once": lambda im: jpeg(ImageOps.mirror(half(crop(im, 0.9, 0.7, 0.3))), 50),
}


def decide(a: Image.Image, b: Image.Image) -> Verdict:
    images = [working_image(a), working_image(b)]
    return PairVerifier(lambda row: images[row]).verify(0, 1)


@pytest.mark.parametrize("kind", sorted(COPIES))
@pytest.mark.parametrize("name", PHOTOS)
def test_each_kind_of_copy_is_a_duplicate(name, kind):
    original = photo(name)
    v = decide(original, COPIES[kind](original))
    assert v.decision == "duplicate", v
    assert v.mirrored == (kind in ("mirrored", "all at once"))


def pasted(background: Image.Image, obj: Image.Image, jitter: tuple[int, int] = (0, 0)) -> Image.Image:
    """A fixed camera: one background, an object pasted near the same place."""
    c = background.copy()
    side = c.width // 4
    o = crop(obj, 0.5).resize((side, side))
    c.paste(o, (c.width // 2 - side // 2 + jitter[0], c.height // 2 - side // 2 + jitter[1]))
    return jpeg(c, 90)


def test_same_background_other_object_is_not_a_duplicate():
    scene = photo("palace.jpg")
    a, b = pasted(scene, photo("cat.jpg")), pasted(scene, photo("coffee.jpg"), (4, -3))
    v = decide(a, b)
    assert v.decision == "different" and v.inliers >= 15, v  # the background matches, the object does not
    assert decide(a, jpeg(half(a), 50)).decision == "duplicate"  # a copy of one composite still is


def test_uniform_textures_and_small_low_detail_images():
    rng = np.random.default_rng(0)
    noise = rng.normal(128, 25, (400, 400)).astype(np.float32)
    texture = Image.fromarray(np.clip(noise, 0, 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(2))
    left, right = texture.crop((0, 0, 200, 200)), texture.crop((200, 200, 400, 400))  # same texture, no shared pixel
    assert decide(left.convert("RGB"), right.convert("RGB")).decision == "different"
    tiny = photo("coffee.jpg").resize((40, 27)).filter(ImageFilter.GaussianBlur(1))
    v = decide(tiny, jpeg(ImageOps.mirror(tiny), 60))
    assert v.decision == "possible", v  # the same tiny image: weak evidence, never "duplicate"
    other = photo("palace.jpg").resize((40, 27)).filter(ImageFilter.GaussianBlur(1))
    assert decide(tiny, other).decision == "different"


def test_groups_never_chain():
    """A chain of pairwise near-duplicates a-b, b-c, c-d, d-e (a and e unrelated) does not become one group."""
    dup = Verdict("duplicate", "keypoints+pixels", 100)
    verdicts = {(0, 1): dup, (1, 2): dup, (2, 3): dup, (3, 4): dup}
    groups = _stars(verdicts, reps=list(range(5)), members=[[i] for i in range(5)])
    for g in groups:
        assert not {0, 4} <= set(g["rows"]) and not {0, 3} <= set(g["rows"])
        rep = g["representative"]
        assert all(rep in (a, b) for a, b, _ in g["pairs"] if {a, b} != {rep}) or len(g["rows"]) == 2


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """Two classes of real photos (and shifted crops of them), plus copies: two with the same label, one
    with a conflicting label and one in another split."""
    root = tmp_path_factory.mktemp("dups")
    rng = random.Random(0)
    for split in ("train", "val"):
        for cls in ("a", "b"):
            (root / split / cls).mkdir(parents=True)
    for i, name in enumerate(PHOTOS):
        im = photo(name)
        for k in range(3):  # distinct photos: far-apart crops
            crop(im, 0.45, dx=[0.0, 1.0, 0.5][k], dy=[0.0, 1.0, 0.5][k]).save(root / "train" / "ab"[i % 2]
                                                                                / f"{Path(name).stem}{k}.png")
    src = root / "train" / "a" / "cat0.png"
    jpeg(ImageOps.mirror(Image.open(src)), 50).save(root / "train" / "a" / "cat0-copy.jpg")
    half(Image.open(root / "train" / "b" / "coffee0.png")).save(root / "train" / "a" / "coffee0-conflict.png")
    jpeg(Image.open(root / "train" / "a" / "palace0.png"), 60).save(root / "val" / "a" / "palace0-leak.jpg")
    shutil.copy(root / "train" / "b" / "cameraman0.png", root / "val" / "b" / "cameraman0.png")  # an exact copy
    rng.random()
    return root


def test_audit_groups_verified_copies_with_evidence(folder):
    res = audit(folder, embeddings=False, label_check=False)
    near = {frozenset(Path(p).name for p in g["paths"]) for g in res.near_duplicates}
    assert {frozenset({"cat0.png", "cat0-copy.jpg"}), frozenset({"coffee0.png", "coffee0-conflict.png"}),
            frozenset({"palace0.png", "palace0-leak.jpg"})} <= near
    assert all(len(g) == 2 for g in near)  # the other crops of the same photos are not copies
    g = next(g for g in res.near_duplicates if any("cat0-copy" in p for p in g["paths"]))
    assert g["certainty"] == "duplicate" and g["evidence"][0]["mirrored"] and g["evidence"][0]["inliers"] >= 15
    assert {c["kind"] for c in res.conflicts} == {"near"} and {x["kind"] for x in res.leaks} >= {"near", "exact"}
    assert res.counts()["near_duplicate_groups"] == len(res.near_duplicates)


def test_clean_keeps_every_good_image_by_default(folder, tmp_path):
    """Only the extra copy of identical files is left out; near-duplicates (with conflicting labels, across
    splits) are listed for review and kept unless asked for."""
    plans = []
    res = clean(folder, tmp_path / "c", embeddings=False, on_plan=plans.append)
    n = len(list(folder.rglob("*.png"))) + len(list(folder.rglob("*.jpg")))
    assert res.plan.kept == n - 1 and len(res.excluded) == 1 and plans[0] is res.plan
    assert "val/b/cameraman0.png" in res.excluded[0]["path"] or "train/b/cameraman0.png" in res.excluded[0]["path"]
    assert res.plan.review["near-duplicate groups"] >= 3
    asked = clean(folder, tmp_path / "d", drop="near-duplicates,near-conflicts", embeddings=False)
    names = {Path(x["path"]).name for x in asked.excluded}
    assert {"coffee0.png", "coffee0-conflict.png"} <= names  # a conflict: both out
    assert ("cat0.png" in names) != ("cat0-copy.jpg" in names)  # same label: one of the two kept
    dry = clean(folder, tmp_path / "e", embeddings=False, on_plan=lambda plan: False)
    assert dry.manifest is None and not (tmp_path / "e").exists()


def test_marked_pairs_are_never_grouped(folder, tmp_path):
    from imclass.data.marks import mark_not_duplicates, marks_path, read_marks

    work = tmp_path / "data"
    shutil.copytree(folder, work)
    res = audit(work, embeddings=False, label_check=False, cache=False)
    g = next(g for g in res.near_duplicates if any("cat0-copy" in p for p in g["paths"]))
    e = g["evidence"][0]
    path = mark_not_duplicates(work, [(e["sha256_a"], e["sha256_b"], e["a"], e["b"])])
    assert path == marks_path(work) == work / "not-duplicates.csv"
    assert read_marks(work) == {frozenset((e["sha256_a"], e["sha256_b"]))}
    again = audit(work, embeddings=False, label_check=False, cache=False)
    assert not any(any("cat0-copy" in p for p in g["paths"]) for g in again.near_duplicates)
    assert len(again.near_duplicates) == len(res.near_duplicates) - 1


def test_exact_groups_and_group_ids():
    g = find_duplicates(["a", "b", "a", None, "c"])
    assert g.exact == [[0, 2]] and g.near == []
    assert g.group_id[0] == g.group_id[2] and len(set(g.group_id.tolist())) == 4
