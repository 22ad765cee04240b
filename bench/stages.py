"""Where the time goes, per image, in one process: decode, preprocessing and inference, for the naive
loop's steps and for imclass's (torch backend, and ONNX Runtime when its export is cached), at 1 and all
threads. Prints a Markdown table.

    python bench/stages.py FOLDER [--images 32]

Timings are ms per image, the median of ``--passes`` (3) passes that go round-robin over the steps;
the machine may be noisy, so read them as proportions.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path


def main(argv: list[str] | None = None) -> str:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder", type=Path)
    ap.add_argument("--images", type=int, default=32)
    ap.add_argument("--passes", type=int, default=3)
    args = ap.parse_args(argv)

    import numpy as np
    import torch
    from PIL import Image
    from timm.data import create_transform, resolve_data_config

    import imclass
    from imclass.engine.backends import TorchBackend, default_threads
    from imclass.images import load_image

    paths = sorted(p for p in args.folder.iterdir() if p.suffix == ".jpg")[: args.images]
    clf = imclass.load("default", device="cpu")
    model, pre = clf.model.eval(), clf.spec.preprocess
    # TorchBackend converts its model to channels-last in place: give it a copy.
    cl_model = copy.deepcopy(model)
    imgs = [Image.open(p).convert("RGB") for p in paths]
    tf = create_transform(**resolve_data_config({}, model=model))
    x1 = tf(imgs[0]).unsqueeze(0)
    arrays = np.stack([clf.decode(p) for p in paths])
    backend = TorchBackend(cl_model, pre, device="cpu")

    # (pipeline, step, torch threads or None, function, items, images per item)
    steps: list[tuple[str, str, int | None, Callable, list, int]] = [
        ("naive", "PIL open + convert", None, lambda p: Image.open(p).convert("RGB"), paths, 1),
        ("naive", "build timm transform", None, lambda _: create_transform(**resolve_data_config({}, model=model)),
         paths, 1),
    ]
    for t in sorted({1, default_threads()}):
        steps += [
            ("naive", f"apply timm transform (torch threads {t})", t, tf, imgs, 1),
            ("naive", f"forward, batch 1, NCHW (torch threads {t})", t, lambda _: model(x1), list(range(4)), 1),
        ]
    steps += [
        ("imclass", "load_image (decode)", None, lambda p: load_image(p, draft_size=pre.draft_size()), paths, 1),
        ("imclass", "Classifier.decode (decode + resize/crop to uint8)", None, clf.decode, paths, 1),
    ]
    for t in sorted({1, default_threads()}):
        for bs in (1, 8, 32):
            batch = np.ascontiguousarray(np.resize(arrays, (bs, *arrays.shape[1:])))
            steps.append(("imclass", f"TorchBackend forward, batch {bs}, channels-last (torch threads {t})", t,
                          backend, [batch] * max(1, 4 // bs), bs))

    onnx = _onnx_export()
    if onnx is not None:  # the ONNX Runtime backend (`--backend auto` on CPU), when its export is cached
        from imclass.engine.onnx_backend import OnnxBackend

        for t in sorted({1, default_threads()}):
            session = OnnxBackend(onnx, pre, threads=t)
            for bs in (1, 8, 32):
                batch = np.ascontiguousarray(np.resize(arrays, (bs, *arrays.shape[1:])))
                steps.append(("imclass", f"OnnxBackend forward, batch {bs} (ORT intra-op threads {t})", None,
                              session, [batch] * max(1, 8 // bs), bs))

    # Passes go round-robin over the steps so that drifting machine load spreads over all of them.
    times: dict[int, list[float]] = {i: [] for i in range(len(steps))}
    with torch.inference_mode():
        model(x1)
        backend(arrays[:1])
        for _ in range(args.passes):
            for i, (_, _, threads, fn, items, unit) in enumerate(steps):
                torch.set_num_threads(threads or default_threads())
                t0 = time.perf_counter()
                for it in items:
                    fn(it)
                times[i].append((time.perf_counter() - t0) / (len(items) * unit) * 1000)
    rows = [(a, b, statistics.median(times[i])) for i, (a, b, *_) in enumerate(steps)]
    load = os.getloadavg()[0]
    lines = ["| pipeline | step | ms/img |", "|---|---|---|"]
    lines += [f"| {a} | {b} | {c:.1f} |" for a, b, c in rows]
    lines.append(f"\n({len(paths)} images from {args.folder.name}; load average {load:.1f} at the end)")
    text = "\n".join(lines)
    print(text)
    return text


def _onnx_export() -> str | None:
    try:
        from imclass.engine.onnx_cache import recall_default
    except ImportError:
        return None
    found = recall_default()
    return found[1] if found else None


if __name__ == "__main__":
    main()
