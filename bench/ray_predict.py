"""Benchmark ``imclass predict --ray`` (a local Ray instance, 2 actors) against the single-process
``imclass predict`` measured in the same run, as whole processes, and project throughput to a cluster.

    python bench/ray_predict.py                 # 1,000 + 10,000 photos (~10 min on 2 busy cores), appends to RESULTS
    python bench/ray_predict.py --n10k 0 --no-record      # the 1,000 photos only (~2 min)

What one run does:

1. the 1,000 ImageNet photos (``../shared/datasets/imagenet_10class_1k``): ``imclass predict DIR -o one.csv`` and
   ``imclass predict DIR --ray --actors 2 -o ray.csv``, back to back; checks that the outputs are the same (paths
   in order, each once; labels; scores within 1e-5);
2. 10,000 photos (``--n10k``): every photo of the shared datasets (imagenet_10class_1k, flowers5,
   natural_scenes_multilabel, neu_steel_defects: 8,617) plus the first ImageNet photos again, as symlinks under
   ``bench/out/ray10k/`` (so the repeats are distinct paths, read twice), the same two commands;
3. reads each run's own summary (stderr): the single process's labelling time and rate (model loaded), and for
   ``--ray`` the Ray start-up, the time to the first results (actors starting and loading the model) and the
   steady rate after it; ratios: steady ``--ray`` / single, whole process single wall / ``--ray`` wall;
4. per-core costs, in this process: decode + preprocessing of 200 photos on one thread, and the model (ONNX
   Runtime fp32, one thread, batches of 16), for the projection;
5. prints a Markdown section, appended to ``bench/RESULTS.md`` unless ``--no-record``.

The machine may be shared and noisy: compare the ratios, measured in the same run.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import re
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATASETS = Path(os.environ.get("IMCLASS_DATASETS", ROOT.parent / "shared" / "datasets"))
OUT = ROOT / "bench" / "out" / "ray"
SETS = ("imagenet_10class_1k", "flowers5", "natural_scenes_multilabel", "neu_steel_defects")


def run(cmd: list[str]) -> tuple[float, str]:
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
    wall = time.perf_counter() - t0
    if r.returncode not in (0, 2):
        sys.exit(f"{' '.join(cmd)} failed ({r.returncode}):\n{r.stderr[-3000:]}")
    return wall, r.stderr


def single(src: Path, out: Path) -> dict:
    wall, log = run([sys.executable, "-m", "imclass", "predict", str(src), "-o", str(out), "--overwrite"])
    m = re.search(r"Labelled (\d+) images? in ([\d.]+)s \(([\d.]+) img/s\).*loaded in ([\d.]+)s", log)
    return {"wall": wall, "n": int(m[1]), "seconds": float(m[2]), "rate": float(m[3]), "load": float(m[4])}


def ray(src: Path, out: Path, actors: int) -> dict:
    wall, log = run([sys.executable, "-m", "imclass", "predict", str(src), "-o", str(out), "--overwrite", "--ray",
                     "--actors", str(actors)])
    m = re.search(r"Labelled (\d+) images? in ([\d.]+)s \(([\d.]+) img/s\)", log)
    r = re.search(r"started in ([\d.]+)s; first results after ([\d.]+)s .*?, then ([\d.]+) img/s", log)
    return {"wall": wall, "n": int(m[1]), "seconds": float(m[2]), "rate": float(m[3]), "startup": float(r[1]),
            "warmup": float(r[2]), "steady": float(r[3])}


def compare(a: Path, b: Path) -> str:
    from imclass.labelling.sinks import read_rows

    ra, rb = read_rows(a), read_rows(b)
    dup = sum(n > 1 for n in Counter(r["path"] for r in rb).values())
    same_order = [r["path"] for r in ra] == [r["path"] for r in rb]
    labels = score = 0
    worst = 0.0
    for x, y in zip(ra, rb):
        for k in [k for k in x if k.startswith("label")]:
            labels += x[k] != y[k]
        for k in [k for k in x if k.startswith("score")]:
            if x[k]:
                d = abs(float(x[k]) - float(y[k]))
                worst = max(worst, d)
                score += d > 1e-5
    errors = sum(bool(r["error"]) for r in rb), sum(bool(r["error"]) for r in ra)
    return (f"{len(rb)} rows (single: {len(ra)}), duplicated paths {dup}, same order {same_order}, label cells "
            f"differing {labels}, scores beyond 1e-5 {score} (max |diff| {worst:.1e}), error rows {errors[0]} "
            f"(single: {errors[1]})")


def library_10k(n: int) -> Path:
    """Every photo of the shared sets, then ImageNet photos again, as symlinks (distinct paths) up to ``n``."""
    from imclass.engine.sources import iter_image_paths

    root = OUT / f"lib{n}"
    if root.is_dir() and sum(1 for _ in iter_image_paths([root])) == n:
        return root
    paths = [p for s in SETS for p in iter_image_paths([DATASETS / s])]
    imagenet = list(iter_image_paths([DATASETS / SETS[0]]))
    k = 0
    while len(paths) < n:
        paths.append(imagenet[k % len(imagenet)])
        k += 1
    for i, p in enumerate(paths[:n]):
        link = root / f"{i // 1000:02d}" / f"{i:05d}{Path(p).suffix.lower()}"
        link.parent.mkdir(parents=True, exist_ok=True)
        if not link.is_symlink():
            link.symlink_to(os.path.abspath(p))
    return root


def per_core() -> dict:
    """Decode + preprocessing and the model, each on one thread, for 200 ImageNet photos."""
    import numpy as np

    import imclass
    from imclass.engine.sources import iter_image_paths

    clf = imclass.load("default", device="cpu", threads=1, streams=1)
    _ = clf.backend
    paths = list(iter_image_paths([DATASETS / SETS[0]]))[:200]
    t0 = time.perf_counter()
    arrays = [clf.decode(p) for p in paths]
    decode = len(paths) / (time.perf_counter() - t0)
    batch = np.stack(arrays[:16])
    clf.logits(batch)
    t0 = time.perf_counter()
    for i in range(0, 192, 16):
        clf.logits(np.stack(arrays[i:i + 16]))
    model = 192 / (time.perf_counter() - t0)
    size = sum(os.path.getsize(p) for p in paths) / len(paths)
    return {"decode": decode, "model": model, "both": 1 / (1 / decode + 1 / model), "kb": size / 1024}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n10k", type=int, default=10_000, help="photos of the large run (0: skip it)")
    ap.add_argument("--actors", type=int, default=2)
    ap.add_argument("--no-record", action="store_true")
    args = ap.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    load = os.getloadavg()
    lines = [f"### {dt.date.today().isoformat()}: `imclass predict --ray` vs one process (`bench/ray_predict.py`)", "",
             f"Command: `python bench/ray_predict.py{' --n10k ' + str(args.n10k) if args.n10k != 10_000 else ''}`; "
             f"{os.cpu_count()} cores, load average at start {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} "
             "(other work on the machine); Ray local instance, "
             f"{args.actors} actors.", ""]
    rows = []
    src1k = DATASETS / SETS[0]
    one = single(src1k, OUT / "one-1k.csv")
    many = ray(src1k, OUT / "ray-1k.csv", args.actors)
    rows.append(("1,000 ImageNet photos", one, many))
    check = compare(OUT / "one-1k.csv", OUT / "ray-1k.csv")
    if args.n10k:
        src = library_10k(args.n10k)
        one10 = single(src, OUT / "one-10k.csv")
        many10 = ray(src, OUT / "ray-10k.csv", args.actors)
        rows.append((f"{args.n10k:,} photos (shared sets + ImageNet repeats)", one10, many10))
        check10 = compare(OUT / "one-10k.csv", OUT / "ray-10k.csv")
    lines += ["| photos | single: wall / labelling | single img/s | --ray: wall | Ray start-up | first results | "
              "--ray steady img/s | steady ratio | whole-process ratio |", "|---|---|---|---|---|---|---|---|---|"]
    for name, o, r in rows:
        lines.append(f"| {name} | {o['wall']:.1f} s / {o['seconds']:.1f} s | {o['rate']:.1f} | {r['wall']:.1f} s | "
                     f"{r['startup']:.1f} s | {r['warmup']:.1f} s | {r['steady']:.1f} | "
                     f"**{r['steady'] / o['rate']:.2f}x** | **{o['wall'] / r['wall']:.2f}x** |")
    lines += ["", f"Output check, 1,000 photos: {check}."]
    if args.n10k:
        lines.append(f"Output check, {args.n10k:,} photos: {check10}.")
    for name, o, r in rows:
        rest = r["wall"] - r["startup"] - r["seconds"]
        lines.append(f"Where the --ray wall time goes ({name}): Ray start-up {r['startup']:.1f} s, actors starting "
                     f"and loading the model {r['warmup']:.1f} s, labelling after the first results "
                     f"{r['seconds'] - r['warmup']:.1f} s, interpreter start-up, listing and shutdown {rest:.1f} s "
                     f"(single process: {o['wall'] - o['seconds']:.1f} s outside labelling).")
    c = per_core()
    actor = rows[0][2]["steady"] / args.actors
    lines += ["", f"Per core, one thread, this machine: decode + preprocessing {c['decode']:.0f} img/s, model (ONNX "
              f"Runtime fp32, batch 16) {c['model']:.0f} img/s, both in turn {c['both']:.0f} img/s; measured per "
              f"actor in the run above: {actor:.0f} img/s (each actor has ~1 core, shared with the driver and the "
              f"readers); mean file size {c['kb']:.0f} KB.", ""]
    cpu = actor * 160 * 3600
    lines += [f"Projection: 10 CPU nodes x 16 cores = 160 actors x {actor:.0f} img/s = **{cpu / 1e6:.1f} M "
              f"images/hour** ({actor * 160:.0f} img/s, {actor * 160 * c['kb'] / 1024:.0f} MB/s from storage at "
              f"{c['kb']:.0f} KB a photo); see docs/scale-out.md for 8 GPUs and the limits."]
    text = "\n".join(lines) + "\n"
    print(text)
    if not args.no_record:
        with open(ROOT / "bench" / "RESULTS.md", "a", encoding="utf-8") as f:
            f.write("\n" + text)


if __name__ == "__main__":
    main()
