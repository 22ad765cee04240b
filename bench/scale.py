"""Scale figures for `imclass predict`: 12-megapixel photos, flat memory, start-up.

    python bench/scale.py [--n12 120] [--small 2000] [--large 20000] [--parts startup,12mp,library]

- 12 MP: real photos from ../shared/datasets upscaled to 4000x3000 JPEG (q90); whole-process img/s
  and steady-state img/s (rows written after the first batch), draft-mode JPEG decoding as shipped.
- Flat memory: peak RSS of `imclass predict` over 2,000 and 20,000 images (hard links to ~500 real
  ImageNet-size JPEGs, so the folder costs no disk), and the ratio.
- Start-up: a 1-image run, whole process, with a cold cache (ONNX export made and verified) and a
  warm one (cached export, no torch import).
Each figure comes from its own process (os.wait4 gives that process's peak RSS).
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
DATASETS = Path(os.environ.get("IMCLASS_DATASETS", ROOT.parent / "shared" / "datasets"))
OUT = ROOT / "bench" / "out" / "scale"
IMCLASS = [sys.executable, "-m", "imclass"]


def real_photos(n: int, seed: int = 0) -> list[Path]:
    if not DATASETS.is_dir():
        sys.exit(f"real datasets not found at {DATASETS}")
    pool = sorted(DATASETS.glob("flowers5/all/*/*.jpg"))
    pool += sorted(DATASETS.glob("natural_scenes_multilabel/images/*.jpg"))
    random.Random(seed).shuffle(pool)
    return pool[:n]


def make_set(name: str, n: int, size: tuple[int, int]) -> Path:
    d = OUT / f"{name}-{n}-{size[0]}x{size[1]}"
    if d.is_dir() and len(list(d.glob("*.jpg"))) == n:
        return d
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    for i, p in enumerate(real_photos(n)):
        Image.open(p).convert("RGB").resize(size, Image.Resampling.BICUBIC).save(d / f"{i:05d}.jpg", quality=90)
    return d


def linked_library(src: Path, n: int) -> Path:
    d = OUT / f"links-{n}"
    if d.is_dir() and sum(1 for _ in d.rglob("*.jpg")) == n:
        return d
    shutil.rmtree(d, ignore_errors=True)
    files = sorted(src.glob("*.jpg"))
    for i in range(n):
        sub = d / f"{i // 1000:03d}"
        sub.mkdir(parents=True, exist_ok=True)
        os.link(files[i % len(files)], sub / f"{i:06d}.jpg")
    return d


def run(args: list[str], env: dict | None = None, rows_file: Path | None = None) -> dict:
    """Run one process; wall time, peak RSS and (with rows_file) steady-state rows/s after the first batch."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    first = None
    while True:  # poll with wait4 (not Popen.poll, which would reap the child and lose its rusage)
        pid, status, ru = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        if rows_file is not None and first is None and rows_file.exists() and rows_file.stat().st_size > 200:
            first = (time.perf_counter(), _rows(rows_file))
        time.sleep(0.02)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t0
    err = proc.stderr.read().decode() if proc.stderr else ""
    if proc.returncode not in (0, 2):
        sys.exit(f"failed: {' '.join(args)}\n{err}")
    out = {"wall": wall, "rss_mib": ru.ru_maxrss / 1024}
    if first is not None:
        out["steady"] = (_rows(rows_file) - first[1]) / max(1e-9, t0 + wall - first[0])
    return out


def _rows(path: Path) -> int:
    with open(path, "rb") as f:
        return max(0, f.read().count(b"\n") - 1)


def predict(src: Path, extra: list[str] = (), env=None) -> dict:
    out = OUT / "pred.csv"
    out.unlink(missing_ok=True)  # a previous run's rows would pass for this run's first batch
    r = run([*IMCLASS, "predict", str(src), "-o", str(out), "-q", "--overwrite", *extra], env=env, rows_file=out)
    r["n"] = _rows(out)
    r["img_s"] = r["n"] / r["wall"]
    return r


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n12", type=int, default=120)
    ap.add_argument("--small", type=int, default=2000)
    ap.add_argument("--large", type=int, default=20000)
    ap.add_argument("--parts", default="startup,12mp,library", help="comma list of startup, 12mp, library")
    a = ap.parse_args()
    parts = set(a.parts.split(","))
    OUT.mkdir(parents=True, exist_ok=True)
    lines = []

    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "IMCLASS_CACHE_DIR": cache}
        one = make_set("imagenet", 500, (500, 375))
        first = str(next(one.glob("*.jpg")))
        if "startup" in parts:
            cold = run([*IMCLASS, "predict", first, "-q", "--json"], env=env)
            warm = run([*IMCLASS, "predict", first, "-q", "--json"], env=env)
            torch_one = run([*IMCLASS, "predict", first, "-q", "--json", "--backend", "torch"], env=env)
            lines += ["| start-up (1 image, whole process) | wall s | peak RSS MiB |", "|---|---|---|",
                      f"| cold cache (export + verify) | {cold['wall']:.2f} | {cold['rss_mib']:.0f} |",
                      f"| warm cache (ONNX, no torch import) | {warm['wall']:.2f} | {warm['rss_mib']:.0f} |",
                      f"| --backend torch | {torch_one['wall']:.2f} | {torch_one['rss_mib']:.0f} |", ""]
        else:  # the cached ONNX export the other runs use
            run([*IMCLASS, "predict", first, "-q", "--json"], env=env)

        if "12mp" in parts:
            big = make_set("12mp", a.n12, (4000, 3000))
            r12 = predict(big, env=env)
            r12t = predict(big, ["--backend", "torch"], env=env)
            lines += ["| 12 MP photos (4000x3000 JPEG q90) | images | wall s | img/s whole | img/s steady | "
                      "peak RSS MiB |", "|---|---|---|---|---|---|",
                      *(f"| imclass predict {name} | {r['n']} | {r['wall']:.1f} | {r['img_s']:.1f} | "
                        f"{r.get('steady', float('nan')):.1f} | {r['rss_mib']:.0f} |"
                        for name, r in (("(auto = ONNX Runtime)", r12), ("--backend torch", r12t))), ""]

        if "library" in parts:
            small, large = linked_library(one, a.small), linked_library(one, a.large)
            rs, rl = predict(small, env=env), predict(large, env=env)
            lines += ["| library size | wall s | img/s whole | img/s steady | peak RSS MiB |", "|---|---|---|---|---|",
                      *(f"| {r['n']:,} | {r['wall']:.1f} | {r['img_s']:.1f} | {r.get('steady', float('nan')):.1f} "
                        f"| {r['rss_mib']:.0f} |" for r in (rs, rl)),
                      f"| RSS ratio {rl['n']:,} / {rs['n']:,} | | | | **{rl['rss_mib'] / rs['rss_mib']:.3f}** |", ""]
    load = os.getloadavg()[0]
    lines.append(f"Command: `python bench/scale.py --n12 {a.n12} --small {a.small} --large {a.large} "
                 f"--parts {a.parts}`; "
                 f"load average at the end {load:.1f}; {os.cpu_count()} CPUs.")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
