"""Benchmark ``imclass predict`` (torch backend) against the naive seed-style loop, as whole processes.

    python bench/predict.py                    # n=1000, the recorded figures (~6 min on 2 cores)
    python bench/predict.py --n 200 --repeat 1 --variants "" --no-record    # quick look

What it does, in one run:

1. builds a test set of ``--n`` ImageNet-size JPEGs (~500x375, quality 90) from the real photos in
   ``../shared/datasets`` (cached under ``bench/out/``, which is gitignored);
2. times whole processes (start-up included, wall clock), interleaved ``--repeat`` times:
   (a) ``bench/naive_loop.py`` (one image at a time, eager batch-1 forward) and
   (b) ``imclass predict DIR --output out.csv -q --overwrite``; plus 1-image runs of both, so that
   steady-state img/s = (n - 1) / (wall(n) - wall(1));
3. optionally times ``--batch-size`` / ``--workers`` variations of (b) (``--variants``);
4. reads each process's own peak RSS from ``os.wait4`` (per child, not the max over all children);
5. checks top-1 agreement between (a) and (b) on the same images;
6. prints a Markdown table and replaces today's section of ``bench/RESULTS.md`` (``--no-record``: don't).

The machine may be shared and noisy: compare the ratios, which are measured in the same run.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import hashlib
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
OUT = BENCH / "out"
RESULTS = BENCH / "RESULTS.md"
DATASETS = Path(os.environ.get("IMCLASS_DATASETS", ROOT.parent / "shared" / "datasets"))
SOURCES = ("flowers5", "neu_steel_defects", "natural_scenes_multilabel")
SIZE = (500, 375)  # the typical ImageNet validation photo (landscape); every 4th one is portrait
QUALITY = 90
DEFAULT_VARIANTS = "b8,b16,b64,w1,w3,b16w1"


# ---- test set ----------------------------------------------------------------------------------------

def source_photos() -> list[Path]:
    if not DATASETS.is_dir():
        sys.exit(f"bench/predict.py: real photos not found at {DATASETS}\n"
                 "  it needs ../shared/datasets (relative to the repository root) or IMCLASS_DATASETS=DIR")
    photos = sorted(p for s in SOURCES for p in (DATASETS / s).rglob("*.jpg"))
    if not photos:
        sys.exit(f"bench/predict.py: no .jpg photos under {DATASETS}/{{{','.join(SOURCES)}}}")
    return photos


def build_testset(n: int) -> Path:
    """``n`` photos, evenly spread over all sources, upscaled to ~500x375 JPEG q90. Cached."""
    from PIL import Image

    photos = source_photos()
    picks = [photos[(i * len(photos)) // n % len(photos)] for i in range(n)]
    key = hashlib.sha1("\n".join([*map(str, picks), str(SIZE), str(QUALITY)]).encode()).hexdigest()[:10]
    folder = OUT / "testsets" / f"n{n}-{SIZE[0]}x{SIZE[1]}-q{QUALITY}-{key}"
    marker = folder / ".complete"
    if marker.exists():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    for i, src in enumerate(picks):
        size = SIZE if i % 4 != 3 else SIZE[::-1]
        with Image.open(src) as im:
            big = im.convert("RGB").resize(size, Image.Resampling.BICUBIC)
        big.save(folder / f"{i:05d}_{src.parent.name}_{src.stem}.jpg", quality=QUALITY)
    marker.write_text(f"{n} photos from {DATASETS}\n")
    print(f"built test set {folder.relative_to(ROOT)} ({n} photos, {time.perf_counter() - t0:.1f}s)", flush=True)
    return folder


# ---- measuring one process -----------------------------------------------------------------------------

@dataclass
class Proc:
    wall: float
    maxrss_mib: float
    rc: int


def run_process(cmd: list[str], log: Path, timeout: float = 900) -> Proc:
    """Run ``cmd`` to completion; wall clock from spawn to exit and *this child's* peak RSS.

    ``os.wait4`` reports the rusage of exactly the process it reaps (plus descendants it waited for),
    unlike ``getrusage(RUSAGE_CHILDREN)``, whose ``ru_maxrss`` is the max over every child so far.
    """
    with open(log, "wb") as f:
        t0 = time.perf_counter()
        p = subprocess.Popen(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT)
        deadline = t0 + timeout
        while True:
            pid, status, ru = os.wait4(p.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() > deadline:
                p.kill()
                pid, status, ru = os.wait4(p.pid, 0)
                break
            time.sleep(0.02)
        wall = time.perf_counter() - t0
    p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode != 0:
        tail = log.read_text(errors="replace")[-2000:]
        sys.exit(f"bench/predict.py: {shlex.join(cmd)} exited with {p.returncode}:\n{tail}")
    return Proc(wall=wall, maxrss_mib=ru.ru_maxrss / 1024, rc=p.returncode)


@dataclass
class Case:
    name: str
    args: list[str]  # extra `imclass predict` options, or None for the naive loop
    naive: bool = False
    runs: list[Proc] = field(default_factory=list)

    def command(self, folder: Path, out_csv: Path, timing: Path | None = None) -> list[str]:
        if self.naive:
            cmd = [sys.executable, str(BENCH / "naive_loop.py"), str(folder), "--output", str(out_csv)]
            return [*cmd, "--timing", str(timing)] if timing else cmd
        return [imclass_exe(), "predict", str(folder), "--output", str(out_csv), "-q", "--overwrite", *self.args]

    @property
    def wall(self) -> float:
        return statistics.median(r.wall for r in self.runs)

    @property
    def maxrss(self) -> float:
        return max(r.maxrss_mib for r in self.runs)


def imclass_exe() -> str:
    exe = Path(sys.executable).parent / "imclass"
    return str(exe) if exe.exists() else "imclass"


def parse_variant(spec: str) -> Case:
    """``b16w1`` -> ``--batch-size 16 --workers 1``."""
    import re

    m = re.fullmatch(r"(?:b(\d+))?(?:w(\d+))?", spec)
    if not m or not spec:
        sys.exit(f"bench/predict.py: bad variant {spec!r}; use e.g. b16, w1, b16w1")
    args = []
    if m.group(1):
        args += ["--batch-size", m.group(1)]
    if m.group(2):
        args += ["--workers", m.group(2)]
    return Case(f"(c) imclass predict {' '.join(args)}", args)


# ---- agreement -----------------------------------------------------------------------------------------

def top1(path: Path) -> dict[str, str]:
    with open(path, newline="") as f:
        return {os.path.basename(r["path"]): r["label"] for r in csv.DictReader(f)}


# ---- main ----------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="imclass predict vs the naive loop, as whole processes.")
    ap.add_argument("--n", type=int, default=1000, help="photos in the test set (default 1000)")
    ap.add_argument("--repeat", type=int, default=2, help="interleaved runs of (a) and (b); median reported")
    ap.add_argument("--variants", default=DEFAULT_VARIANTS,
                    help=f"comma-separated (c) runs, bN = --batch-size N, wN = --workers N "
                         f"(default {DEFAULT_VARIANTS!r}; '' for none)")
    ap.add_argument("--no-record", action="store_true", help="do not write bench/RESULTS.md")
    args = ap.parse_args(argv)
    if args.n < 2:
        ap.error("--n must be >= 2")

    t_start = time.perf_counter()
    load_before = os.getloadavg()
    folder = build_testset(args.n)
    one = build_testset(1)
    work = OUT / "runs"
    work.mkdir(parents=True, exist_ok=True)

    naive = Case("(a) naive loop (bench/naive_loop.py)", [], naive=True)
    batched = Case("(b) imclass predict", [])
    variants = [parse_variant(v.strip()) for v in args.variants.split(",") if v.strip()]
    naive_1, batched_1 = Case("naive, 1 image", [], naive=True), Case("imclass, 1 image", [])

    def measure(case: Case, src: Path, tag: str, timing: Path | None = None) -> Proc:
        out_csv = work / f"{tag}.csv"
        proc = run_process(case.command(src, out_csv, timing), work / f"{tag}.log")
        case.runs.append(proc)
        print(f"  {case.name:<48} {proc.wall:7.1f}s  {proc.maxrss_mib:6.0f} MiB", flush=True)
        return proc

    print(f"n={args.n}, repeat={args.repeat}, {len(variants)} variants; load average {load_before[0]:.1f}",
          flush=True)
    timings = []
    for r in range(args.repeat):
        # Alternate the order so that drifting machine load does not favour one side.
        order = [(naive, "naive"), (batched, "imclass")]
        for case, tag in order if r % 2 == 0 else order[::-1]:
            timing = work / f"naive-timing-{r}.json" if case.naive else None
            measure(case, folder, f"{tag}-{r}", timing)
            if timing:
                timings.append(json.loads(timing.read_text()))
    measure(naive_1, one, "naive-1")
    measure(batched_1, one, "imclass-1")
    for i, case in enumerate(variants):
        measure(case, folder, f"variant-{i}")
    load_after = os.getloadavg()

    # Agreement between the last naive and imclass outputs (both saw the same files).
    a, b = top1(work / f"naive-{args.repeat - 1}.csv"), top1(work / f"imclass-{args.repeat - 1}.csv")
    common = sorted(set(a) & set(b))
    agree = sum(a[k] == b[k] for k in common)
    if len(common) != args.n:
        sys.exit(f"bench/predict.py: outputs cover {len(common)} of {args.n} images")

    n = args.n
    base_rate = n / naive.wall
    base_steady = (n - 1) / max(1e-9, naive.wall - naive_1.wall)
    internal = statistics.median((t["n"] - t["warm"]) / (t["t_end"] - t["t_warm"]) for t in timings)

    rows = []
    for case in [naive, batched, *variants]:
        rate = n / case.wall
        steady = (n - 1) / max(1e-9, case.wall - (naive_1 if case.naive else batched_1).wall)
        rows.append([case.name, f"{case.wall:.1f}", f"{rate:.1f}", f"{rate / base_rate:.2f}x",
                     f"{steady:.1f}", f"{steady / base_steady:.2f}x", f"{case.maxrss:.0f}",
                     f"`{shlex.join(case.args) or '(defaults)'}`" if not case.naive else "`bench/naive_loop.py`"])
    headers = ["run", f"wall s (n={n})", "img/s whole process", "vs (a)", "img/s steady", "vs (a)",
               "peak RSS MiB", "options"]
    table = [f"| {' | '.join(headers)} |", f"|{'|'.join('---' for _ in headers)}|"]
    table += [f"| {' | '.join(r)} |" for r in rows]
    start_up = (f"Start-up (1-image run, whole process): naive {naive_1.wall:.1f}s "
                f"({naive_1.maxrss:.0f} MiB), imclass {batched_1.wall:.1f}s ({batched_1.maxrss:.0f} MiB).")
    notes = [
        start_up,
        f"Naive loop's own in-process steady rate (after {timings[0]['warm']} warm-up images): {internal:.1f} img/s; "
        f"model ready {statistics.median(t['t_ready'] for t in timings):.1f}s after the script started.",
        f"Top-1 agreement (a) vs (b): {agree}/{len(common)} ({100 * agree / len(common):.1f}%).",
        f"Whole-process figures: median of {args.repeat} interleaved runs for (a), (b) and the 1-image runs; "
        "one run per (c) variant. Steady img/s = (n-1) / (wall(n) - wall(1 image)).",
    ]
    target = (n / batched.wall) / base_rate
    verdict = (f"Target imclass predict >= 1.5x naive (whole process): {target:.2f}x, "
               f"{'MET' if target >= 1.5 else 'MISSED'}.")
    machine = (f"{platform.machine()}, {os.cpu_count()} CPUs (affinity {len(os.sched_getaffinity(0))}), "
               f"Python {platform.python_version()}, {versions()}; load average {load_before[0]:.1f} before, "
               f"{load_after[0]:.1f} after; test set {folder.relative_to(ROOT)} "
               f"({n} JPEGs ~{SIZE[0]}x{SIZE[1]} q{QUALITY} from {DATASETS.name}/{{{','.join(SOURCES)}}})")
    command = "python bench/predict.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    text = "\n".join([*table, "", verdict, "", *(f"- {x}" for x in notes), f"- Machine: {machine}.",
                      f"- Command: `{command.strip()}` ({time.perf_counter() - t_start:.0f}s in all)."])
    print()
    print(text)
    if not args.no_record:
        record(text)
        print(f"\nrecorded in {RESULTS.relative_to(ROOT)}")
    return 0


def versions() -> str:
    out = subprocess.run([sys.executable, "-c", "import torch, PIL; print(torch.__version__, PIL.__version__,"
                          " torch.get_num_threads())"], capture_output=True, text=True, check=False).stdout.split()
    return f"torch {out[0]}, Pillow {out[1]}, torch threads {out[2]}" if len(out) == 3 else "versions unknown"


def record(text: str) -> None:
    """Replace today's ``## YYYY-MM-DD`` section of RESULTS.md (or append one)."""
    heading = f"## {dt.date.today().isoformat()}: imclass predict vs the naive loop"
    old = RESULTS.read_text() if RESULTS.exists() else (
        "# Benchmarks\n\nWritten by `bench/predict.py`; one dated section per day (re-running replaces it).\n")
    lines, kept, skip = old.splitlines(), [], False
    for line in lines:
        if line.startswith("## "):
            skip = line == heading
        if not skip:
            kept.append(line)
    body = "\n".join(kept).rstrip("\n")
    RESULTS.write_text(f"{body}\n\n{heading}\n\n{text}\n")


if __name__ == "__main__":
    raise SystemExit(main())
