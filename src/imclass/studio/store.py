"""Content-addressed files of the studio: uploaded images (``blobs/ab/<sha256>.<ext>``, the extension of the
detected format, so exported lists and other tools see image files) and thumbnails
(``thumbs/<sha256>-<size>.jpg``), each written to a temporary name, flushed and renamed, so a crash never
leaves half a file under a real name. Files imported from a folder of the machine are referenced in place
and never written, moved or deleted; nothing here deletes anything.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..fileio import atomic_path

#: Thumbnail sizes served (longest side, px).
THUMB_SIZES = (128, 256, 512)


class Store:
    def __init__(self, root: str | Path):
        self.root = Path(root)
        (self.root / "blobs").mkdir(parents=True, exist_ok=True)
        (self.root / "thumbs").mkdir(parents=True, exist_ok=True)
        (self.root / "tmp").mkdir(parents=True, exist_ok=True)

    def blob_path(self, sha: str, ext: str = "") -> Path:
        return self.root / "blobs" / sha[:2] / f"{sha}{ext}"

    def put_file(self, src: str | Path, sha: str, ext: str = "") -> Path:
        """Move a temporary file (in ``tmp/``) into the store under its hash (a no-op if already there)."""
        dest = self.blob_path(sha, ext)
        if dest.exists():
            os.unlink(src)
            return dest
        dest.parent.mkdir(parents=True, exist_ok=True)
        with open(src, "rb") as f:
            os.fsync(f.fileno())
        os.replace(src, dest)
        return dest

    def temp_path(self, name: str) -> Path:
        return self.root / "tmp" / name

    def thumbnail(self, sha: str, source: str | Path, size: int) -> Path:
        """The JPEG thumbnail of an image (made on first use, through the one safe loader)."""
        from PIL import Image

        from ..images import load_image

        size = min((s for s in THUMB_SIZES if s >= size), default=THUMB_SIZES[-1])
        dest = self.root / "thumbs" / f"{sha}-{size}.jpg"
        if dest.exists():
            return dest
        img = load_image(source, draft_size=(size, size))
        img.thumbnail((size, size), Image.Resampling.BILINEAR, reducing_gap=2.0)
        with atomic_path(dest) as tmp:
            img.save(tmp, "JPEG", quality=85)
        return dest
