"""``load_image``: every odd input a real photo library contains, made in the test."""

from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imclass import images
from imclass.errors import ImageLoadError
from imclass.images import DEFAULT_MAX_PIXELS, load_image

RED, GREEN, BLUE, WHITE = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)


# ---- helpers ------------------------------------------------------------------------------------

def noise(w: int, h: int, seed: int = 0) -> Image.Image:
    """Random RGB content: JPEG cannot compress it to nothing, so a cut lands in the scan data."""
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


def encode(img: Image.Image, fmt: str, **save) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **save)
    return buf.getvalue()


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def bilevel_png(w: int, h: int) -> bytes:
    """A valid all-black 1-bit PNG of any size, built without holding the pixels in memory.

    20000x20000 costs 50 MB of zeros through zlib: well under a second, ~50 KB on disk.
    """
    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    row = bytes(1 + (w + 7) // 8)  # filter byte 0 + packed bits
    comp = zlib.compressobj(9)
    rows_per_block = max(1, min(h, 4_000_000 // len(row)))
    parts, done = [], 0
    while done < h:
        n = min(rows_per_block, h - done)
        parts.append(comp.compress(row * n))
        done += n
    parts.append(comp.flush())
    ihdr = struct.pack(">IIBBBBB", w, h, 1, 0, 0, 0, 0)  # bit depth 1, greyscale
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", b"".join(parts))
            + chunk(b"IEND", b""))


def px(img: Image.Image, x: int, y: int) -> tuple[int, int, int]:
    return tuple(int(v) for v in np.asarray(img)[y, x])


def close_to(actual, expected, tol: int = 12) -> bool:
    return all(abs(int(a) - int(e)) <= tol for a, e in zip(actual, expected))


def reason(src, **kw) -> str:
    with pytest.raises(ImageLoadError) as info:
        load_image(src, **kw)
    assert info.value.reason, "ImageLoadError without a reason"
    return info.value.reason


# ---- unreadable inputs ----------------------------------------------------------------------------

def test_zero_byte_file(tmp_path):
    p = write(tmp_path / "empty.jpg", b"")
    r = reason(p)
    assert "empty" in r and "0 bytes" in r
    assert "empty" in reason(b"")


def test_truncated_jpeg_raises_instead_of_padding(tmp_path):
    data = encode(noise(256, 192), "JPEG", quality=90)
    assert Image.open(io.BytesIO(data)).size == (256, 192)  # the header survives the cut...
    p = write(tmp_path / "cut.jpg", data[: len(data) // 2])
    assert "truncated" in reason(p)  # ...but the pixels do not: no grey padding
    assert "truncated" in reason(data[: len(data) // 2])


def test_truncated_png_raises(tmp_path):
    data = encode(noise(200, 150), "PNG")
    r = reason(write(tmp_path / "cut.png", data[: len(data) // 2]))
    assert r.startswith("corrupt image")


def test_text_file_named_jpg(tmp_path):
    p = tmp_path / "notes.jpg"
    p.write_text("shopping list: eggs, milk\n" * 20, encoding="utf-8")
    assert "not an image" in reason(p)
    assert "not an image" in reason(b"plain text, not pixels")


def test_png_generator_makes_valid_images():
    """The bomb tests below are only meaningful if the generator writes decodable PNGs."""
    img = Image.open(io.BytesIO(bilevel_png(301, 203)))
    img.load()
    assert (img.mode, img.size) == ("1", (301, 203))
    out = load_image(bilevel_png(301, 203))
    assert out.size == (301, 203) and px(out, 300, 202) == (0, 0, 0)


@pytest.mark.parametrize("w, h", [(10_000, 10_000), (20_000, 20_000)])  # 100 MP (warning), 400 MP (error)
def test_huge_dimensions_refused_by_default_guard(tmp_path, w, h):
    assert w * h > DEFAULT_MAX_PIXELS
    p = write(tmp_path / "bomb.png", bilevel_png(w, h))
    assert p.stat().st_size < 200_000  # tiny on disk, huge once decoded
    r = reason(p)
    assert "too large" in r and "decompression-bomb" in r


def test_max_pixels_parameter(tmp_path):
    p = write(tmp_path / "small.png", encode(noise(64, 48), "PNG"))
    r = reason(p, max_pixels=64 * 48 - 1)
    assert "too large" in r and "64x48" in r
    assert load_image(p, max_pixels=64 * 48).size == (64, 48)  # the limit itself is allowed
    assert load_image(p, max_pixels=None).size == (64, 48)


def test_missing_file(tmp_path):
    assert reason(tmp_path / "nope.jpg") == "file not found"


def test_broken_symlink(tmp_path):
    link = tmp_path / "gone.jpg"
    link.symlink_to(tmp_path / "deleted-long-ago.jpg")
    assert "broken symlink" in reason(link)


def test_symlink_to_image_is_followed(tmp_path):
    target = write(tmp_path / "real.png", encode(Image.new("RGB", (5, 4), GREEN), "PNG"))
    link = tmp_path / "link.png"
    link.symlink_to(target)
    assert px(load_image(link), 2, 2) == GREEN


def test_directory_passed_as_path(tmp_path):
    d = tmp_path / "album.jpg"
    d.mkdir()
    assert "directory" in reason(d)


def test_permission_denied_is_reported(tmp_path, monkeypatch):
    """Root reads chmod-000 files, so the refusal is simulated where ``load_image`` opens the file."""
    p = write(tmp_path / "locked.png", encode(noise(8, 8), "PNG"))

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(p))

    monkeypatch.setattr(images, "open", refuse, raising=False)  # shadows the builtin in that module
    assert reason(p) == "permission denied"


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0,
                    reason="root ignores file permissions (covered by the simulated test above)")
def test_unreadable_file_really(tmp_path):
    p = write(tmp_path / "locked.png", encode(noise(8, 8), "PNG"))
    p.chmod(0)
    try:
        assert reason(p) == "permission denied"
    finally:
        p.chmod(0o644)


# ---- colour modes -------------------------------------------------------------------------------

def test_cmyk_jpeg_colours(tmp_path):
    img = Image.new("CMYK", (40, 30), (0, 255, 255, 0))  # pure red ink
    img.paste((255, 0, 255, 0), (20, 0, 40, 30))  # right half: pure green ink
    p = write(tmp_path / "cmyk.jpg", encode(img, "JPEG", quality=95))
    assert Image.open(p).mode == "CMYK"
    out = load_image(p)
    assert out.mode == "RGB" and out.size == (40, 30)
    assert close_to(px(out, 5, 15), RED), px(out, 5, 15)
    assert close_to(px(out, 35, 15), GREEN), px(out, 35, 15)


def test_cmyk_jpeg_with_broken_icc_profile_falls_back(tmp_path):
    img = Image.new("CMYK", (16, 16), (0, 255, 255, 0))
    p = write(tmp_path / "cmyk-icc.jpg", encode(img, "JPEG", quality=95, icc_profile=b"not a profile" * 10))
    assert Image.open(p).info.get("icc_profile")
    assert close_to(px(load_image(p), 8, 8), RED)


def test_16bit_greyscale_png_is_scaled_not_clipped(tmp_path):
    ramp = np.tile(np.linspace(0, 65535, 256).round().astype(np.uint16), (8, 1))
    p = tmp_path / "gray16.png"
    Image.fromarray(ramp).save(p)
    assert Image.open(p).mode.startswith("I")
    a = np.asarray(load_image(p))
    assert a.dtype == np.uint8 and a.shape == (8, 256, 3)
    assert a[0, 0].tolist() == [0, 0, 0]
    assert a[0, -1].tolist() == [255, 255, 255]
    assert 120 <= a[0, 128, 0] <= 136  # the middle stays mid-grey
    assert (np.diff(a[0, :, 0].astype(int)) >= 0).all()  # monotonic, no wrap-around
    assert (a[0, :, 0] == 255).sum() <= 2  # not white everywhere (clipping 16-bit to 8-bit)


def test_dark_16bit_png_stays_dark(tmp_path):
    p = tmp_path / "dark16.png"
    Image.fromarray(np.full((4, 4), 200, dtype=np.uint16)).save(p)  # 200/65535: nearly black
    assert px(load_image(p), 1, 1) == (0, 0, 0)


def test_float_image_input():
    arr = np.zeros((4, 4), dtype=np.float32)
    arr[:, 2:] = 1.0
    out = load_image(Image.fromarray(arr, mode="F"))
    assert px(out, 0, 0) == (0, 0, 0) and px(out, 3, 3) == (255, 255, 255)


def test_palette_png_with_transparency(tmp_path):
    img = Image.new("P", (10, 10), 0)
    img.putpalette([0, 0, 0, *GREEN, *BLUE] + [0] * (253 * 3))
    img.paste(1, (0, 0, 5, 10))  # left half green
    img.paste(2, (5, 0, 7, 10))  # a blue stripe; the rest stays index 0 = transparent
    p = tmp_path / "pal.png"
    img.save(p, transparency=0)
    assert Image.open(p).mode == "P" and "transparency" in Image.open(p).info
    out = load_image(p)
    assert px(out, 2, 2) == GREEN
    assert px(out, 6, 2) == BLUE
    assert px(out, 9, 9) == WHITE  # transparent -> white background, not the palette's black
    assert px(load_image(p, background=(10, 20, 30)), 9, 9) == (10, 20, 30)


def test_rgba_png_composited_over_white(tmp_path):
    a = np.zeros((4, 6, 4), dtype=np.uint8)
    a[:, :2] = (255, 0, 0, 255)  # opaque red
    a[:, 2:4] = (255, 0, 0, 0)  # fully transparent red
    a[:, 4:] = (0, 0, 255, 128)  # half-transparent blue
    p = tmp_path / "rgba.png"
    Image.fromarray(a, "RGBA").save(p)
    out = load_image(p)
    assert out.mode == "RGB"
    assert px(out, 0, 0) == RED
    assert px(out, 2, 0) == WHITE
    assert close_to(px(out, 5, 0), (127, 127, 255), tol=2)


def test_la_png_composited_over_white(tmp_path):
    a = np.zeros((4, 4, 2), dtype=np.uint8)
    a[:, :2] = (50, 255)
    a[:, 2:] = (50, 0)
    p = tmp_path / "la.png"
    Image.fromarray(a, "LA").save(p)
    assert Image.open(p).mode == "LA"
    out = load_image(p)
    assert px(out, 0, 0) == (50, 50, 50)
    assert px(out, 3, 3) == WHITE


def test_animated_gif_uses_first_frame(tmp_path):
    p = tmp_path / "anim.gif"
    red, blue = Image.new("RGB", (12, 8), RED), Image.new("RGB", (12, 8), BLUE)
    red.save(p, save_all=True, append_images=[blue], duration=100, loop=0)
    with Image.open(p) as im:
        assert im.n_frames == 2
        im.seek(1)
        assert close_to(im.convert("RGB").getpixel((3, 3)), BLUE)  # frame 1 really is blue
    out = load_image(p)
    assert out.size == (12, 8)
    assert close_to(px(out, 3, 3), RED)


# ---- geometry -----------------------------------------------------------------------------------

def _marked(w=60, h=40) -> Image.Image:
    img = Image.new("RGB", (w, h), BLUE)
    img.paste(RED, (0, 0, 12, 12))  # marker at the stored top-left
    return img


@pytest.mark.parametrize("orientation, size, marker", [
    (1, (60, 40), (5, 5)),  # as stored
    (3, (60, 40), (54, 34)),  # rotated 180: marker bottom-right
    (6, (40, 60), (34, 5)),  # rotate 90 CW to view: marker top-right
    (8, (40, 60), (5, 54)),  # rotate 90 CCW to view: marker bottom-left
])
def test_exif_orientation_applied(tmp_path, orientation, size, marker):
    exif = Image.Exif()
    exif[0x0112] = orientation
    p = tmp_path / f"o{orientation}.jpg"
    _marked().save(p, exif=exif.tobytes(), quality=95)
    assert Image.open(p).size == (60, 40)
    for out in (load_image(p), load_image(Image.open(p)), load_image(p.read_bytes())):
        assert out.size == size
        assert close_to(px(out, *marker), RED), (orientation, px(out, *marker))
        assert close_to(px(out, size[0] // 2, size[1] // 2), BLUE)


@pytest.mark.parametrize("name", ["café, menu 1.jpg", "with  spaces .png", "日本語 ファイル,2.jpeg", "ü'quote\".gif"])
def test_odd_file_names(tmp_path, name):
    p = tmp_path / name
    Image.new("RGB", (9, 7), GREEN).save(p)
    out = load_image(p)
    assert out.size == (9, 7) and close_to(px(out, 4, 3), GREEN)
    assert load_image(str(p)).size == (9, 7)


def test_draft_size_decodes_large_jpeg_smaller(tmp_path):
    p = write(tmp_path / "big.jpg", encode(noise(2000, 1500), "JPEG", quality=80))
    full = load_image(p)
    assert full.size == (2000, 1500)
    small = load_image(p, draft_size=(256, 256))
    w, h = small.size
    assert w >= 256 and h >= 256
    assert w < 2000 and h < 1500
    assert (w, h) == (500, 375)  # 1/4 scale: 1/8 would drop below 256
    assert small.mode == "RGB"


def test_draft_size_on_portrait_jpeg(tmp_path):
    p = write(tmp_path / "portrait.jpg", encode(noise(600, 1000), "JPEG"))
    w, h = load_image(p, draft_size=(299, 299)).size
    assert w >= 299 and h >= 299
    assert (w, h) == (300, 500)  # 1/2 scale; 1/4 (150x250) would undershoot


def test_draft_size_ignored_for_png(tmp_path):
    p = write(tmp_path / "big.png", encode(noise(800, 600), "PNG"))
    assert load_image(p, draft_size=(100, 100)).size == (800, 600)


# ---- other source types -------------------------------------------------------------------------

def test_bytes_and_stream_input():
    img = Image.new("RGB", (8, 6), GREEN)
    img.paste(RED, (0, 0, 2, 2))
    data = encode(img, "PNG")
    out = load_image(data)
    assert out.size == (8, 6) and px(out, 0, 0) == RED and px(out, 5, 5) == GREEN
    stream = io.BytesIO(data)
    assert px(load_image(stream), 0, 0) == RED
    assert not stream.closed  # a caller's stream is the caller's to close


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "P", "L", "LA", "CMYK"])
def test_pil_image_input(mode):
    src = Image.new("RGB", (10, 10), RED)
    src.paste(WHITE, (5, 0, 10, 10))
    src = src.convert(mode)
    out = load_image(src)
    assert out.mode == "RGB" and out.size == (10, 10)
    assert px(out, 8, 5) == WHITE
    left = px(out, 1, 5)
    if mode in ("L", "LA"):
        assert left[0] == left[1] == left[2] and left != WHITE
    else:
        assert close_to(left, RED), (mode, left)


def test_pil_rgba_input_composited():
    out = load_image(Image.new("RGBA", (4, 4), (255, 0, 0, 0)))
    assert px(out, 0, 0) == WHITE


def test_lazy_truncated_pil_image_input_raises_image_load_error():
    data = encode(noise(256, 192), "JPEG", quality=90)
    lazy = Image.open(io.BytesIO(data[: len(data) // 2]))  # opened, not decoded yet
    assert "truncated" in reason(lazy)
