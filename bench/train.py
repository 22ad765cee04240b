"""Benchmark ``imclass train`` on the real datasets, as whole processes (start-up included).

    python bench/train.py                       # probe on the three sets + the 1,000-image probe timing
    python bench/train.py --finetune flowers5 --epochs 5   # also fine-tune one set and report the gain
    python bench/train.py --only probe1000 --no-record     # quick look

For each dataset: ``imclass train DATA --out RUN --json -q`` with an empty embedding cache (first run:
embeddings computed), then the same command again into a new run folder (embeddings from the cache).
Wall time, training images/s and peak RSS (``os.wait4`` of the child) are measured per process.
``probe1000``: the first 200 images of each flowers5 class (1,000 photos): first run and retrain from the
cache, whole process, plus an in-process retrain (``imclass.train`` called again in a warm interpreter).
Prints a Markdown table and appends it to ``bench/RESULTS.md`` (``--no-record``: don't).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

from proc import measure  # bench/ is on sys.path when run as a script

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out" / "train"
RESULTS = ROOT / "bench" / "RESULTS.md"
DATASETS = Path(os.environ.get("IMCLASS_DATASETS", ROOT.parent / "shared" / "datasets"))
SETS = {
    "neu_steel_defects": ("neu_steel_defects", []),
    "flowers5": ("flowers5/all", []),
    "natural_scenes_multilabel": ("natural_scenes_multilabel/labels.csv", ["--multi-label"]),
}


def run_measured(args: list[str], cache: Path) -> dict:
    """Run ``imclass ARGS --json -q`` in a child process; wall time, its own peak RSS and its metrics."""
    m = measure([sys.executable, "-m", "imclass", *args, "--json", "-q"], OUT / "stderr.txt",
                env={"IMCLASS_CACHE_DIR": str(cache)}, stdout=OUT / "stdout.json")
    return {"wall": m.wall, "metrics": json.loads((OUT / "stdout.json").read_text()), "rss_mib": m.rss_mib}


def headline(m: dict) -> str:
    v = m.get("val", {})
    if m.get("task") == "multi_label":
        return f"val micro-F1 {v.get('micro_f1')}, macro-F1 {v.get('macro_f1')}, mAP {v.get('mAP')} (n={v.get('n')})"
    s = f"val acc {v.get('accuracy')}, macro-F1 {v.get('macro_f1')}, ECE {v.get('ece')} (n={v.get('n')})"
    if "test" in m:
        s += f"; test acc {m['test'].get('accuracy')}"
    return s


def probe1000(rows: list[list[str]]) -> None:
    src = DATASETS / "flowers5" / "all"
    csv = OUT / "probe1000.csv"
    lines = ["filename,label"]
    for cls in sorted(p.name for p in src.iterdir() if p.is_dir()):
        for f in sorted((src / cls).iterdir())[:200]:
            lines.append(f"{f},{cls}")
    csv.write_text("\n".join(lines) + "\n")
    cache = OUT / "cache-probe1000"
    shutil.rmtree(cache, ignore_errors=True)
    for tag in ("first run (embeddings computed)", "retrain from the cache"):
        dest = OUT / f"run-probe1000-{'a' if tag.startswith('first') else 'b'}"
        shutil.rmtree(dest, ignore_errors=True)
        r = run_measured(["train", str(csv), "--out", str(dest), "--mode", "probe"], cache)
        rows.append([f"probe, 1,000 flowers5 photos: {tag}", f"{r['wall']:.1f}", f"{r['rss_mib']:.0f}",
                     headline(r["metrics"]), f"`imclass train {csv.relative_to(ROOT)} --out RUN --mode probe`"])
    # in-process: the second call in a warm interpreter (what a notebook user sees)
    code = (f"import time, imclass; t=time.perf_counter(); imclass.train({str(csv)!r}); a=time.perf_counter()-t; "
            f"t=time.perf_counter(); imclass.train({str(csv)!r}); b=time.perf_counter()-t; print(a, b)")
    env = {**os.environ, "IMCLASS_CACHE_DIR": str(cache)}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    a, b = (float(x) for x in res.stdout.split())
    rows.append(["probe, 1,000 photos: retrain in a warm interpreter (cached embeddings)", f"{b:.2f}", "",
                 f"first call in that process {a:.2f} s (model load)", "`imclass.train(csv)` twice"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default="", help="comma list of: neu_steel_defects, flowers5, "
                                               "natural_scenes_multilabel, probe1000")
    ap.add_argument("--finetune", default="", help="dataset to also fine-tune (gain over the probe)")
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--image-size", type=int, default=None)
    ap.add_argument("--no-record", action="store_true")
    a = ap.parse_args()
    if not DATASETS.is_dir():
        raise SystemExit(f"datasets not found at {DATASETS}")
    OUT.mkdir(parents=True, exist_ok=True)
    only = {s for s in a.only.split(",") if s}
    rows: list[list[str]] = []
    probes: dict[str, dict] = {}
    for name, (rel, extra) in SETS.items():
        if only and name not in only:
            continue
        cache = OUT / f"cache-{name}"
        shutil.rmtree(cache, ignore_errors=True)
        for tag in ("first", "cached"):
            dest = OUT / f"run-{name}-{tag}"
            shutil.rmtree(dest, ignore_errors=True)
            r = run_measured(["train", str(DATASETS / rel), "--out", str(dest), "--mode", "probe", *extra], cache)
            m = r["metrics"]
            probes[name] = m
            imgs = sum(v for k, v in m["images"].items() if k != "test")
            rows.append([f"probe, {name} ({imgs} train+val images), {tag}", f"{r['wall']:.1f}",
                         f"{r['rss_mib']:.0f}", headline(m),
                         f"`imclass train {rel} --out RUN --mode probe {' '.join(extra)}`".replace("  ", " ")])
    if not only or "probe1000" in only:
        probe1000(rows)
    if a.finetune:
        rel, extra = SETS[a.finetune]
        cache = OUT / f"cache-{a.finetune}"
        dest = OUT / f"run-{a.finetune}-finetune"
        shutil.rmtree(dest, ignore_errors=True)
        args = ["train", str(DATASETS / rel), "--out", str(dest), "--mode", "finetune", "--epochs", str(a.epochs),
                *extra, *(["--image-size", str(a.image_size)] if a.image_size else [])]
        r = run_measured(args, cache)
        m = r["metrics"]
        gain = ""
        key = "accuracy" if "accuracy" in m["val"] else "mAP"
        if a.finetune in probes:
            gain = f"; val {key}: probe {probes[a.finetune]['val'][key]} -> finetune {m['val'][key]}"
        rows.append([f"finetune {a.epochs} epochs, {a.finetune}", f"{r['wall']:.1f}", f"{r['rss_mib']:.0f}",
                     headline(m) + gain + f"; {m.get('images_per_second')} img/s",
                     f"`imclass train {rel} --mode finetune --epochs {a.epochs} --out RUN`"])
    load = os.getloadavg()[0]
    table = ["| run | wall s (whole process) | peak RSS MiB | result | command |", "|---|---|---|---|---|"]
    table += ["| " + " | ".join(r) + " |" for r in rows]
    head = (f"## {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC: imclass train\n\n"
            f"{platform.machine()}, {os.cpu_count()} cores, load {load:.1f} at the end. Default backbone "
            "(EfficientNet-Lite0), CPU.\n")
    text = head + "\n" + "\n".join(table) + "\n"
    print(text)
    if not a.no_record:
        with RESULTS.open("a", encoding="utf-8") as f:
            f.write("\n" + text)


if __name__ == "__main__":
    main()
