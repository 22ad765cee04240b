"""Benchmark ``imclass data audit`` on a 5,000-image folder: first run (cold caches) vs second run (warm).

    python bench/audit.py                 # 5,000 images: 1 cold run + 2 warm runs, ~2-4 min on 2 quiet cores
    python bench/audit.py --n 1000 --warm 1 --no-report   # quick look

What one run does:

1. builds a class-folder dataset of ``--n`` photos spread evenly over the real sets in ``../shared/datasets``
   (flowers5, neu_steel_defects, natural_scenes_multilabel; class = ``<set>-<label>``), copied under
   ``bench/out/audit/`` (gitignored) and reused by later runs;
2. runs ``imclass data audit DIR --out REPORT -q`` (``--out RUN.json`` with ``--no-report``) as whole
   processes, each with its own ``IMCLASS_CACHE_DIR`` under ``bench/out/audit/``: first with an empty cache
   (the feature graph is exported to ONNX, every image decoded and embedded), then ``--warm`` times with that
   cache filled (embeddings and decode-scan results are read back by content hash);
3. reads each process's own peak RSS from ``os.wait4`` and the audit's own stage timings from its JSON
   (``REPORT/audit.json``);
4. prints a Markdown table with the cold/warm wall-time ratio. Nothing is written to ``bench/RESULTS.md``.

Needs the ``data`` command group in the ``imclass`` CLI. The machine may be shared and noisy: compare the
ratio, measured in the same run, and note the load average printed with each row.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shlex
import shutil
import statistics
import sys
import time
from pathlib import Path

from proc import imclass_cmd, measure  # bench/ is on sys.path when run as a script

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out" / "audit"
DATASETS = Path(os.environ.get("IMCLASS_DATASETS", ROOT.parent / "shared" / "datasets"))
SOURCES = ("flowers5", "neu_steel_defects", "natural_scenes_multilabel")


def source_photos() -> list[tuple[Path, str]]:
    """(photo, class) for every photo of the real sets."""
    if not DATASETS.is_dir():
        sys.exit(f"bench/audit.py: real photos not found at {DATASETS}\n"
                 "  it needs ../shared/datasets (relative to the repository root) or IMCLASS_DATASETS=DIR")
    sys.path.insert(0, str(ROOT / "src"))
    from imclass.data import load_dataset

    out = []
    for name, src in (("flowers5", DATASETS / "flowers5" / "all"),
                      ("neu_steel_defects", DATASETS / "neu_steel_defects"),
                      ("natural_scenes_multilabel", DATASETS / "natural_scenes_multilabel" / "labels_list.csv")):
        ds = load_dataset(src, inspect=False)
        short = name.split("_")[0]
        out += [(Path(p), f"{short}-{labels[0]}") for p, labels in zip(ds.paths, ds.table["labels"])]
    return sorted(out)


def build_folder(n: int) -> Path:
    """``n`` photos, evenly spread over all sources, as ``<class>/<file>`` copies. Cached."""
    photos = source_photos()
    if n > len(photos):
        sys.exit(f"bench/audit.py: --n {n} is more than the {len(photos)} photos available")
    picks = [photos[(i * len(photos)) // n] for i in range(n)]
    key = hashlib.sha1("\n".join(f"{p}\t{c}" for p, c in picks).encode()).hexdigest()[:10]
    folder = OUT / "data" / f"n{n}-{key}"
    marker = folder / ".complete"
    if marker.exists():
        return folder
    if folder.exists():
        shutil.rmtree(folder)
    t0 = time.perf_counter()
    for i, (src, cls) in enumerate(picks):
        dest = folder / cls / f"{i:05d}_{src.name}"
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dest)
    marker.write_text(f"{n} photos from {DATASETS}\n")
    print(f"built {folder.relative_to(ROOT)} ({n} photos, {time.perf_counter() - t0:.1f}s)", flush=True)
    return folder


def run_process(cmd: list[str], log: Path, env: dict[str, str], timeout: float = 3600) -> tuple[float, float, int]:
    """(wall seconds spawn to exit, this child's peak RSS in MiB, exit code); 2 = the audit found unreadable
    files, which is fine here."""
    m = measure(cmd, log, env=env, timeout=timeout, ok=(0, 2))
    return m.wall, m.rss_mib, m.code


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=5000, help="photos in the folder (default 5000)")
    ap.add_argument("--warm", type=int, default=2, help="warm runs after the cold one (median reported)")
    ap.add_argument("--no-report", action="store_true",
                    help="skip the HTML report in every run (--out RUN.json: the findings only)")
    ap.add_argument("--extra", default="", help="more options for every audit run, e.g. '--no-label-check'")
    args = ap.parse_args()

    folder = build_folder(args.n)
    cache = OUT / "cache"
    if cache.exists():
        shutil.rmtree(cache)  # the first run must start cold
    runs: list[dict] = []
    for k in range(1 + args.warm):
        kind = "cold" if k == 0 else "warm"
        tag = f"{kind}-{k}"
        # --out: a folder gets audit.html + audit.json, a .json file only the findings
        target = OUT / f"{tag}.json" if args.no_report else OUT / f"report-{tag}"
        js = target if args.no_report else target / "audit.json"
        js.unlink(missing_ok=True)  # an earlier run's findings would pass for this run's
        cmd = [*imclass_cmd(), "data", "audit", str(folder), "--out", str(target), "-q", *shlex.split(args.extra)]
        print(f"[{tag}] {shlex.join(cmd)}", flush=True)
        wall, rss, code = run_process(cmd, OUT / f"{tag}.log", {"IMCLASS_CACHE_DIR": str(cache)})
        d = json.loads(js.read_text())
        runs.append({"kind": kind, "wall": wall, "rss": rss, "code": code, "seconds": d["seconds"],
                     "counts": d["counts"], "load": os.getloadavg()[0], "images": d["dataset"]["images"]})
        print(f"[{tag}] {wall:.1f}s, {rss:.0f} MiB, stages {d['seconds']}", flush=True)

    cold = runs[0]
    warm = runs[1:]
    warm_wall = statistics.median(r["wall"] for r in warm) if warm else float("nan")
    print()
    print(f"## imclass data audit, {cold['images']} images ({folder.relative_to(ROOT)})")
    print()
    print("| run | wall s | img/s | peak RSS MiB | decode+embed s | neighbours s | label check s | load (1 min) |")
    print("|---|---|---|---|---|---|---|---|")
    for r in runs:
        s = r["seconds"]
        print(f"| {r['kind']} | {r['wall']:.1f} | {r['images'] / r['wall']:.0f} | {r['rss']:.0f} | "
              f"{s['decode_and_embed']:.1f} | {s['neighbours']:.1f} | {s['labels']:.1f} | {r['load']:.2f} |")
    if warm:
        print()
        print(f"cold / warm wall time: **{cold['wall'] / warm_wall:.2f}x** (warm = median of {len(warm)})")
    c = cold["counts"]
    print(f"findings: {c['exact_duplicate_groups']} exact-duplicate groups, "
          f"{c['near_duplicate_groups']} near-duplicate groups, {c['conflicts']} conflicts, "
          f"{c['label_issues']} likely label errors, {c['outliers']} outliers")
    print()
    print(f"command: python bench/audit.py --n {args.n} --warm {args.warm}"
          + (" --no-report" if args.no_report else "") + (f" --extra={shlex.quote(args.extra)}" if args.extra else ""))


if __name__ == "__main__":
    main()
