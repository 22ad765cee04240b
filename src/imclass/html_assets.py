"""Images inlined into the self-contained HTML reports (audit, evaluation): data URIs, no external files."""

from __future__ import annotations

import base64
import io
from typing import Any


def png_uri(fig: Any, dpi: int | None = None) -> str:
    """A matplotlib figure as a PNG data URI."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight", **({"dpi": dpi} if dpi else {}))
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def jpeg_uri(img: Any, size: int, quality: int = 80) -> str:
    """A PIL image or ``uint8`` array, shrunk to fit ``size`` x ``size``, as a JPEG data URI."""
    import numpy as np
    from PIL import Image

    if isinstance(img, np.ndarray):
        img = Image.fromarray(img)
    img = img.convert("RGB")
    img.thumbnail((size, size))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def thumbnail_uri(path: str, size: int) -> str | None:
    """A small JPEG data URI of an image file, read by the one loader; None when it cannot be read."""
    from .errors import ImageLoadError
    from .images import load_image

    try:
        img = load_image(path, draft_size=(size, size))
    except ImageLoadError:
        return None
    return jpeg_uri(img, size)
