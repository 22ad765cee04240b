"""Decode every file once: corruption check, grey-vs-colour from pixels, perceptual hashes (as is and
mirrored) and a tiny grey thumbnail (the first, cheap look at near-duplicate candidates).

Results depend only on a file's bytes, so they are cached by content sha256 (``<cache dir>/scan.sqlite3``);
a second audit of the same files decodes nothing.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import PIL
from PIL import Image, ImageChops, ImageOps

from ..errors import ImageLoadError
from ..images import load_image
from ..sqlite_store import SqliteStore

SCAN_VERSION = f"scan-v2/pillow-{PIL.__version__}"
#: Decode JPEGs at a reduced DCT scale no smaller than this: every byte of the stream is still decoded.
DRAFT_SIZE = (128, 128)
#: A pixel counts as coloured when its channels differ by more than this (0-255 scale).
GREY_TOLERANCE = 8
#: An image is grey when at most this fraction of its pixels is coloured.
GREY_MAX_COLOURED = 0.005
#: Longest side of the grey thumbnail kept for near-duplicate pre-screening.
THUMB_SIDE = 48


@dataclass
class ScanFacts:
    """What decoding one file's content showed."""

    error: str | None = None  # why it could not be decoded, else None
    grey: bool | None = None  # pixel content is grey (channels equal), whatever the stored mode
    phash: int | None = None  # 64-bit DCT perceptual hash (imagehash.phash)
    phash_mirror: int | None = None  # the same of the horizontally mirrored image
    thumb: bytes | None = None  # grey thumbnail, longest side THUMB_SIDE: 2+2 bytes (h, w) then the pixels

    def thumbnail(self):
        """The thumbnail as a ``uint8`` array (None when there is none)."""
        if not self.thumb:
            return None
        import numpy as np

        h, w = struct.unpack("<HH", self.thumb[:4])
        return np.frombuffer(self.thumb, dtype=np.uint8, offset=4).reshape(h, w)


def scan_file(path: str) -> ScanFacts:
    """Decode ``path`` with the safe loader and measure it. Never raises."""
    import imagehash

    try:
        img = load_image(path, draft_size=DRAFT_SIZE)
    except ImageLoadError as e:
        return ScanFacts(error=e.reason)
    img.thumbnail((256, 256), reducing_gap=2.0)
    mirror = ImageOps.mirror(img)
    small = img.convert("L")
    small.thumbnail((THUMB_SIDE, THUMB_SIDE), Image.Resampling.BOX)
    thumb = struct.pack("<HH", small.height, small.width) + small.tobytes()
    return ScanFacts(grey=is_grey(img), phash=int(str(imagehash.phash(img)), 16),
                     phash_mirror=int(str(imagehash.phash(mirror)), 16), thumb=thumb)


def is_grey(img: Image.Image) -> bool:
    """True when (almost) every pixel of an RGB image has equal channels, whatever mode it was stored in."""
    r, g, b = img.split()
    spread = ImageChops.lighter(ImageChops.lighter(ImageChops.difference(r, g), ImageChops.difference(g, b)),
                                ImageChops.difference(r, b))  # max - min over the channels, per pixel
    coloured = sum(spread.histogram()[GREY_TOLERANCE + 1:])
    return coloured <= GREY_MAX_COLOURED * img.width * img.height


class ScanCache(SqliteStore):
    """``ScanFacts`` by content sha256 in SQLite (WAL; safe across threads and processes)."""

    def __init__(self, path: str | os.PathLike | None = None):
        if path is None:
            from ..paths import cache_dir

            path = cache_dir() / "scan.sqlite3"
        # scan2: the facts of scan-v2 (the table "scan" of earlier releases is left alone)
        super().__init__(path, "CREATE TABLE IF NOT EXISTS scan2 (sha256 TEXT, version TEXT, error TEXT, "
                               "grey INTEGER, phash TEXT, phash_mirror TEXT, thumb BLOB, "
                               "PRIMARY KEY (sha256, version)) WITHOUT ROWID;")

    def get(self, shas: Sequence[str]) -> dict[str, ScanFacts]:
        def num(x):
            return None if x is None else int(x)

        return {sha: ScanFacts(error, None if grey is None else bool(grey), num(phash), num(mirror), thumb)
                for sha, error, grey, phash, mirror, thumb in self.select_in(
                    "SELECT sha256, error, grey, phash, phash_mirror, thumb FROM scan2 "
                    "WHERE version=? AND sha256 IN ({marks})", (SCAN_VERSION,), shas)}

    def put(self, items: Sequence[tuple[str, ScanFacts]]) -> None:
        def text(x):
            return None if x is None else str(x)

        self.write("INSERT OR REPLACE INTO scan2 VALUES (?, ?, ?, ?, ?, ?, ?)",
                   [(sha, SCAN_VERSION, f.error, None if f.grey is None else int(f.grey), text(f.phash),
                     text(f.phash_mirror), f.thumb) for sha, f in items])


def scan_dataset(paths: Sequence[str], shas: Sequence[str | None], import_errors: Sequence[str | None], *,
                 workers: int = 2, cache: ScanCache | bool = True,
                 progress: Callable[[int, int], None] | None = None) -> list[ScanFacts]:
    """``ScanFacts`` per row. Rows the importer could not open keep that error; equal contents are decoded once."""
    store = ScanCache() if cache is True else (cache or None)
    n = len(paths)
    out: list[ScanFacts | None] = [None] * n
    first: dict[str, int] = {}
    for i in range(n):
        if import_errors[i] or not shas[i]:
            out[i] = ScanFacts(error=import_errors[i] or "cannot read")
        elif shas[i] not in first:
            first[shas[i]] = i
    known = store.get(list(first)) if store is not None else {}
    todo = [i for sha, i in first.items() if sha not in known]
    done = n - len(todo)
    if progress is not None:
        progress(done, n)
    if todo:
        with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="imclass-scan") as pool:
            batch: list[tuple[str, ScanFacts]] = []
            for i, facts in zip(todo, pool.map(lambda j: scan_file(paths[j]), todo)):
                known[shas[i]] = facts
                batch.append((shas[i], facts))
                done += 1
                if len(batch) >= 32:
                    if store is not None:
                        store.put(batch)
                    batch = []
                    if progress is not None:
                        progress(done, n)
            if store is not None:
                store.put(batch)
    if progress is not None:
        progress(n, n)
    return [f if f is not None else known[shas[i]] for i, f in enumerate(out)]
