"""Lean decoding: decode + preprocessing per image and whole-process ``imclass predict``, today's loader vs the
shipped one, with top-1 agreement; plus two candidates that were measured and not shipped. Prints Markdown.

    python bench/decode.py [--data DIR] [--n12 100] [--rounds 3] [--no-predict]

- today: JPEGs in draft mode, MPO files (a JPEG with a second picture after it: phones' HDR gain maps, depth
  maps) decoded at full size, the whole image resized then centre-cropped. shipped: MPO in draft mode too, and
  square photos resample only the crop (Pillow's ``box``, where that changes no pixel). ``--as-cli today|shipped``
  runs the ``imclass`` command line with either (how the whole-process rounds switch).
- candidates on top of shipped, not shipped: ``simplejpeg`` (libjpeg-turbo to NumPy at Pillow's draft scale,
  the same pixels; measured only when installed), ``cv2 resize`` (OpenCV INTER_AREA down / INTER_CUBIC up on
  the decoded array instead of Pillow's resize).
- photos: the shared ImageNet photos (1,000 224x224 crops: no draft, an upscale to 256); the same upscaled to
  2400/1400/700 px squares (draft at 1/8, 1/4, 1/2, then a downscale); 500x375 and 12 MP (4000x3000) photos
  from bench/scale.py's builder (real photos upscaled, JPEG q90), and the 12 MP ones as MPO with a 1000x750
  second picture. All made under $TMPDIR/imclass-bench-decode.
- rates: CPU time of one thread (``time.process_time``), median of ``--rounds`` interleaved rounds: the
  machine is shared, and CPU time moves less with its load than wall time.
- agreement: top-1 of the default model (ONNX Runtime) on each path's inputs vs today's, and ImageNet top-1.
- whole process: ``imclass predict DIR -o x.csv -q --overwrite`` on the 12 MP photos, today and shipped
  alternating; img/s of wall time and CPU seconds (user + sys) of the process.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "datasets"
TMP = Path(tempfile.gettempdir()) / "imclass-bench-decode"


# ---- today's loader, for comparison ----------------------------------------------------------------

def _whole_then_crop(self, img):
    from imclass.preprocess import _RESAMPLE, _center_crop

    size = self.resized_size(*img.size)
    if size != img.size:
        img = img.resize(size, _RESAMPLE[self.interpolation])
    return _center_crop(img, self.input_size)


@contextlib.contextmanager
def today():
    """The loader before lean decoding: no draft for MPO, the whole image resized."""
    from imclass import images
    from imclass.preprocess import Preprocess

    saved = images.DRAFT_FORMATS, Preprocess.resize_crop
    images.DRAFT_FORMATS, Preprocess.resize_crop = ("JPEG",), _whole_then_crop
    try:
        yield
    finally:
        images.DRAFT_FORMATS, Preprocess.resize_crop = saved


# ---- photos ----------------------------------------------------------------------------------------

def imagenet_files(data: Path) -> list[Path]:
    return sorted(p for d in sorted(data.iterdir()) if d.is_dir() for p in sorted(d.iterdir()))


def upscaled(files: list[Path], out: Path) -> list[Path]:
    made = []
    for i, p in enumerate(files):
        q = out / p.parent.name / (p.stem + ".jpg")
        if not q.exists():
            q.parent.mkdir(parents=True, exist_ok=True)
            s = (2400, 1400, 700)[i % 3]
            Image.open(p).convert("RGB").resize((s, s), Image.Resampling.BICUBIC).save(q, quality=90)
        made.append(q)
    return made


def photo_set(n: int, size: tuple[int, int], out: Path, mpo: bool = False) -> list[Path]:
    sys.path.insert(0, str(ROOT / "bench"))
    from scale import real_photos

    out.mkdir(parents=True, exist_ok=True)
    for i, p in enumerate(real_photos(n)):
        q = out / f"{i:05d}.jpg"
        if not q.exists():
            img = Image.open(p).convert("RGB").resize(size, Image.Resampling.BICUBIC)
            if mpo:  # a second picture after the first, as phones store HDR gain maps
                img.save(q, "MPO", save_all=True, append_images=[img.resize((size[0] // 4, size[1] // 4))],
                         quality=90)
            else:
                img.save(q, quality=90)
    return sorted(out.glob("*.jpg"))[:n]


# ---- paths -----------------------------------------------------------------------------------------

def paths(pre) -> dict:
    """name -> fn(path) -> uint8 model input."""
    import cv2

    from imclass import images

    cv2.setNumThreads(1)

    def old(p):
        with today():
            return pre.load(p)

    def full_decode(p):  # what today does to an MPO photo: the whole picture decoded
        with today():
            return pre.to_array(images.load_image(p))

    def cv(p):
        a = np.asarray(images.load_image(p, draft_size=pre.draft_size()))
        h, w = a.shape[:2]
        rw, rh = pre.resized_size(w, h)
        a = cv2.resize(a, (rw, rh), interpolation=cv2.INTER_AREA if rw < w else cv2.INTER_CUBIC)
        ch, cw = pre.input_size
        top, left = int(round((rh - ch) / 2.0)), int(round((rw - cw) / 2.0))
        return a[top:top + ch, left:left + cw]

    out = {"today": old, "shipped": pre.load, "cv2 resize": cv, "full-size decode": full_decode}
    try:
        import simplejpeg
    except ImportError:
        return out

    def turbo(p):  # simplejpeg at Pillow's draft scale, then the shipped resize
        data = Path(p).read_bytes()
        h, w, _, _ = simplejpeg.decode_jpeg_header(data)
        s = pillow_scale((w, h), pre.draft_size())
        a = simplejpeg.decode_jpeg(data, min_width=math.ceil(w / s), min_height=math.ceil(h / s))
        return pre.to_array(Image.fromarray(a))

    out["simplejpeg decode"] = turbo
    return out


def pillow_scale(size, draft) -> int:
    scale = min(size[0] // draft[0], size[1] // draft[1])
    return next((s for s in (8, 4, 2, 1) if scale >= s), 1)


def rates(fns: dict, files: list[Path], rounds: int) -> dict[str, float]:
    """ms of CPU per image per path, median of interleaved rounds."""
    got: dict[str, list[float]] = {k: [] for k in fns}
    for r in range(rounds):
        for name in (list(fns) if r % 2 == 0 else list(fns)[::-1]):
            fns[name](files[0])
            t0 = time.process_time()
            for f in files:
                fns[name](f)
            got[name].append((time.process_time() - t0) / len(files) * 1e3)
    return {k: statistics.median(v) for k, v in got.items()}


def top1(clf, fn, files: list[Path]) -> np.ndarray:
    return np.concatenate([clf.backend(np.stack([fn(f) for f in files[i:i + 32]])).argmax(1)
                           for i in range(0, len(files), 32)])


# ---- whole process ---------------------------------------------------------------------------------

def whole_process(big: Path, rounds: int) -> dict[str, list[tuple[float, float]]]:
    out = TMP / "pred.csv"
    got: dict[str, list[tuple[float, float]]] = {"today": [], "shipped": []}
    n = len(list(big.glob("*.jpg")))
    for r in range(rounds):
        for name in (list(got) if r % 2 == 0 else list(got)[::-1]):
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            t0 = time.perf_counter()
            subprocess.run([sys.executable, __file__, "--as-cli", name, "predict", str(big), "-o", str(out), "-q",
                            "--overwrite"], check=True, stdout=subprocess.DEVNULL)
            wall = time.perf_counter() - t0
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
            got[name].append((n / wall, cpu))
    return got


def as_cli(which: str, argv: list[str]) -> None:
    from imclass.cli import main as cli_main

    ctx = today() if which == "today" else contextlib.nullcontext()
    with ctx:
        sys.exit(cli_main(argv))


# ---- report ----------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--as-cli"]:
        as_cli(argv[1], argv[2:])
    import imclass
    from imclass.models.default import wordnet_ids

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=SHARED / "imagenet_10class_1k")
    ap.add_argument("--n12", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--no-predict", action="store_true")
    args = ap.parse_args(argv)

    files = imagenet_files(args.data)
    truth = np.array([p.parent.name for p in files])
    up = upscaled(files, TMP / "imagenet-up")
    web = photo_set(60, (500, 375), TMP / "500x375")
    big = photo_set(args.n12, (4000, 3000), TMP / "12mp")
    mpo = photo_set(args.n12, (4000, 3000), TMP / "12mp-mpo", mpo=True)
    assert Image.open(mpo[0]).format == "MPO"
    clf = imclass.load("default", device="cpu", threads=2)
    pre = clf.spec.preprocess
    fns = paths(pre)
    print(f"load {os.getloadavg()[0]:.1f}; {len(files)} ImageNet photos, {len(up)} upscaled, {len(big)} 12 MP\n")

    sets = {"ImageNet 224x224 crops": files[:200], "ImageNet upscaled to 700-2400 px squares": up[:60],
            "500x375": web, "12 MP 4000x3000": big[:30], "12 MP MPO (+ 1000x750 second picture)": mpo[:12]}
    names = ["today", "shipped", "simplejpeg decode", "cv2 resize"]
    names = [n for n in names if n in fns]
    print("Decode + preprocessing, ms of CPU per image (one thread), and the ratio to today:\n")
    print("| photos | " + " | ".join(names) + " |")
    print("|---|" + "---|" * len(names))
    for label, fs in sets.items():
        r = rates({k: fns[k] for k in names}, fs, args.rounds)
        print(f"| {label} | " + " | ".join(f"{r[k]:.2f} ({r['today'] / r[k]:.2f}x)" for k in names) + " |")

    print("\nModel inputs and top-1 of the default model vs today's (all 1,000 photos of each set):\n")
    print("| photos | path | inputs identical to today's | top-1 agreement | ImageNet top-1 (today's) |")
    print("|---|---|---|---|---|")
    wnids = np.array(wordnet_ids(clf.labels))
    for label, fs in (("ImageNet 224x224 crops", files), ("ImageNet upscaled squares", up)):
        base_inputs = {f: fns["today"](f) for f in fs}
        base = top1(clf, lambda f, b=base_inputs: b[f], fs)
        rows = ["shipped", "cv2 resize", *(["simplejpeg decode"] if "simplejpeg decode" in fns else [])]
        if label.startswith("ImageNet upscaled"):
            rows.append("full-size decode")  # today's handling of an MPO; shipped drafts it like any JPEG
        for name in rows:
            same = sum(np.array_equal(fns[name](f), base_inputs[f]) for f in fs)
            t = top1(clf, fns[name], fs)
            acc, acc0 = (wnids[t] == truth).mean(), (wnids[base] == truth).mean()
            print(f"| {label} | {name} | {same}/{len(fs)} | {(t == base).mean() * 100:.1f}% "
                  f"({int((t != base).sum())} differ) | {acc * 100:.1f}% ({acc0 * 100:.1f}%) |")
    print(f"\nload {os.getloadavg()[0]:.1f}")

    if not args.no_predict:
        for label, d in (("12 MP JPEG", big[0].parent), ("12 MP MPO", mpo[0].parent)):
            wp = whole_process(d, args.rounds)
            print(f"\n`imclass predict` on {args.n12} {label} photos, whole process, alternating rounds "
                  f"(img/s of wall time; CPU s):\n")
            print("| loader | img/s per round | median img/s | CPU s per round | median CPU s |\n|---|---|---|---|---|")
            base = statistics.median(x for x, _ in wp["today"])
            base_cpu = statistics.median(c for _, c in wp["today"])
            for name, v in wp.items():
                med, cpu = statistics.median(x for x, _ in v), statistics.median(c for _, c in v)
                print(f"| {name} | {', '.join(f'{x:.1f}' for x, _ in v)} | {med:.1f} ({med / base:.2f}x) | "
                      f"{', '.join(f'{c:.2f}' for _, c in v)} | {cpu:.2f} ({base_cpu / cpu:.2f}x less) |")
            print(f"\nload {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
