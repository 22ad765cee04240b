"""Probe retraining from a warm embedding cache, whole process: the torch path against the torch-free one, in one
run, alternating rounds.

    python bench/retrain.py [--datasets ../shared/datasets] [--rounds 3] [--also REV] [--record]

Each round runs ``imclass train DATA --mode probe --out RUN`` as a fresh process, once with this checkout
(torch-free: the backbone's record, :mod:`imclass.features.frozen`, exists) and once with the code of ``--base``
(default ``b753976``, the last revision before torch-free retraining, checked out in a temporary worktree: the
baseline), and with the code of each ``--also`` revision, on a private cache warmed first.
Data: ``neu_steel_defects`` (1,800 images, 6 classes) and a 300-image subset of ``flowers5`` (60 per class: a
labelling session's size). Also reports whether the torch-free process imported torch (it must not) and the two
bundles' validation accuracy.
Skips cleanly without the shared datasets.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from proc import measure  # noqa: E402


def subset(src: Path, dst: Path, per_class: int) -> Path:
    for cls in sorted(p for p in src.iterdir() if p.is_dir()):
        (dst / cls.name).mkdir(parents=True, exist_ok=True)
        for f in sorted(cls.iterdir())[:per_class]:
            os.symlink(f, dst / cls.name / f.name)
    return dst


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datasets", type=Path, default=Path(os.environ.get("IMCLASS_DATASETS",
                                                                         ROOT.parent / "shared" / "datasets")))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--base", default="b753976", help="git revision of the baseline (default: the last one before "
                                                       "torch-free retraining)")
    ap.add_argument("--also", action="append", default=[], metavar="REV",
                    help="also time the code of this revision (e.g. an earlier torch-free release); repeatable")
    ap.add_argument("--record", action="store_true", help="append the table to bench/RESULTS.md")
    args = ap.parse_args()
    if not args.datasets.is_dir():
        print(f"skipped: no datasets at {args.datasets}")
        return 0
    tmp = Path(tempfile.mkdtemp(prefix="imclass-retrain-"))
    env = {**os.environ, "IMCLASS_CACHE_DIR": str(tmp / "cache")}
    sets = {"neu_steel_defects (1,800)": args.datasets / "neu_steel_defects",
            "flowers5, 60 per class (300)": subset(args.datasets / "flowers5" / "all", tmp / "flowers300", 60)}
    envs = {}  # the label of each timed code -> its environment
    for i, rev in enumerate([args.base, *args.also]):
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(tmp / f"rev{i}"), rev],
                       check=True, capture_output=True)
        envs["torch" if i == 0 else rev] = {**env, "PYTHONPATH": str(tmp / f"rev{i}" / "src")}
    envs["torch-free"] = env  # this checkout
    labels = list(envs)
    results: dict[tuple[str, str], list[float]] = {}
    accuracy: dict[tuple[str, str], float] = {}
    n = 0
    for data in sets.values():  # warm the cache (embeddings, taps, the backbone's record)
        measure([sys.executable, "-m", "imclass", "train", str(data), "--mode", "probe", "--out",
                 str(tmp / f"warm{n}")], tmp / "warm.log", env=env)
        n += 1
    for r in range(args.rounds):
        for name, data in sets.items():
            for path in (labels if r % 2 == 0 else labels[::-1]):
                out = tmp / f"run{n}"
                n += 1
                m = measure([sys.executable, "-m", "imclass", "train", str(data), "--mode", "probe", "--out",
                             str(out), "-q"], tmp / "run.log", env=envs[path])
                results.setdefault((name, path), []).append(m.wall)
                accuracy[(name, path)] = json.loads((out / "metrics.json").read_text())["val"]["accuracy"]
                print(f"round {r + 1} {name:<30} {path:<10} {m.wall:6.2f} s", flush=True)
    check = ("import sys, imclass; imclass.train(sys.argv[1], out=sys.argv[2], mode='probe'); "
             "print('torch' in sys.modules, 'sklearn' in sys.modules)")
    imported = subprocess.run([sys.executable, "-c", check, str(sets["flowers5, 60 per class (300)"]),
                               str(tmp / "check")], env=env, capture_output=True, text=True).stdout.strip()
    lines = ["| data | path | seconds per round | median | ratio to the torch path | val accuracy |",
             "|---|---|---|---|---|---|"]
    for name in sets:
        base = statistics.median(results[(name, "torch")])
        for path in labels:
            walls = results[(name, path)]
            med = statistics.median(walls)
            lines.append(f"| {name} | {path} | {', '.join(f'{w:.2f}' for w in walls)} | {med:.2f} | "
                         f"**{base / med:.2f}x** | {accuracy[(name, path)]:.4f} |")
    table = "\n".join(lines)
    print(table)
    print(f"torch, scikit-learn imported by this checkout's process: {imported}")
    if args.record:
        load = os.getloadavg()[0]
        with open(ROOT / "bench" / "RESULTS.md", "a") as f:
            f.write(f"\n## {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: probe retraining, whole process "
                    f"(bench/retrain.py)\n\n`python bench/retrain.py --rounds {args.rounds} --base {args.base} "
                    + "".join(f"--also {rev} " for rev in args.also) + f"--record`: 2 cores, load "
                    f"{load:.1f} at the end. `imclass train DATA --mode probe --out RUN -q` from a warm embedding "
                    f"cache; \"torch\" is the same command run by the code of `{args.base}`"
                    + "".join(f", `{rev}` by that revision's" for rev in args.also)
                    + f", \"torch-free\" by this checkout's. torch, scikit-learn imported by this checkout's "
                    f"process: {imported}.\n\n" + table + "\n")
    for i in range(1 + len(args.also)):
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tmp / f"rev{i}")], check=False)
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
