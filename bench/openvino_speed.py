"""ONNX Runtime fp32 vs OpenVINO f32 / bf16 (/ INT8) for the default model: accuracy, agreement, speed.

(Not named openvino.py: the script's folder comes first on sys.path, and the file would shadow the package.)

    python bench/openvino_speed.py                       # ../shared/datasets/imagenet_10class_1k, all 1,000 photos
    python bench/openvino_speed.py --images 400 --rounds 3 --process-rounds 1
    python bench/openvino_speed.py --int8 BUNDLE   # + a bundle exported with --int8: ORT and OpenVINO INT8
    python bench/openvino_speed.py --record              # also write the runtime record `--backend auto` follows

Model only: :func:`imclass.engine.runtimes.verify` runs every runtime on the photos (top-1 accuracy against the
ImageNet labels from the WordNet-id folder names, top-1 agreement with ONNX Runtime fp32), then batch 16 over 2
threads split as labelling does (2 streams of 8), in interleaved rounds; the median is kept and each runtime's
ratio to ONNX Runtime fp32 in the same run is printed, with the rule's verdict. Whole process: ``imclass predict
DATA -o out.csv`` per runtime (2 threads, default streams and decode threads), wall time and the labelling rate
from its summary, interleaved rounds; its labels are compared with the ONNX Runtime fp32 run's.

Without ``--record`` nothing is written to the cache, so ``--backend auto`` keeps what it did.
"""

from __future__ import annotations

import argparse
import csv
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out" / "openvino"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "datasets" / "imagenet_10class_1k")
    ap.add_argument("--images", type=int, default=0, help="use an even sample of this many photos (0: all)")
    ap.add_argument("--rounds", type=int, default=3, help="model-only speed rounds")
    ap.add_argument("--seconds", type=float, default=3.0, help="seconds per runtime per model-only round")
    ap.add_argument("--process-rounds", type=int, default=2, help="whole-process rounds (0: skip)")
    ap.add_argument("--int8", type=Path, default=None, help="a bundle of the default model exported with --int8")
    ap.add_argument("--record", action="store_true", help="write the runtime record --backend auto follows")
    args = ap.parse_args(argv)
    if not args.data.is_dir():
        print(f"skipped: {args.data} not found (set --data)")
        return 0
    try:
        import openvino  # noqa: F401
    except ImportError:
        print("skipped: openvino is not installed (pip install 'imclass[openvino]')")
        return 0

    import imclass
    from imclass.engine import runtimes
    from imclass.engine.openvino_backend import bf16_supported, cpu_name
    from imclass.models.default import wordnet_ids

    files = sorted(p for d in sorted(args.data.iterdir()) if d.is_dir() for p in sorted(d.iterdir()))
    if args.images and args.images < len(files):
        files = [files[i] for i in np.linspace(0, len(files) - 1, args.images).round().astype(int)]
    clf = imclass.load("default", device="cpu", backend="onnx", threads=2)
    wnids = list(wordnet_ids(clf.labels))
    truth = np.array([wnids.index(p.parent.name) if p.parent.name in wnids else -1 for p in files])
    arrays = [clf.decode(str(p)) for p in files]
    batches = [np.stack(arrays[i:i + 16]) for i in range(0, len(arrays), 16)]
    onnx_path = clf.backend.path
    int8_path = None
    if args.int8 is not None:
        bundle = imclass.load(args.int8, device="cpu", backend="onnx-int8")
        int8_path = bundle.backend.path
    print(f"{len(files)} photos from {args.data}; CPU {cpu_name()}, bf16 {'yes' if bf16_supported() else 'no'}; "
          f"load {os.getloadavg()[0]:.1f}", flush=True)
    rec = runtimes.verify(onnx_path, clf.spec.preprocess, batches, truth, int8_path=int8_path, threads=2,
                          rounds=args.rounds, seconds=args.seconds, save=args.record, log=print)
    base = rec["runtimes"][runtimes.REFERENCE]["img_per_s"]
    print(f"\nmodel only, batch 16 (2 streams of 8, 2 threads), median of {args.rounds} rounds "
          f"(load {os.getloadavg()[0]:.1f}):")
    print("| runtime | top-1 accuracy | top-1 agreement with ORT fp32 | img/s | x ORT fp32 | rounds | rule |")
    print("|---|---|---|---|---|---|---|")
    for key, e in rec["runtimes"].items():
        verdict = ("reference" if key == runtimes.REFERENCE else
                   "passes" if e["passes_rule"] else "fails (stays opt-in)")
        print(f"| {key} | {e['accuracy']:.2%} | {e['top1_agreement']:.2%} | {e['img_per_s']:.1f} | "
              f"{e['img_per_s'] / base:.2f}x | {', '.join(f'{x:.0f}' for x in e['rounds'])} | {verdict} |")
    print(f"\nthe rule ({runtimes.RULE}) picks: {rec['choice']}"
          + ("" if args.record else " (not recorded: --record writes it for --backend auto)"))

    if args.process_rounds:
        whole_process(args, files, rec)
    return 0


RUNS = {"onnx-fp32": ["--backend", "onnx"], "openvino-fp32": ["--backend", "openvino", "--precision", "fp32"],
        "openvino-bf16": ["--backend", "openvino", "--precision", "bf16"]}


def whole_process(args, files: list[Path], rec: dict) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    listing = OUT / "photos"  # the sample as one folder of links, so every run walks the same files
    if listing.exists():
        for f in listing.iterdir():
            f.unlink()
    listing.mkdir(exist_ok=True)
    for i, f in enumerate(files):
        (listing / f"{i:05d}-{f.name}").symlink_to(f.resolve())
    runs = {k: v for k, v in RUNS.items() if k in rec["runtimes"]}
    if args.int8 is not None:
        runs["onnx-int8"] = ["--model", str(args.int8), "--backend", "onnx-int8"]
        runs["openvino-int8"] = ["--model", str(args.int8), "--backend", "openvino", "--precision", "int8"]
    walls: dict[str, list[float]] = {k: [] for k in runs}
    rates: dict[str, list[float]] = {k: [] for k in runs}
    for r in range(args.process_rounds):
        for key in (list(runs) if r % 2 == 0 else list(runs)[::-1]):
            out = OUT / f"{key}.csv"
            out.unlink(missing_ok=True)
            cmd = [sys.executable, "-m", "imclass", "predict", str(listing), "-o", str(out), "--threads", "2",
                   *runs[key]]
            t0 = time.perf_counter()
            p = subprocess.run(cmd, capture_output=True, text=True)
            wall = time.perf_counter() - t0
            if p.returncode != 0:
                raise SystemExit(f"{' '.join(cmd)} failed:\n{p.stderr[-2000:]}")
            m = re.search(r"Labelled \d+ images? in [\d.]+s \(([\d.]+) img/s\)", p.stderr)
            walls[key].append(wall)
            rates[key].append(float(m.group(1)) if m else float("nan"))
            print(f"  round {r}: {key:14s} {wall:5.1f}s whole process, labelling {rates[key][-1]:6.1f} img/s "
                  f"(load {os.getloadavg()[0]:.1f})", flush=True)
    labels = {k: _labels(OUT / f"{k}.csv") for k in runs}
    base_wall = statistics.median(walls["onnx-fp32"])
    n = len(files)
    print(f"\nwhole process, `imclass predict` {n} photos, --threads 2, median of {args.process_rounds} rounds:")
    print("| runtime | wall | img/s (whole process) | x ORT fp32 | labelling img/s | labels as ORT fp32 |")
    print("|---|---|---|---|---|---|")
    for key in runs:
        w = statistics.median(walls[key])
        same = sum(labels[key].get(p) == lab for p, lab in labels["onnx-fp32"].items())
        print(f"| {key} | {w:.1f} s | {n / w:.1f} | {base_wall / w:.2f}x | {statistics.median(rates[key]):.1f} | "
              f"{same}/{len(labels['onnx-fp32'])} |")


def _labels(path: Path) -> dict[str, str]:
    with path.open(newline="", encoding="utf-8") as f:
        return {row["path"]: row["label"] for row in csv.DictReader(f)}


if __name__ == "__main__":
    raise SystemExit(main())
