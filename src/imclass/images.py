"""The one safe image loader.

Every part of imclass (prediction, training, audit, serving) reads pixels through
:func:`load_image`. It never returns a half-decoded image: anything it cannot read correctly raises
:class:`~imclass.errors.ImageLoadError` with a short reason, which batch code turns into an error row.
"""

from __future__ import annotations

import io
import os
import struct
from pathlib import Path
from typing import BinaryIO, Union

import numpy as np
from PIL import ExifTags, Image, ImageCms, ImageFile, ImageOps, UnidentifiedImageError

from .errors import ImageLoadError

#: Extensions (lower case) picked up when walking folders. Files named explicitly are always tried.
IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".gif", ".bmp", ".dib", ".tif", ".tiff", ".webp",
     ".ppm", ".pgm", ".pbm", ".pnm", ".tga", ".ico", ".jp2", ".j2k"}
)
#: Pillow's default decompression-bomb limit (~89.5 megapixels), the loader's default too.
DEFAULT_MAX_PIXELS = 1024 * 1024 * 1024 // 4 // 3

ImageSource = Union[str, os.PathLike, bytes, BinaryIO, Image.Image]

#: Formats ``draft_size`` applies to. MPO is a JPEG followed by more pictures (a phone's HDR gain map or depth
#: map, a stereo pair): Pillow opens it at the first, a plain JPEG, which decodes at draft scale like any other.
DRAFT_FORMATS = ("JPEG", "MPO")

# Truncated files must fail, never be silently padded with grey.
ImageFile.LOAD_TRUNCATED_IMAGES = False


def is_image_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def load_image(
    src: ImageSource,
    *,
    draft_size: tuple[int, int] | None = None,
    max_pixels: int | None = None,
    background: tuple[int, int, int] = (255, 255, 255),
) -> Image.Image:
    """Read one image as an 8-bit RGB PIL image, upright.

    - EXIF orientation is applied; the first frame of animations is used.
    - Grey, palette, CMYK (ICC-aware), 16-bit and float images are converted to 8-bit RGB;
      transparency is composited over ``background``.
    - ``draft_size`` lets JPEGs (MPO too) decode at 1/2, 1/4 or 1/8 scale while staying >= that size.
    - Images over ``max_pixels`` are refused before decoding (decompression-bomb guard). The
      default is Pillow's ``Image.MAX_IMAGE_PIXELS``; a larger value cannot lift Pillow's own limit.

    Raises :class:`ImageLoadError` for anything unreadable.
    """
    name = source_name(src)
    fp = src if isinstance(src, Image.Image) else _open_source(src, name)
    try:
        if isinstance(src, Image.Image):  # may still be lazy: decoding errors are handled below
            return _to_rgb(ImageOps.exif_transpose(src), background, name)
        # Not ``with img``: closing would free the pixels. The file itself is closed below.
        img = Image.open(fp)  # reads the header only; Pillow's own bomb check applies too
        w, h = img.size
        if w <= 0 or h <= 0:
            raise ImageLoadError(name, f"invalid image dimensions {w}x{h}")
        limit = max_pixels if max_pixels is not None else Image.MAX_IMAGE_PIXELS
        if limit is not None and w * h > limit:
            raise ImageLoadError(
                name, f"image too large: {w}x{h} = {w * h / 1e6:.0f} MP exceeds the "
                f"{limit / 1e6:.0f} MP limit (decompression-bomb guard)")
        if getattr(img, "is_animated", False):
            img.seek(0)
        if draft_size is not None and img.format in DRAFT_FORMATS:
            img.draft("RGB", draft_size)
        img.load()
        # exif_transpose copies even an upright image (~1 ms for a 500x375 photo): only call it when needed
        if img.getexif().get(ExifTags.Base.Orientation, 1) not in (0, 1):
            img = ImageOps.exif_transpose(img)
        return _to_rgb(img, background, name)
    except ImageLoadError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageLoadError(name, f"image too large (decompression-bomb guard): {e}") from None
    except UnidentifiedImageError:
        raise ImageLoadError(name, "not an image (unrecognised file format)") from None
    except OSError as e:
        msg = str(e) or e.__class__.__name__
        if "truncated" in msg.lower():
            msg = "truncated or corrupt image data"
        raise ImageLoadError(name, f"corrupt image: {msg}") from None
    except (ValueError, SyntaxError, EOFError, IndexError, TypeError, KeyError, ZeroDivisionError,
            struct.error) as e:
        raise ImageLoadError(name, f"corrupt image: {e.__class__.__name__}: {e}") from None
    except MemoryError:
        raise ImageLoadError(name, "out of memory while decoding") from None
    finally:
        if not isinstance(src, (Image.Image,)) and fp is not src:
            fp.close()


def source_name(src: ImageSource) -> str:
    """A printable name for an image source (its path, or a placeholder for in-memory data)."""
    if isinstance(src, (str, os.PathLike)):
        return os.fspath(src)
    if isinstance(src, Image.Image):
        return getattr(src, "filename", "") or "<PIL image>"
    if isinstance(src, bytes):
        return "<bytes>"
    return getattr(src, "name", "<stream>")


def open_error(path: str | os.PathLike) -> str | None:
    """Why the loader cannot open the file ``path`` (its error reason: ``broken symlink``, ``permission denied``,
    ...), or None when it can. For readers that fetch bytes themselves and must report a failure exactly as
    :func:`load_image` would for the path."""
    try:
        _open_source(path, os.fspath(path)).close()
    except ImageLoadError as e:
        return e.reason
    return None


def _open_source(src: ImageSource, name: str) -> BinaryIO:
    if isinstance(src, bytes):
        if not src:
            raise ImageLoadError(name, "empty file (0 bytes)")
        return io.BytesIO(src)
    if isinstance(src, (str, os.PathLike)):
        path = Path(src)
        try:
            st = path.stat()
        except FileNotFoundError:
            reason = "broken symlink" if path.is_symlink() else "file not found"
            raise ImageLoadError(name, reason) from None
        except OSError as e:
            raise ImageLoadError(name, f"cannot access file: {e.strerror or e}") from None
        if path.is_dir():
            raise ImageLoadError(name, "is a directory, not an image file")
        if st.st_size == 0:
            raise ImageLoadError(name, "empty file (0 bytes)")
        try:
            return open(path, "rb")
        except PermissionError:
            raise ImageLoadError(name, "permission denied") from None
        except OSError as e:
            raise ImageLoadError(name, f"cannot open file: {e.strerror or e}") from None
    return src  # a binary stream owned by the caller


def _to_rgb(img: Image.Image, background: tuple[int, int, int], name: str) -> Image.Image:
    mode = img.mode
    if mode in ("P", "PA", "RGB", "L", "1") and "transparency" in img.info:
        img = img.convert("RGBA")  # palette or colour-key transparency -> alpha
        mode = "RGBA"
    if mode == "RGB":
        return img
    if mode == "CMYK":
        return _cmyk_to_rgb(img)
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        return Image.fromarray(_high_depth_to_uint8(img, mode)).convert("RGB")
    if mode == "PA":
        img, mode = img.convert("RGBA"), "RGBA"
    if mode in ("RGBA", "LA", "La", "RGBa"):
        rgba = img.convert("RGBA")
        base = Image.new("RGBA", rgba.size, (*background, 255))
        return Image.alpha_composite(base, rgba).convert("RGB")
    try:
        return img.convert("RGB")
    except (ValueError, OSError) as e:
        raise ImageLoadError(name, f"unsupported colour mode {mode!r}: {e}") from None


def _high_depth_to_uint8(img: Image.Image, mode: str) -> np.ndarray:
    arr = np.asarray(img)
    if mode == "F":
        arr = arr.astype(np.float64)
        hi = float(np.nanmax(arr)) if arr.size else 1.0
        scale = 255.0 if hi <= 1.0 else 1.0
        return np.clip(np.nan_to_num(arr) * scale, 0, 255).astype(np.uint8)
    arr = arr.astype(np.int64)
    # 16-bit data (PNG, TIFF) is scaled by 65535 -> 255; 'I' images with 8-bit content stay as is.
    if mode.startswith("I;16") or (arr.size and arr.max() > 255):
        return np.clip(arr // 257, 0, 255).astype(np.uint8)
    return np.clip(arr, 0, 255).astype(np.uint8)


_SRGB = None


def _cmyk_to_rgb(img: Image.Image) -> Image.Image:
    global _SRGB
    icc = img.info.get("icc_profile")
    if icc:
        try:
            if _SRGB is None:
                _SRGB = ImageCms.createProfile("sRGB")
            src = ImageCms.ImageCmsProfile(io.BytesIO(icc))
            return ImageCms.profileToProfile(img, src, _SRGB, outputMode="RGB")
        except (ImageCms.PyCMSError, OSError, ValueError):
            pass  # a broken profile falls back to the plain conversion
    return img.convert("RGB")
