"""End to end: a folder of every kind of bad or awkward image through ``imclass predict``.

Every file becomes exactly one row: a label for what can be read (after conversion), an error
for what cannot, and the run exits with 2 ("finished with per-file errors").
"""

from __future__ import annotations

import csv
import ctypes
import io
import json
import os
import shutil
import struct
import subprocess
import sys
import zlib
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import SAMPLES, run_cli
from imclass.engine.sources import iter_image_paths

pytestmark = pytest.mark.slow

# name -> expected error reason fragment (None: must be labelled)
GOOD = {
    "palace.jpg": None,
    "cat.jpg": None,
    "café, menu 1.jpg": None,
    "日本 photo, 2.png": None,
    "cmyk.jpg": None,
    "gray16.png": None,
    "palette-transparent.png": None,
    "animated.gif": None,
    "rotated.jpg": None,
    os.path.join("x.jpg", "inside.jpg"): None,
}
BAD = {
    "empty.jpg": "empty",
    "truncated.jpg": "truncated",
    "notes.jpg": "not an image",
    "huge.png": "too large",
    "gone.jpg": "broken symlink",
}
UNREADABLE = ("locked.jpg", "permission denied")


# ---- building the library -------------------------------------------------------------------------

def bilevel_png(w: int, h: int) -> bytes:
    """A valid 1-bit PNG of any size (w*h beyond the decompression-bomb limit, ~12 KB on disk)."""
    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    row = bytes(1 + (w + 7) // 8)
    comp = zlib.compressobj(9)
    idat = b"".join(comp.compress(row * 500) for _ in range(h // 500)) + comp.compress(row * (h % 500))
    idat += comp.flush()
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 1, 0, 0, 0, 0))
            + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


def build_library(root: Path) -> None:
    root.mkdir()
    shutil.copy(SAMPLES / "palace.jpg", root / "palace.jpg")
    shutil.copy(SAMPLES / "cat.jpg", root / "cat.jpg")
    shutil.copy(SAMPLES / "coffee.jpg", root / "café, menu 1.jpg")
    Image.open(SAMPLES / "cameraman.png").save(root / "日本 photo, 2.png")
    (root / "x.jpg").mkdir()  # a folder whose name looks like an image
    shutil.copy(SAMPLES / "cat.jpg", root / "x.jpg" / "inside.jpg")

    photo = Image.open(SAMPLES / "coffee.jpg").convert("RGB")
    photo.convert("CMYK").save(root / "cmyk.jpg", quality=90)
    grey16 = (np.asarray(photo.convert("L"), dtype=np.uint16) * 257).astype(np.uint16)
    Image.fromarray(grey16).save(root / "gray16.png")
    pal = photo.quantize(colors=64)
    pal.paste(0, (0, 0, pal.width // 3, pal.height // 3))
    pal.save(root / "palette-transparent.png", transparency=0)
    frames = [Image.open(SAMPLES / "cat.jpg").convert("RGB").resize((160, 120)), Image.new("RGB", (160, 120), "blue")]
    frames[0].save(root / "animated.gif", save_all=True, append_images=frames[1:], duration=100, loop=0)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.open(SAMPLES / "palace.jpg").save(root / "rotated.jpg", exif=exif.tobytes(), quality=90)

    (root / "empty.jpg").write_bytes(b"")
    data = (SAMPLES / "palace.jpg").read_bytes()
    (root / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (root / "notes.jpg").write_text("not a photo, just text\n" * 50, encoding="utf-8")
    (root / "huge.png").write_bytes(bilevel_png(12_000, 12_000))  # 144 MP
    (root / "gone.jpg").symlink_to(root / "deleted-before-the-run.jpg")
    (root / "README.txt").write_text("not an image extension: never listed", encoding="utf-8")

    # sanity: the fixtures are what their names say
    assert Image.open(root / "cmyk.jpg").mode == "CMYK"
    assert Image.open(root / "gray16.png").mode.startswith("I;16")
    assert "transparency" in Image.open(root / "palette-transparent.png").info
    assert Image.open(root / "animated.gif").n_frames == 2
    assert Image.open(root / "rotated.jpg").getexif()[0x0112] == 6
    assert Image.open(io.BytesIO(bilevel_png(300, 200))).size == (300, 200)


# ---- an unreadable file, also when the tests run as root ------------------------------------------

_PRCTL = ctypes.CDLL(None, use_errno=True).prctl if sys.platform.startswith("linux") else None


def _drop_dac_capabilities() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Remove CAP_DAC_OVERRIDE / CAP_DAC_READ_SEARCH from the bounding set: root then obeys file modes.

    The exec that follows recomputes root's capabilities from the bounding set, so the CLI runs as
    root without the right to bypass file permissions. Only a prepared C call runs in the child.
    """
    for cap in (1, 2):
        if _PRCTL(24, cap, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP) failed")


def unreadable_strategy(probe_dir: Path) -> tuple[dict | None, str]:
    """Subprocess kwargs under which a chmod-000 file cannot be read, or (None, why not).

    Not root: plain chmod 000 works. Root: drop the DAC override capabilities in the child (root
    keeps its uid, so it can still run the venv and write its output). The user ``nobody`` is not
    used: the venv's interpreter usually lives under a 0700 home that ``nobody`` cannot enter.
    """
    candidates: list[tuple[str, dict]] = [("chmod 000", {})]
    if getattr(os, "geteuid", lambda: -1)() == 0 and _PRCTL is not None:
        candidates = [("root without CAP_DAC_OVERRIDE", {"preexec_fn": _drop_dac_capabilities})]
    probe = probe_dir / "probe.bin"
    probe.write_bytes(b"secret")
    probe.chmod(0)
    code = ("import imclass, sys\n"
            "try:\n    open(sys.argv[1], 'rb').read()\nexcept PermissionError:\n    sys.exit(0)\n"
            "sys.exit(3)")
    why = []
    try:
        for label, kwargs in candidates:
            try:
                r = subprocess.run([sys.executable, "-c", code, str(probe)], capture_output=True, text=True,
                                   timeout=120, **kwargs)
            except (OSError, subprocess.SubprocessError) as e:
                why.append(f"{label}: {e}")
                continue
            if r.returncode == 0:
                return kwargs, label
            why.append(f"{label}: the probe file stayed readable (rc={r.returncode}) {r.stderr.strip()[-200:]}")
    finally:
        probe.chmod(0o600)
    return None, "cannot make a file unreadable for the CLI process: " + "; ".join(why)


# ---- the runs -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("bad-inputs")
    lib = base / "library"
    build_library(lib)
    kwargs, how = unreadable_strategy(base)
    expected = {**{n: None for n in GOOD}, **BAD}
    if kwargs is not None:
        locked = lib / UNREADABLE[0]
        shutil.copy(SAMPLES / "cat.jpg", locked)
        locked.chmod(0)
        expected[UNREADABLE[0]] = UNREADABLE[1]
    out_csv = base / "out.csv"
    try:  # the two runs overlap: most of each is Python and model start-up
        with ThreadPoolExecutor(2) as pool:
            csv_job = pool.submit(run_cli, "predict", str(lib), "--output", str(out_csv), "-q", **(kwargs or {}))
            json_job = pool.submit(run_cli, "predict", str(lib), "--json", "-q", **(kwargs or {}))
            csv_run, json_run = csv_job.result(), json_job.result()
    finally:
        if kwargs is not None:
            (lib / UNREADABLE[0]).chmod(0o644)
    return {"lib": lib, "expected": expected, "csv_run": csv_run, "out_csv": out_csv, "json_run": json_run,
            "unreadable": kwargs is not None, "unreadable_how": how}


def check_rows(rows: list[dict], lib: Path, expected: dict[str, str | None]) -> None:
    paths = [r["path"] for r in rows]
    want = {os.path.join(str(lib), n): err for n, err in expected.items()}
    counts = Counter(paths)
    assert not [p for p, n in counts.items() if n > 1], f"paths written more than once: {counts}"
    assert set(paths) == set(want), (f"missing: {sorted(set(want) - set(paths))}, "
                                     f"unexpected: {sorted(set(paths) - set(want))}")
    assert paths == [p for p in iter_image_paths([str(lib)]) if p in want]  # input order
    for r in rows:
        fragment = want[r["path"]]
        if fragment is None:
            assert not r["error"], f"{r['path']}: unexpected error {r['error']!r}"
            assert r["label"], f"{r['path']}: no label"
            assert 0 < float(r["score"]) <= 1, r
        else:
            assert r["error"], f"{r['path']}: expected an error row, got {r}"
            assert fragment in r["error"], f"{r['path']}: error {r['error']!r} lacks {fragment!r}"
            assert not r["label"], f"{r['path']}: error row with label {r['label']!r}"
            assert r["score"] in ("", None), r


def test_bad_inputs_csv(runs):
    r = runs["csv_run"]
    assert r.returncode == 2, f"exit {r.returncode}\nstdout: {r.stdout[-2000:]}\nstderr: {r.stderr[-2000:]}"
    assert "Traceback" not in r.stderr, r.stderr
    with open(runs["out_csv"], newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    check_rows(rows, runs["lib"], runs["expected"])
    # the x.jpg folder was walked, not read as an image
    assert os.path.join(str(runs["lib"]), "x.jpg") not in {row["path"] for row in rows}
    # colours survive the CMYK round trip: same top class as the RGB original of that photo
    by_name = {os.path.relpath(row["path"], runs["lib"]): row for row in rows}
    assert by_name["cmyk.jpg"]["label"] == by_name["café, menu 1.jpg"]["label"]


def test_bad_inputs_json_lines(runs):
    r = runs["json_run"]
    assert r.returncode == 2, f"exit {r.returncode}\nstdout: {r.stdout[-2000:]}\nstderr: {r.stderr[-2000:]}"
    lines = [line for line in r.stdout.splitlines() if line.strip()]
    rows = [json.loads(line) for line in lines]  # every stdout line is one JSON object
    assert all(isinstance(row, dict) for row in rows)
    assert len(rows) == len(runs["expected"])
    check_rows(rows, runs["lib"], runs["expected"])
    for row in rows:
        if row["error"] is None:
            assert row["topk"] and row["topk"][0]["label"] == row["label"]


def test_unreadable_file_is_an_error_row(runs):
    if not runs["unreadable"]:
        pytest.skip(runs["unreadable_how"])
    with open(runs["out_csv"], newline="", encoding="utf-8") as f:
        rows = {row["path"]: row for row in csv.DictReader(f)}
    row = rows[os.path.join(str(runs["lib"]), UNREADABLE[0])]
    assert row["error"] == UNREADABLE[1] and not row["label"], (runs["unreadable_how"], row)
