"""Test-time augmentation (``--tta``: each image also run mirrored, outputs averaged): accuracy and time, with
and without, in one run.

    python bench/tta.py [--datasets ../shared/datasets] [--record]

1. The default model on the 1,000 ImageNet photos of ``imagenet_10class_1k`` (``evaluate``: top-1 among the
   set's 10 classes, the model's probabilities renormalised over them).
2. A probe trained on flowers5 (``imclass.train(mode="probe")``, fixed 80/20 split by seed), evaluated on its
   validation images; and the same for natural_scenes_multilabel (mAP).
Skips cleanly without the shared datasets.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datasets", type=Path, default=Path(os.environ.get("IMCLASS_DATASETS",
                                                                         ROOT.parent / "shared" / "datasets")))
    ap.add_argument("--record", action="store_true", help="append the table to bench/RESULTS.md")
    args = ap.parse_args()
    if not args.datasets.is_dir():
        print(f"skipped: no datasets at {args.datasets}")
        return 0
    import imclass

    rows = []

    def measure(name: str, model, data, metric: str) -> None:
        for tta in (False, True):
            t0 = time.perf_counter()
            res = imclass.evaluate(model, data, split="val", tta=tta)
            seconds = time.perf_counter() - t0
            value = res.metrics.get(metric)
            rows.append((name, "on" if tta else "off", value, seconds))
            print(f"{name:<34} tta {'on ' if tta else 'off'} {metric} {value:.4f}  {seconds:.1f}s", flush=True)

    measure("default, imagenet_10class_1k", "default", args.datasets / "imagenet_10class_1k", "accuracy")
    with tempfile.TemporaryDirectory() as tmp:
        imclass.train(args.datasets / "flowers5" / "all", out=Path(tmp) / "flowers", mode="probe", seed=0)
        measure("probe, flowers5 (val)", str(Path(tmp) / "flowers"), _val(Path(tmp) / "flowers"), "accuracy")
        scenes = args.datasets / "natural_scenes_multilabel"
        imclass.train(scenes / "labels.csv", out=Path(tmp) / "scenes", mode="probe", seed=0)
        measure("probe, natural scenes (val, mAP)", str(Path(tmp) / "scenes"), _val(Path(tmp) / "scenes"), "mAP")

    lines = ["| model, data | tta | metric | evaluate s (whole call) |", "|---|---|---|---|"]
    for name, tta, value, seconds in rows:
        lines.append(f"| {name} | {tta} | {value:.4f} | {seconds:.1f} |")
    table = "\n".join(lines)
    print(table)
    if args.record:
        load = os.getloadavg()[0]
        with open(ROOT / "bench" / "RESULTS.md", "a") as f:
            f.write(f"\n## {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: test-time augmentation "
                    f"(bench/tta.py)\n\n`python bench/tta.py --record`: 2 cores, load {load:.1f} at the end. "
                    "Each model evaluated on the same images without and with `--tta` (mirror, outputs "
                    "averaged); probes trained with `mode=\"probe\", seed=0`, evaluated on their own validation "
                    "split.\n\n" + table + "\n")
    return 0


def _val(bundle: Path):
    """The run's dataset with its recorded split (``splits.csv`` in the run folder); evaluate reads ``val``."""
    import imclass

    return imclass.load_dataset(bundle / "splits.csv")


if __name__ == "__main__":
    raise SystemExit(main())
