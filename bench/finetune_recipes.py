"""timm's fine-tuning recipes on small data, measured: layer-wise LR decay, Mixup / CutMix, EMA of the weights,
each on top of today's fine-tuning and all together, and the earlier defaults (a lower learning rate, stronger
augmentation), in one run.

    python bench/finetune_recipes.py [--epochs 8] [--seeds 1] [--first-seed 0] [--only NAME ...] [--record]

A fixed stratified subset of ``flowers5/all`` (``--train`` + ``--val`` photos a class, drawn with seed 0);
each recipe fine-tunes the default backbone (``imclass.train(mode="finetune")``, same epochs, image size and
seeds for all) and is scored on the subset's validation photos. Prints a Markdown table (validation accuracy,
mean over seeds, and seconds); ``--record`` appends it to bench/RESULTS.md. Skips cleanly without the datasets.
"""

from __future__ import annotations

import argparse
import csv
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

RECIPES: dict[str, dict] = {
    "defaults (lr 3e-3, augment light)": {},
    # the learning rate and augmentation of earlier releases (changed after the 2026-12-02 runs in RESULTS.md)
    "earlier defaults (lr 1e-3, augment default)": {"lr": 1e-3, "augment": "default"},
    "+ layer_decay 0.75": {"layer_decay": 0.75},
    "+ mixup 0.2 / cutmix 1.0": {"mixup": 0.2, "cutmix": 1.0},
    "+ mixup 0.2 only": {"mixup": 0.2},
    "+ ema 0.998": {"ema": 0.998},
    "all together": {"layer_decay": 0.75, "mixup": 0.2, "cutmix": 1.0, "ema": 0.998},
}


def subset(root: Path, per_train: int, per_val: int, out: Path) -> Path:
    """A CSV (path, label, split) of ``per_train`` + ``per_val`` photos a class, drawn with seed 0."""
    rng = np.random.default_rng(0)
    with open(out, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "split"])
        for cls in sorted(p.name for p in root.iterdir() if p.is_dir()):
            files = sorted(str(p) for p in (root / cls).iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
            pick = rng.permutation(len(files))[:per_train + per_val]
            w.writerows((files[i], cls, "train" if k < per_train else "val") for k, i in enumerate(pick))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datasets", type=Path, default=Path(os.environ.get("IMCLASS_DATASETS",
                                                                         ROOT.parent / "shared" / "datasets")))
    ap.add_argument("--train", type=int, default=60, help="training photos a class")
    ap.add_argument("--val", type=int, default=60, help="validation photos a class")
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--image-size", type=int, default=128, help="px (flowers5 photos are 128 px)")
    ap.add_argument("--seeds", type=int, default=1, help="runs a recipe")
    ap.add_argument("--first-seed", type=int, default=0, help="seeds first-seed .. first-seed + seeds - 1")
    ap.add_argument("--only", nargs="*", help="recipe names to run (default: all)")
    ap.add_argument("--record", action="store_true", help="append the table to bench/RESULTS.md")
    args = ap.parse_args()
    flowers = args.datasets / "flowers5" / "all"
    if not flowers.is_dir():
        print(f"skipped: no flowers5 at {flowers}")
        return 0
    import imclass

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data = subset(flowers, args.train, args.val, Path(tmp) / "subset.csv")
        for name, recipe in RECIPES.items():
            if args.only and name not in args.only:
                continue
            accs, secs, curves = [], [], []
            for seed in range(args.first_seed, args.first_seed + args.seeds):
                t0 = time.perf_counter()
                _, result = imclass.train(data, out=Path(tmp) / f"{len(rows)}-{seed}", mode="finetune",
                                          backbone="default", epochs=args.epochs, image_size=args.image_size,
                                          seed=seed, calibrate=False, unknown_coverage=None, **recipe)
                secs.append(time.perf_counter() - t0)
                accs.append(result.metrics["val"]["accuracy"])
                curves.append([h.get("val_accuracy") for h in result.history])
                print(f"{name:<26} seed {seed}: val accuracy {accs[-1]:.4f} in {secs[-1]:.0f}s, per epoch {curves[-1]}",
                      flush=True)
            rows.append((name, accs, float(np.mean(secs))))

    base = np.mean(rows[0][1]) if rows and rows[0][0].startswith("defaults") else None
    lines = ["| recipe | val accuracy (mean) | per seed | vs baseline | seconds / run |", "|---|---|---|---|---|"]
    for name, accs, sec in rows:
        delta = "" if base is None else f"{100 * (np.mean(accs) - base):+.1f} pt"
        lines.append(f"| {name} | {np.mean(accs):.4f} | {', '.join(f'{a:.4f}' for a in accs)} | {delta} | {sec:.0f} |")
    table = "\n".join(lines)
    command = shlex.join(["python", "bench/finetune_recipes.py", *sys.argv[1:]])
    print(f"\n`{command}`\n\n{table}")
    if args.record:
        load = os.getloadavg()[0]
        n_val = args.val * 5
        with open(ROOT / "bench" / "RESULTS.md", "a", encoding="utf-8") as f:
            f.write(f"\n## {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: fine-tuning recipes "
                    f"(bench/finetune_recipes.py)\n\n`{command}`: 2 cores, load {load:.1f} at the end. "
                    f"flowers5, {args.train} training + {args.val} validation photos a class (seed 0), the default "
                    f"backbone fine-tuned {args.epochs} epochs at {args.image_size} px (`mode=\"finetune\"`, seeds "
                    f"{args.first_seed}..{args.first_seed + args.seeds - 1}); validation accuracy on the {n_val} "
                    f"validation photos (1 photo = "
                    f"{100 / n_val:.2f} pt).\n\n{table}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
