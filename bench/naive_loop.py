"""The naive, seed-style prediction loop that ``bench/predict.py`` measures ``imclass predict`` against.

One image at a time: PIL open, build timm's eval transform (again, for every image, as copy-pasted
seed code does), eager forward of a single NCHW image, softmax, argmax. No batching, no decode overlap,
no channels-last. Same model and weights as ``imclass predict`` (``imclass.load('default').model``).

    python bench/naive_loop.py FOLDER --output naive.csv [--timing timing.json] [--threads N]

``--timing`` writes in-process timestamps (seconds since the script started) so that the caller can
separate start-up from steady-state throughput; ``--max-seconds`` stops the loop early (``n`` < ``total``
in the timing file) when the caller cannot wait for all photos.
"""

from __future__ import annotations

import time

T0 = time.perf_counter()

import argparse  # noqa: E402
import csv  # noqa: E402
import json  # noqa: E402
from pathlib import Path  # noqa: E402

EXTS = {".jpg", ".jpeg", ".png"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder", type=Path)
    ap.add_argument("--output", type=Path, required=True)
    ap.add_argument("--timing", type=Path)
    ap.add_argument("--threads", type=int, help="torch.set_num_threads(N); default: torch's own (all cores)")
    ap.add_argument("--max-seconds", type=float,
                    help="stop after this long in the loop (the caller extrapolates from the timing file)")
    args = ap.parse_args()

    import torch
    from PIL import Image
    from timm.data import create_transform, resolve_data_config

    import imclass

    if args.threads:
        torch.set_num_threads(args.threads)
    clf = imclass.load("default", device="cpu")
    model, labels = clf.model.eval(), clf.labels
    t_ready = time.perf_counter() - T0

    def classify(path: Path) -> tuple[str, float]:
        img = Image.open(path).convert("RGB")
        transform = create_transform(**resolve_data_config({}, model=model))
        x = transform(img).unsqueeze(0)
        with torch.no_grad():
            logits = model(x)
        probs = torch.softmax(logits, dim=1)
        idx = int(probs.argmax(dim=1))
        return labels[idx], float(probs[0, idx])

    timed_loop(args, classify, T0, t_ready)


def timed_loop(args: argparse.Namespace, classify, t0: float, t_ready: float) -> None:
    """Classify every photo in ``args.folder`` one at a time with ``classify(path) -> (label, score)``, write
    ``args.output`` (path,label,score) and, with ``args.timing``, the timestamps (seconds since ``t0``) the
    caller needs; stop after ``args.max_seconds`` in the loop. Shared by the seed-style loops."""
    paths = sorted(p for p in args.folder.iterdir() if p.suffix.lower() in EXTS)
    warm = min(10, max(0, len(paths) - 1))  # images excluded from the steady-state window
    t_warm = t_ready
    rows = []
    done = 0
    for i, path in enumerate(paths):
        if args.max_seconds and i > warm and time.perf_counter() - t0 - t_ready > args.max_seconds:
            break
        label, score = classify(path)
        rows.append((str(path), label, f"{score:.6f}"))
        done = i + 1
        if done == warm:
            t_warm = time.perf_counter() - t0
    t_end = time.perf_counter() - t0

    with open(args.output, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "score"])
        w.writerows(rows)
    if args.timing:
        args.timing.write_text(json.dumps({"n": done, "total": len(paths), "warm": warm, "t_ready": t_ready,
                                           "t_warm": t_warm, "t_end": t_end}))


if __name__ == "__main__":
    main()
