"""Benchmark ``imclass train DATA --budget B`` on the shared sets: every candidate the budget tried, in one run.

    python bench/train_budget.py                         # the three sets, --budget 5m each, cold cache
    python bench/train_budget.py --budget 3m --only flowers5 --no-record

For each set: one ``imclass train DATA --budget B --out RUN --json -q`` process with an empty cache
(``IMCLASS_CACHE_DIR`` under ``bench/out/train_budget/``: embeddings and ONNX exports computed, as on a first run).
Per candidate: its validation accuracy (mAP for multi-label), seconds, the planner's estimate, or why it was
skipped; then the winner, why the run stopped, the whole process's wall time and the gain over the first
candidate (today's probe). Appends a Markdown section to ``bench/RESULTS.md`` (``--no-record``: don't).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import sys
from pathlib import Path

from proc import measure  # bench/ is on sys.path when run as a script

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out" / "train_budget"
RESULTS = ROOT / "bench" / "RESULTS.md"
DATASETS = Path(os.environ.get("IMCLASS_DATASETS", ROOT.parent / "shared" / "datasets"))
SETS = {
    "flowers5": ("flowers5/all", []),
    "neu_steel_defects": ("neu_steel_defects", []),
    "natural_scenes_multilabel": ("natural_scenes_multilabel/labels.csv", ["--multi-label"]),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default="", help="comma list of: " + ", ".join(SETS))
    ap.add_argument("--budget", default="5m")
    ap.add_argument("--warm", action="store_true", help="keep the cache of an earlier run (embeddings cached)")
    ap.add_argument("--no-record", action="store_true")
    a = ap.parse_args()
    if not DATASETS.is_dir():
        raise SystemExit(f"datasets not found at {DATASETS}")
    OUT.mkdir(parents=True, exist_ok=True)
    only = {s for s in a.only.split(",") if s}
    rows, summary = [], []
    for name, (rel, extra) in SETS.items():
        if only and name not in only:
            continue
        cache = OUT / f"cache-{name}"
        if not a.warm:
            shutil.rmtree(cache, ignore_errors=True)
        dest = OUT / f"run-{name}"
        shutil.rmtree(dest, ignore_errors=True)
        args = ["train", str(DATASETS / rel), "--out", str(dest), "--budget", a.budget, *extra]
        m = measure([sys.executable, "-m", "imclass", *args, "--json", "-q"], OUT / "stderr.txt",
                    env={"IMCLASS_CACHE_DIR": str(cache)}, stdout=OUT / "stdout.json")
        metrics = json.loads((OUT / "stdout.json").read_text())
        plan = metrics["budget"]
        done = [c for c in plan["candidates"] if c["status"] == "done"]
        for c in plan["candidates"]:
            est = "" if c["estimated_seconds"] is None else f"{c['estimated_seconds']:.0f}"
            result = f"{c['metric']}" if c["status"] == "done" else f"{c['status']}: {c.get('why', '')}"
            kept = " **kept**" if c["candidate"] == plan["winner"] else ""
            rows.append([name, c["candidate"] + kept, result,
                         f"{c['seconds']:.0f}" if c["status"] != "skipped" else "-", est])
        key = plan["metric"]
        first = done[0]["metric"] if done else None
        summary.append([name, plan["winner"], f"{first} -> {metrics['val'].get(key)}", plan["stopped"],
                        f"{plan['spent_seconds']:.0f}", f"{m.wall:.0f}", f"{m.rss_mib:.0f}",
                        f"`imclass train {rel} --budget {a.budget} --out RUN {' '.join(extra)}`".replace("  ", " ")])
        print(f"{name}: {plan['winner']} ({summary[-1][2]}), {plan['stopped']}, {m.wall:.0f}s", flush=True)
    load = os.getloadavg()[0]
    text = (f"## {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC: imclass train --budget (bench/train_budget.py)\n\n"
            f"`python bench/train_budget.py --budget {a.budget}{' --warm' if a.warm else ''}`: {platform.machine()}, "
            f"{os.cpu_count()} cores, load {load:.1f} at the end; "
            f"{'embeddings cached by an earlier run' if a.warm else 'cold cache (embeddings and ONNX exports made)'}"
            ". Validation accuracy (mAP for natural_scenes_multilabel), on the split every candidate shares.\n\n"
            "| set | winner | val metric: first candidate -> kept | stopped | budget s spent | wall s (process) | "
            "peak RSS MiB | command |\n|---|---|---|---|---|---|---|---|\n"
            + "\n".join("| " + " | ".join(r) + " |" for r in summary)
            + "\n\n| set | candidate | val metric (or why not run) | seconds | estimated s |\n|---|---|---|---|---|\n"
            + "\n".join("| " + " | ".join(r) + " |" for r in rows) + "\n")
    print(text)
    if not a.no_record:
        with RESULTS.open("a", encoding="utf-8") as f:
            f.write("\n" + text)


if __name__ == "__main__":
    main()
