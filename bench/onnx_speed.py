"""Default model (EfficientNet-Lite0): torch eager vs ONNX Runtime fp32 vs ONNX Runtime static INT8.

    python bench/onnx_speed.py                      # full sweep (~10-15 min on 2 busy cores)
    python bench/onnx_speed.py --configs best       # only the recommended INT8 configuration
    python bench/onnx_speed.py --n-eval 200 --n-calib 64 --configs minmax-pc    # quick look

Model only (decoding excluded): images are decoded once with ``imclass.images.load_image`` +
``Preprocess.to_array`` (cached under ``bench/out/onnx/``) and fed as ``uint8`` NHWC batches to
``TorchBackend`` (channels-last) and ``OnnxBackend``, which both normalise the batch themselves.

- Evaluation and calibration photos are disjoint (a seeded shuffle of flowers5 + natural_scenes_multilabel,
  split once; calibration images come from the far end of it).
- Agreement: top-1 of each runtime against torch eager fp32 on every evaluation photo.
  "confident": the same on the photos where torch's top-1 probability is >= 0.25 (most of these photos are
  far from ImageNet: 128 px flowers, small scenes, so many predictions are near-ties that any noise flips).
- Speed: ``--batch`` images per call, ``--threads`` intra-op threads, img/s = batch / median batch time. After
  the sweep, torch, ORT fp32, the most faithful INT8 and the most faithful all-INT8 configuration are timed
  *interleaved* (one batch each, round robin), so a shared, noisy machine slows them alike: compare ratios.
- INT8 sweep: calibration method x per-channel x bias correction x layers kept in float; calibration ranges
  are cached per method (``quantize_int8(work_dir=...)``), so each method calibrates once.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out" / "onnx"
DATASETS = Path(os.environ.get("IMCLASS_DATASETS", ROOT.parent / "shared" / "datasets"))
SOURCES = ("flowers5/all/*/*.jpg", "natural_scenes_multilabel/images/*.jpg")

# name -> quantize_int8 keyword arguments (bias correction is on unless "nobc"); "xN": first N convs in float
CONFIGS: dict[str, dict] = {
    "minmax-pc-nobc": dict(method="minmax", per_channel=True, bias_correction=False),
    "minmax-pc": dict(method="minmax", per_channel=True),
    "minmax-pt": dict(method="minmax", per_channel=False),
    "entropy-pc": dict(method="entropy", per_channel=True),
    "percentile-pc-nobc": dict(method="percentile", per_channel=True, bias_correction=False),
    "percentile-pc": dict(method="percentile", per_channel=True),
    "percentile-pt": dict(method="percentile", per_channel=False),
    "percentile-pc-s8": dict(method="percentile", per_channel=True, activation_type="int8"),
    "percentile-pc-xlast": dict(method="percentile", per_channel=True, exclude_last_layer=True),
    "percentile-pc-x1": dict(method="percentile", per_channel=True, exclude_first_convs=1),
    "percentile-pc-x1-xlast": dict(method="percentile", per_channel=True, exclude_first_convs=1,
                                   exclude_last_layer=True),
    "percentile-pc-x6": dict(method="percentile", per_channel=True, exclude_first_convs=6),
    "percentile-pc-x9": dict(method="percentile", per_channel=True, exclude_first_convs=9),
}
BEST = "percentile-pc-x6"
CONFIDENT = 0.25  # also report agreement on photos where torch's top-1 probability is at least this


def photos(seed: int = 0) -> list[Path]:
    if not DATASETS.is_dir():
        sys.exit(f"bench/onnx_speed.py: real photos not found at {DATASETS} (set IMCLASS_DATASETS=DIR)")
    found = sorted(p for pattern in SOURCES for p in DATASETS.glob(pattern))
    random.Random(seed).shuffle(found)
    return found


def decode(paths: list[Path], preprocess, cache: Path) -> np.ndarray:
    from imclass.images import DEFAULT_MAX_PIXELS, load_image

    if cache.is_file():
        arr = np.load(cache)
        if len(arr) == len(paths):
            return arr
    t0 = time.perf_counter()
    arr = np.stack([preprocess.to_array(load_image(p, draft_size=preprocess.draft_size(),
                                                   max_pixels=DEFAULT_MAX_PIXELS)) for p in paths])
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.save(cache, arr)
    print(f"decoded {len(paths)} photos in {time.perf_counter() - t0:.1f}s -> {cache}", flush=True)
    return arr


def batches(arr: np.ndarray, size: int) -> list[np.ndarray]:
    return [arr[i:i + size] for i in range(0, len(arr), size)]


def run_all(backend, data: np.ndarray, batch: int) -> tuple[np.ndarray, float]:
    """Logits for every image, and img/s from the median time of the full-size batches."""
    backend(data[:batch])  # warm-up
    outs, times = [], []
    for b in batches(data, batch):
        t = time.perf_counter()
        outs.append(backend(b))
        if len(b) == batch:
            times.append(time.perf_counter() - t)
    return np.concatenate(outs), batch / statistics.median(times)


def interleaved_speed(backends: dict, data: np.ndarray, batch: int, rounds: int) -> dict[str, float]:
    times: dict[str, list[float]] = {k: [] for k in backends}
    full = [b for b in batches(data, batch) if len(b) == batch]
    for be in backends.values():
        be(full[0])
    for r in range(rounds):
        b = full[r % len(full)]
        for name, be in backends.items():
            t = time.perf_counter()
            be(b)
            times[name].append(time.perf_counter() - t)
    return {k: batch / statistics.median(v) for k, v in times.items()}


def agreement(ref: np.ndarray, out: np.ndarray) -> float:
    return float((ref.argmax(1) == out.argmax(1)).mean())


def top1_prob(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(1, keepdims=True))
    return (e / e.sum(1, keepdims=True)).max(1)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n-eval", type=int, default=600)
    ap.add_argument("--n-calib", type=int, default=256)
    ap.add_argument("--calib-batch", type=int, default=16)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=12, help="interleaved timing rounds for the final table")
    ap.add_argument("--configs", default="all", help=f"comma list of {sorted(CONFIGS)}, 'all' or 'best'")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)
    names = list(CONFIGS) if args.configs == "all" else [BEST] if args.configs == "best" else \
        [c.strip() for c in args.configs.split(",") if c.strip()]
    unknown = [c for c in names if c not in CONFIGS]
    if unknown:
        ap.error(f"unknown configs {unknown}; choose from {sorted(CONFIGS)}")

    import torch

    from imclass.engine.backends import TorchBackend
    from imclass.engine.onnx_backend import OnnxBackend
    from imclass.engine.onnx_export import export_onnx
    from imclass.export.quantize import quantize_int8
    from imclass.models import default

    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    model, spec = default.build()
    pre = spec.preprocess

    paths = photos()
    if args.n_eval + args.n_calib > len(paths):
        sys.exit(f"only {len(paths)} photos; lower --n-eval/--n-calib")
    eval_paths, calib_paths = paths[:args.n_eval], paths[len(paths) - args.n_calib:]
    assert not set(eval_paths) & set(calib_paths)
    eval_x = decode(eval_paths, pre, out / f"eval-{args.n_eval}.npy")
    calib_x = decode(calib_paths, pre, out / f"calib-{args.n_calib}.npy")

    fp32_path = out / "lite0.fp32.onnx"
    t0 = time.perf_counter()
    export_onnx(model, pre, fp32_path)
    export_s = time.perf_counter() - t0
    print(f"exported {fp32_path.name} in {export_s:.1f}s ({fp32_path.stat().st_size / 1e6:.1f} MB)", flush=True)

    torch_be = TorchBackend(model, pre, device="cpu", threads=args.threads)
    fp32_be = OnnxBackend(fp32_path, pre, threads=args.threads)
    ref, torch_ips = run_all(torch_be, eval_x, args.batch)
    confident = top1_prob(ref) >= CONFIDENT
    fp32_out, fp32_ips = run_all(fp32_be, eval_x, args.batch)
    rows = [dict(config="torch eager fp32 (channels-last)", agreement=1.0, agreement_confident=1.0, img_s=torch_ips,
                 mb=None, quant_s=None),
            dict(config="ort fp32", agreement=agreement(ref, fp32_out),
                 agreement_confident=agreement(ref[confident], fp32_out[confident]), img_s=fp32_ips,
                 mb=fp32_path.stat().st_size / 1e6, quant_s=None,
                 max_abs_logit_diff=float(np.abs(ref - fp32_out).max()))]
    print(f"torch {torch_ips:.1f} img/s | ort fp32 {fp32_ips:.1f} img/s, agreement {rows[1]['agreement']:.4f}",
          flush=True)

    calib = [pre.normalize(b) for b in batches(calib_x, args.calib_batch)]
    best_path, best, full_path, full = None, None, None, None
    for name in names:
        kw = CONFIGS[name]
        path = out / f"lite0.int8.{name}.onnx"
        t0 = time.perf_counter()
        quantize_int8(fp32_path, path, calib, work_dir=out / f"quant-work-{args.n_calib}", **kw)
        quant_s = time.perf_counter() - t0
        be = OnnxBackend(path, pre, threads=args.threads)
        q_out, ips = run_all(be, eval_x, args.batch)
        row = dict(config=f"ort int8 {name}", agreement=agreement(ref, q_out),
                   agreement_confident=agreement(ref[confident], q_out[confident]), img_s=ips,
                   mb=path.stat().st_size / 1e6, quant_s=quant_s,
                   agreement_vs_ort_fp32=agreement(fp32_out, q_out))
        rows.append(row)
        print(f"{name:24s} agree {row['agreement']:.4f} (confident {row['agreement_confident']:.4f})  "
              f"{ips:6.1f} img/s  {row['mb']:.1f} MB  "
              f"quantised in {quant_s:.0f}s", flush=True)
        if best is None or row["agreement"] > best["agreement"]:
            best_path, best = path, row
        if not any(k.startswith("exclude") for k in kw) and (full is None or row["agreement"] > full["agreement"]):
            full_path, full = path, row

    contenders = {"torch": torch_be, "ort fp32": fp32_be,
                  best["config"]: OnnxBackend(best_path, pre, threads=args.threads)}
    if full is not None and full is not best:
        contenders[full["config"]] = OnnxBackend(full_path, pre, threads=args.threads)
    final = interleaved_speed(contenders, eval_x, args.batch, args.rounds)
    print()
    print(f"EfficientNet-Lite0, model only, batch {args.batch}, {args.threads} threads, {platform.processor() or ''}"
          f" {os.cpu_count()} cpus; {args.n_eval} eval photos ({int(confident.sum())} confident: torch top-1 prob >="
          f" {CONFIDENT}), {args.n_calib} calibration photos (disjoint)")
    print(f"| {'configuration':34s} | top-1 agree | confident | img/s | MB | quantise s |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        mb = f"{r['mb']:.1f}" if r["mb"] else "-"
        qs = f"{r['quant_s']:.0f}" if r["quant_s"] else "-"
        print(f"| {r['config']:34s} | {r['agreement'] * 100:.1f}% | {r['agreement_confident'] * 100:.1f}% "
              f"| {r['img_s']:.1f} | {mb} | {qs} |")
    print(f"\ninterleaved timing ({args.rounds} rounds of one batch each, img/s): "
          + ", ".join(f"{k} {v:.1f}" for k, v in final.items()))
    result = dict(rows=rows, interleaved=final, best=best["config"], export_s=export_s, batch=args.batch,
                  threads=args.threads, n_eval=args.n_eval, n_calib=args.n_calib,
                  versions={m.__name__: m.__version__ for m in (torch, np)} | {
                      "onnxruntime": __import__("onnxruntime").__version__})
    (out / "results.json").write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
