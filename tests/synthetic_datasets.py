"""Synthetic labelled datasets for the data tests: distinct 'photos' and planted faults of every kind."""

from __future__ import annotations

import io
import shutil
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = ("cat", "dog", "fox")


def photo(seed: int, size: tuple[int, int] = (64, 48), grey: bool = False) -> Image.Image:
    """A smooth random colour field with a random rectangle: every seed looks different (pHash included)."""
    rng = np.random.default_rng(seed)
    low = rng.integers(0, 256, (5, 6, 3), dtype=np.uint8)
    img = Image.fromarray(low).resize(size, Image.Resampling.BICUBIC)
    arr = np.asarray(img).copy()
    x0, y0 = rng.integers(0, size[0] // 2), rng.integers(0, size[1] // 2)
    arr[y0:y0 + size[1] // 3, x0:x0 + size[0] // 3] = rng.integers(0, 256, 3)
    img = Image.fromarray(arr)
    if grey:
        img = img.convert("L").convert("RGB")
    return img


def save(img: Image.Image, path: Path, fmt: str = "JPEG", **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, format=fmt, **({"quality": 92} if fmt == "JPEG" else {}) | kw)
    return path


def make_clean(root: Path, per_class: int = 8, splits: tuple[str, ...] = ("train", "val"),
               seed0: int = 0) -> list[Path]:
    """``root/<split>/<class>/<n>.jpg`` (split ``""``: ``root/<class>/``), all distinct; returns the files.

    ``per_class`` images per class in ``train`` (and ``""``), a quarter of that (at least 2) in other splits.
    """
    files = []
    seed = seed0
    for split in splits:
        for c in CLASSES:
            for _ in range(per_class if split in ("train", "") else max(2, per_class // 4)):
                seed += 1
                files.append(save(photo(seed), root / split / c / f"{c}_{seed}.jpg"))
    return files


@dataclass
class Planted:
    exact_duplicates: list[set[str]] = field(default_factory=list)  # groups of paths
    leaks: list[set[str]] = field(default_factory=list)
    conflicts: list[set[str]] = field(default_factory=list)
    corrupt: list[str] = field(default_factory=list)
    non_images: list[str] = field(default_factory=list)
    wrong_extension: list[str] = field(default_factory=list)
    tiny: list[str] = field(default_factory=list)
    odd_aspect: list[str] = field(default_factory=list)
    grey: list[str] = field(default_factory=list)
    near: list[set[str]] = field(default_factory=list)


def plant_faults(root: Path) -> Planted:
    """Add one or more faults of every kind to a :func:`make_clean` dataset (split folders train/val)."""
    p = Planted()
    a = root / "train" / "cat" / "dup_a.jpg"
    save(photo(1001), a)
    shutil.copy(a, root / "train" / "cat" / "dup_a_copy.jpg")
    shutil.copy(a, root / "train" / "cat" / "dup_a_copy2.jpg")
    p.exact_duplicates.append({str(a), str(root / "train/cat/dup_a_copy.jpg"), str(root / "train/cat/dup_a_copy2.jpg")})

    b = save(photo(1002), root / "train" / "dog" / "leak_b.jpg")  # same file in train and val
    shutil.copy(b, root / "val" / "dog" / "leak_b.jpg")
    p.leaks.append({str(b), str(root / "val/dog/leak_b.jpg")})
    p.exact_duplicates.append(set(p.leaks[-1]))

    c = save(photo(1003), root / "train" / "cat" / "conflict_c.jpg")  # same file under two classes
    shutil.copy(c, root / "train" / "fox" / "conflict_c.jpg")
    p.conflicts.append({str(c), str(root / "train/fox/conflict_c.jpg")})
    p.exact_duplicates.append(set(p.conflicts[-1]))

    d = save(photo(1004), root / "train" / "dog" / "both_d.jpg")  # conflict *and* leak
    shutil.copy(d, root / "val" / "fox" / "both_d.jpg")
    p.conflicts.append({str(d), str(root / "val/fox/both_d.jpg")})
    p.leaks.append(set(p.conflicts[-1]))
    p.exact_duplicates.append(set(p.conflicts[-1]))

    good = io.BytesIO()
    photo(1005, (96, 80)).save(good, "JPEG", quality=92)
    data = good.getvalue()
    corrupt = {
        "truncated.jpg": data[: len(data) // 2],  # valid header, data cut off
        "truncated_tail.jpg": data[:-200],
        "empty.jpg": b"",
        "bad_crc.png": _png_with_bad_idat(),
    }
    for name, blob in corrupt.items():
        path = root / "train" / "fox" / name
        path.write_bytes(blob)
        p.corrupt.append(str(path))
    for name, blob in {"notes.jpg": b"just some text, not a picture\n" * 20,
                       "page.png": b"<!doctype html><html><body>404 not found</body></html>"}.items():
        path = root / "train" / "dog" / name
        path.write_bytes(blob)
        p.non_images.append(str(path))

    p.wrong_extension.append(str(save(photo(1006), root / "train" / "cat" / "really_png.jpg", fmt="PNG")))
    p.tiny.append(str(save(photo(1007, (12, 10)), root / "train" / "cat" / "tiny.jpg")))
    p.odd_aspect.append(str(save(photo(1008, (240, 40)), root / "train" / "dog" / "banner.jpg")))
    p.grey.append(str(save(photo(1009, grey=True), root / "train" / "fox" / "grey_rgb.jpg")))

    e = save(photo(1010, (128, 96)), root / "train" / "fox" / "near_e.jpg")  # re-encoded, resized copy
    smaller = Image.open(e).resize((100, 75), Image.Resampling.BICUBIC)
    near = save(smaller, root / "val" / "fox" / "near_e_small.jpg", quality=70)
    p.near.append({str(e), str(near)})
    p.leaks.append(set(p.near[-1]))
    return p


def _png_with_bad_idat() -> bytes:
    buf = io.BytesIO()
    photo(1011).save(buf, "PNG")
    data = bytearray(buf.getvalue())
    at = data.index(b"IDAT") + 4 + 20
    data[at:at + 8] = bytes(8)  # damaged compressed data (and CRC mismatch)
    assert zlib.crc32(bytes(data)) != zlib.crc32(buf.getvalue())
    return bytes(data)
