"""The embedded models side by side: ImageNet top-1 and speed of default (Lite0), lite1 and lite2.

    python bench/lite.py                      # ../shared/datasets/imagenet_10class_1k, 3 rounds
    python bench/lite.py --data DIR --rounds 5

Accuracy: top-1 over all 1,000 ImageNet classes, and over the dataset's classes only (probabilities renormalised
over them, as ``imclass evaluate`` does), on class folders named by WordNet id. Speed: model only (one
preprocessed batch of 16, ONNX Runtime fp32 and torch eager, 2 threads), in interleaved rounds so that drifting
machine load spreads over all models; the median of the rounds and the ratio to Lite0 are printed.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MODELS = ("default", "lite1", "lite2")


def throughput(fn, batch: np.ndarray, seconds: float = 4.0) -> float:
    """Images per second of ``fn(batch)`` over about ``seconds`` (after one warm-up call)."""
    fn(batch)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        fn(batch)
        n += len(batch)
    return n / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> int:
    import imclass
    from imclass.engine.backends import TorchBackend
    from imclass.models.default import wordnet_ids

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "datasets" / "imagenet_10class_1k")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args(argv)

    files = sorted(p for d in sorted(args.data.iterdir()) if d.is_dir() for p in sorted(d.iterdir()))
    truth = [p.parent.name for p in files]
    print(f"{len(files)} photos in {len(set(truth))} classes from {args.data}; load {os.getloadavg()[0]:.1f}")
    clfs = {m: imclass.load(m, device="cpu", threads=2) for m in MODELS}
    for name, clf in clfs.items():
        t0 = time.perf_counter()
        probs, _, errors = clf.predict_scores([str(f) for f in files], workers=2)
        wall = time.perf_counter() - t0
        wnids = np.array(wordnet_ids(clf.labels))
        ok = np.array([e is None for e in errors])
        top1 = float((wnids[probs.argmax(1)] == np.array(truth))[ok].mean())
        cols = [int(np.flatnonzero(wnids == w)[0]) for w in sorted(set(truth))]
        sub = np.array(sorted(set(truth)))[probs[:, cols].argmax(1)]
        top1_sub = float((sub == np.array(truth))[ok].mean())
        print(f"{name:8s} {clf.spec.preprocess.input_size[0]} px  top-1 {top1:.3f} (1000 classes), {top1_sub:.3f} "
              f"({len(cols)} classes); labelling {len(files) / wall:5.1f} img/s (decode + ONNX Runtime, model loaded)")
    batch = {m: np.stack([c.decode(str(f)) for f in files[:16]]) for m, c in clfs.items()}
    runners = {m: {"onnx": clfs[m].backend,
                   "torch": TorchBackend(clfs[m].model, clfs[m].spec.preprocess, device="cpu", threads=2)}
               for m in MODELS}
    speed: dict[tuple[str, str], list[float]] = {}
    for r in range(args.rounds):
        order = MODELS if r % 2 == 0 else MODELS[::-1]
        for m in order:
            for kind, fn in runners[m].items():
                speed.setdefault((m, kind), []).append(throughput(fn, batch[m]))
    print(f"\nmodel only, batch 16, median of {args.rounds} rounds (load {os.getloadavg()[0]:.1f}):")
    for kind in ("onnx", "torch"):
        base = statistics.median(speed[("default", kind)])
        for m in MODELS:
            med = statistics.median(speed[(m, kind)])
            print(f"  {kind:5s} {m:8s} {med:6.1f} img/s  {med / base:4.2f}x of Lite0  "
                  f"rounds {', '.join(f'{x:.0f}' for x in speed[(m, kind)])}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
