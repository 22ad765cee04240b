"""Fine-tuning on 1 and 2 processes (``imclass train --mode finetune --devices N``): validation accuracy, mean and
spread over seeds, and time, on the same images and split.

    python bench/ddp_train.py                      # flowers5, 60 photos a class, 3 seeds (~15 min on 2 busy cores)
    python bench/ddp_train.py --per-class 20 --seeds 1 --no-record      # smoke test

Each run: ``imclass train SPLIT.csv --mode finetune --epochs E --image-size S --batch-size B --seed K --devices N``
(the CSV has a fixed ``split`` column, so every run trains and validates on the same images; ``--batch-size`` is
the global batch, so the recipe is the same for 1 and 2 processes). On one 2-core machine 2 processes share the
cores: this measures that the result is the same, not a speed-up (which needs a core or a GPU per process).
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATASETS = Path(os.environ.get("IMCLASS_DATASETS", ROOT.parent / "shared" / "datasets"))
OUT = ROOT / "bench" / "out" / "ddp"


def split_csv(per_class: int, seed: int = 0) -> Path:
    """``per_class`` flowers5 photos a class, 80% train / 20% val, fixed."""
    root = DATASETS / "flowers5" / "all"
    rows = []
    rng = random.Random(seed)
    for cls in sorted(p.name for p in root.iterdir() if p.is_dir()):
        files = sorted(str(p) for p in (root / cls).iterdir() if p.is_file())
        rng.shuffle(files)
        for i, f in enumerate(files[:per_class]):
            rows.append({"filename": f, "label": cls, "split": "val" if i < per_class // 5 else "train"})
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"flowers5-{per_class}.csv"
    with open(path, "w", encoding="utf-8", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["filename", "label", "split"])
        w.writeheader()
        w.writerows(rows)
    return path


def train(data: Path, devices: int, seed: int, args) -> dict:
    out = OUT / f"run-d{devices}-s{seed}"
    if out.exists():
        import shutil

        shutil.rmtree(out)
    cmd = [sys.executable, "-m", "imclass", "train", str(data), "--mode", "finetune", "--epochs", str(args.epochs),
           "--image-size", str(args.image_size), "--batch-size", str(args.batch_size), "--seed", str(seed),
           "--devices", str(devices), "--no-unknown", "--loader-workers", "0",
           "-o", str(out), "--json", "-q"]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
    if r.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{r.stderr[-3000:]}")
    m = json.loads(r.stdout)
    return {"acc": m["val"]["accuracy"], "seconds": time.perf_counter() - t0,
            "epochs": len(json.loads((out / "history.json").read_text()))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--per-class", type=int, default=60)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--image-size", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--no-record", action="store_true")
    args = ap.parse_args()
    data = split_csv(args.per_class)
    load = os.getloadavg()
    results: dict[int, list[dict]] = {1: [], 2: []}
    for seed in range(args.seeds):
        for devices in (1, 2):
            results[devices].append(train(data, devices, seed, args))
            print(devices, seed, results[devices][-1], flush=True)
    n_train = 5 * (args.per_class - args.per_class // 5)
    lines = [f"### {dt.date.today().isoformat()}: fine-tuning on 1 and 2 processes (`bench/ddp_train.py`)", "",
             f"Command: `python bench/ddp_train.py --per-class {args.per_class} --seeds {args.seeds} --epochs "
             f"{args.epochs} --image-size {args.image_size} --batch-size {args.batch_size}`: flowers5, "
             f"{n_train} training / {5 * (args.per_class // 5)} validation photos (fixed split), EfficientNet-Lite0 "
             f"fine-tuned, global batch {args.batch_size}; 2 cores, load average at start {load[0]:.1f}.", "",
             "| processes | val accuracy per seed | mean | spread (sd) | epochs | time per run |",
             "|---|---|---|---|---|---|"]
    for devices, rs in results.items():
        accs = [r["acc"] for r in rs]
        sd = statistics.stdev(accs) if len(accs) > 1 else 0.0
        lines.append(f"| {devices} | {', '.join(f'{a:.3f}' for a in accs)} | {statistics.mean(accs):.3f} | "
                     f"{sd:.3f} | {rs[0]['epochs']} | {statistics.median(r['seconds'] for r in rs):.0f} s |")
    text = "\n".join(lines) + "\n"
    print(text)
    if not args.no_record:
        with open(ROOT / "bench" / "RESULTS.md", "a", encoding="utf-8") as f:
            f.write("\n" + text)


if __name__ == "__main__":
    main()
