"""Which layers of the default model cost static INT8 its agreement with fp32? (model only)

    python bench/onnx_speed.py --configs best        # once: decodes and caches the photos and the fp32 graph
    python bench/int8_sensitivity.py                 # leave-one-out (~15 s per node), then cumulative
    python bench/int8_sensitivity.py --reuse         # only the cumulative table, from the saved ranking

Starts from the export's first INT8 candidate (``imclass.export.bundle.INT8_CANDIDATES[0]``) and the
cached arrays of ``bench/onnx_speed.py`` (evaluation photos split in two halves: "tune" ranks the layers,
"test" measures; calibration photos are disjoint from both).

1. Leave one out: each still-quantised Conv/Gemm kept in float in turn; the drop in mean KL divergence
   from fp32 on "tune" ranks the nodes.
2. Cumulative: the k highest-ranked nodes in float together; top-1 agreement with fp32 on "test" and
   on all photos, and ORT speed relative to fp32 (batch 32, median batch time over the evaluation photos,
   same process).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import statistics
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from onnx_speed import OUT, agreement, run_all

BATCH = 32


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cumulative", default="0,5,10,20,all", help="numbers of top-ranked nodes kept in float")
    ap.add_argument("--reuse", action="store_true", help="skip leave-one-out; use the saved ranking")
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore")
    from imclass.engine.onnx_backend import OnnxBackend
    from imclass.export.bundle import INT8_BASE, INT8_CANDIDATES
    from imclass.export.quantize import quantize_int8

    fp32 = OUT / "lite0.fp32.onnx"
    evals, calibs = sorted(OUT.glob("eval-*.npy")), sorted(OUT.glob("calib-*.npy"))
    if not (fp32.is_file() and evals and calibs):
        sys.exit(f"bench/int8_sensitivity.py: run `python bench/onnx_speed.py --configs best` first ({OUT})")
    eval_x, calib_x = np.load(evals[0]), np.load(calibs[0])
    half = len(eval_x) // 2
    tune, test = slice(0, half), slice(half, None)
    ref_be = OnnxBackend(fp32)

    def log_softmax(z):
        z = z - z.max(1, keepdims=True)
        return z - np.log(np.exp(z).sum(1, keepdims=True))

    ref, fp32_ips = run_all(ref_be, eval_x, BATCH)
    calib = [ref_be.normalize(calib_x[i:i + 16]) for i in range(0, len(calib_x), 16)]
    settings = {**INT8_BASE, **INT8_CANDIDATES[0]}
    tmp = Path(tempfile.mkdtemp(prefix="imclass-int8-sens-"))

    def quantise(name: str, exclude: list[str]) -> Path:
        path = tmp / f"{name}.onnx"
        with contextlib.redirect_stdout(io.StringIO()):
            quantize_int8(fp32, path, calib, work_dir=tmp / "work", nodes_to_exclude=exclude, **settings)
        return path

    def score(path: Path) -> dict[str, float]:
        out, ips = run_all(OnnxBackend(path), eval_x, BATCH)
        lr, lq = log_softmax(ref), log_softmax(out)
        kl = (np.exp(lr) * (lr - lq)).sum(1)
        return {"kl_tune": float(kl[tune].mean()), "agree_test": agreement(ref[test], out[test]),
                "agree_all": agreement(ref, out), "img_s": ips}

    base_path = quantise("base", [])
    base = score(base_path)
    print(f"base ({settings}): {base}", flush=True)
    saved = OUT / "int8-loo.json"
    if args.reuse and saved.is_file():
        loo = json.loads(saved.read_text())["loo"]
    else:
        import onnx

        graph = onnx.load(str(base_path)).graph
        producer = {o: n for n in graph.node for o in n.output}
        nodes = [n.name for n in graph.node if n.op_type in ("Conv", "Gemm", "MatMul")
                 and getattr(producer.get(n.input[1]), "op_type", "") == "DequantizeLinear"]
        loo = {}
        for i, name in enumerate(nodes):
            loo[name] = score(quantise("loo", [name]))
            print(f"{i:3d} {name:50s} KL gain {base['kl_tune'] - loo[name]['kl_tune']:+.5f}  "
                  f"test agreement {loo[name]['agree_test']:.3f}", flush=True)
        saved.write_text(json.dumps({"base": base, "settings": settings, "loo": loo}, indent=1))
    rank = sorted(loo, key=lambda k: base["kl_tune"] - loo[k]["kl_tune"], reverse=True)
    gains = [base["kl_tune"] - loo[k]["kl_tune"] for k in rank]
    tests = [loo[k]["agree_test"] for k in rank]
    print(f"\n{len(rank)} nodes; largest KL gain {gains[0]:.5f} of {base['kl_tune']:.5f} ({rank[0]}); "
          f"test agreement over the variants {min(tests):.1%}-{max(tests):.1%} (median {statistics.median(tests):.1%})")
    print("\n| nodes kept in float (besides the recipe's) | test | all | mean KL (tune) | speed vs ORT fp32 |")
    print("|---|---|---|---|---|")
    for k in args.cumulative.split(","):
        n = len(rank) if k.strip() == "all" else int(k)
        path = quantise(f"top{n}", rank[:n])
        s = score(path)
        print(f"| {n} | {s['agree_test']:.1%} | {s['agree_all']:.1%} | {s['kl_tune']:.4f} | "
              f"{s['img_s'] / fp32_ips:.2f}x |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
