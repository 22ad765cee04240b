"""Benchmark ``imclass predict`` (torch backend) against the naive seed-style loop, as whole processes.

    python bench/predict.py          # the recorded figures: 1000 photos, ~6-7 min on 2 quiet cores
    python bench/predict.py --n 200 --repeat 1 --variants "" --no-stages --no-record   # quick look

What one run does:

1. builds a test set of ``--n`` ImageNet-size JPEGs (~500x375, every 4th portrait, quality 90) from the
   real photos in ``../shared/datasets`` (cached under ``bench/out/``, which is gitignored);
2. times whole processes on all of them (spawn to exit: imports, model load, decode, inference, output),
   (a) and (b) in ``--repeat`` rounds run back to back in alternating order (medians reported):
   (a) ``bench/naive_loop.py``: one photo at a time, timm transform, batch-1 eager forward;
   (b) ``imclass predict DIR --output out.csv -q --overwrite --backend torch``;
   then (a1), the naive loop with 1 torch thread, for reference;
   then 1-photo runs of (a) and (b) (start-up cost) and the (c) ``--variants`` of (b): other options
   (``-b 32``, ``--threads 1``, ``--backend auto``...) and environment (``OMP_WAIT_POLICY=``);
3. reads each process's own peak RSS from ``os.wait4`` (per child, not the max over all children);
4. steady-state img/s: the naive loop's own timer after 10 warm-up photos; for imclass, the output rows
   written after its first batch appeared in the (per-batch flushed) CSV / time from then to exit;
5. checks top-1 agreement between (a) and (b) on the same photos;
6. times the stages in-process (``bench/stages.py``: decode vs preprocessing vs inference);
7. prints a Markdown table and appends a dated section to ``bench/RESULTS.md`` (``--no-record``: don't).

A naive-loop run that would take longer than ``--naive-max-s`` (a busy machine: batch-1 forwards with
all-core torch threads collapse under CPU contention) stops early and its full wall time is
extrapolated at its measured steady rate; such rows are marked. The machine may be shared and noisy:
compare the ratios, measured in the same run.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import hashlib
import json
import os
import platform
import re
import shlex
import shutil
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
CACHE = OUT / "cache"  # IMCLASS_CACHE_DIR of every measured process (ONNX exports), not the user's cache
DATASETS = Path(os.environ.get("IMCLASS_DATASETS", ROOT.parent / "shared" / "datasets"))
SOURCES = ("flowers5", "neu_steel_defects", "natural_scenes_multilabel")
SIZE = (500, 375)  # the typical ImageNet validation photo (landscape); every 4th one is portrait
QUALITY = 90
TORCH = ["--backend", "torch"]  # (b) is the torch backend; `--backend auto` (ONNX Runtime on CPU) is a variant
# `OMP_WAIT_POLICY=` (empty) gives libgomp's own spin-then-sleep default: the CLI sets PASSIVE only when unset.
DEFAULT_VARIANTS = "-b 32; -b 8; -w 1; --threads 1; OMP_WAIT_POLICY=; --backend auto"
NAIVE_MAX_S = 120  # per naive-loop run; a slower (busy) machine gets the rest of its photos extrapolated


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
    wall: float  # measured, spawn to exit
    maxrss_mib: float
    photos: int  # photos this process labelled
    total: int  # photos in its folder
    steady: float | None = None  # img/s once warm (see Case.steady)
    load: float = 0.0  # 1-minute load average when the process ended
    output: Path | None = None  # its CSV

    @property
    def full_wall(self) -> float:
        """Wall time for all ``total`` photos: measured, or extrapolated when the run stopped early."""
        if self.photos >= self.total or not self.steady:
            return self.wall
        return self.wall + (self.total - self.photos) / self.steady


def run_process(cmd: list[str], log: Path, timeout: float = 1800, env: dict[str, str] | None = None,
                watch: Path | None = None) -> tuple[float, float, tuple[float, int] | None]:
    """Run ``cmd`` to completion: (wall seconds from spawn to exit, *this child's* peak RSS in MiB, first rows).

    ``os.wait4`` reports the rusage of exactly the process it reaps (plus descendants it waited for),
    unlike ``getrusage(RUSAGE_CHILDREN)``, whose ``ru_maxrss`` is the max over every child so far.
    ``watch``: an output CSV the child appends to batch by batch (it must not exist beforehand); the
    moment its first rows appear is returned as (seconds after spawn, rows).
    """
    first = None
    with open(log, "wb") as f:
        t0 = time.perf_counter()
        p = subprocess.Popen(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT,
                             env={**os.environ, "IMCLASS_CACHE_DIR": str(CACHE), **(env or {})})
        while True:
            pid, status, ru = os.wait4(p.pid, os.WNOHANG)
            if pid:
                break
            if watch is not None and first is None:
                first = _rows_so_far(watch, t0)
            if time.perf_counter() - t0 > timeout:
                p.kill()
                pid, status, ru = os.wait4(p.pid, 0)
                break
            time.sleep(0.02)
        wall = time.perf_counter() - t0
    p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode != 0:
        tail = log.read_text(errors="replace")[-2000:]
        sys.exit(f"bench/predict.py: {shlex.join(cmd)} exited with {p.returncode}:\n{tail}")
    return wall, ru.ru_maxrss / 1024, first


def _rows_so_far(path: Path, t0: float) -> tuple[float, int] | None:
    try:
        data = path.read_bytes()
    except OSError:
        return None
    rows = data.count(b"\n") - 1  # minus the header
    return (time.perf_counter() - t0, rows) if rows > 0 else None


@dataclass
class Case:
    """One kind of process: the naive loop, or ``imclass predict`` with extra options / threads / env."""

    name: str
    args: list[str] = field(default_factory=list)  # extra `imclass predict` options
    naive: bool = False
    torch_threads: int | None = None  # naive loop: --threads
    env: dict[str, str] = field(default_factory=dict)  # extra environment for the process
    runs: list[Proc] = field(default_factory=list)

    def command(self, folder: Path, out_csv: Path, timing: Path, max_s: float | None) -> list[str]:
        if self.naive:
            cmd = [sys.executable, str(BENCH / "naive_loop.py"), str(folder), "--output", str(out_csv),
                   "--timing", str(timing)]
            if self.torch_threads:
                cmd += ["--threads", str(self.torch_threads)]
            return [*cmd, "--max-seconds", str(max_s)] if max_s else cmd
        return [imclass_exe(), "predict", str(folder), "--output", str(out_csv), "-q", "--overwrite", *self.args]

    def display(self) -> str:
        if self.naive:
            threads = f" --threads {self.torch_threads}" if self.torch_threads else ""
            return f"`python bench/naive_loop.py DIR --output naive.csv{threads}`"
        env = "".join(f"{k}={v} " for k, v in self.env.items())
        cmd = ["imclass", "predict", "DIR", "--output", "out.csv", "-q", "--overwrite", *self.args]
        return f"`{env}{shlex.join(cmd)}`"

    @property
    def wall(self) -> float:
        return statistics.median(r.full_wall for r in self.runs)

    @property
    def partial(self) -> int:
        """How many runs stopped early (their full wall time is extrapolated)."""
        return sum(r.photos < r.total for r in self.runs)

    @property
    def maxrss(self) -> float:
        return max(r.maxrss_mib for r in self.runs)

    @property
    def steady(self) -> float | None:
        rates = [r.steady for r in self.runs if r.steady]
        return statistics.median(rates) if rates else None


def imclass_exe() -> str:
    exe = Path(sys.executable).parent / "imclass"
    return str(exe) if exe.exists() else "imclass"


def parse_variant(spec: str) -> Case:
    """``OMP_WAIT_POLICY=PASSIVE -b 16`` -> environment + options added to (b)'s (``--backend`` replaces its own)."""
    words = shlex.split(spec)
    env = {}
    while words and re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", words[0]):
        key, _, value = words.pop(0).partition("=")
        env[key] = value
    if any(not w.startswith("-") and not w.replace(".", "").isalnum() for w in words):
        sys.exit(f"bench/predict.py: bad variant {spec!r}; use e.g. '-b 16', '--threads 1', 'OMP_WAIT_POLICY=PASSIVE'")
    args = (words if "--backend" in words else [*TORCH, *words])
    label = " ".join([*(f"{k}={v}" for k, v in env.items()), *words])
    return Case(f"(c) {label}", args, env=env)


def top1(path: Path) -> dict[str, str]:
    with open(path, newline="") as f:
        return {os.path.basename(r["path"]): r["label"] for r in csv.DictReader(f)}


def md_table(headers: list[str], rows: list[list[str]]) -> list[str]:
    return [f"| {' | '.join(headers)} |", f"|{'|'.join('---' for _ in headers)}|",
            *(f"| {' | '.join(r)} |" for r in rows)]


# ---- main ----------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="imclass predict vs the naive loop, as whole processes.")
    ap.add_argument("--n", type=int, default=1000, help="photos in the test set (default 1000)")
    ap.add_argument("--repeat", type=int, default=3,
                    help="rounds of (a) and (b), back to back in alternating order; medians reported (default 3)")
    ap.add_argument("--variants", default=DEFAULT_VARIANTS,
                    help=f"';'-separated (c) runs of (b), each [VAR=VALUE ...] [imclass predict options] "
                         f"(default {DEFAULT_VARIANTS!r}; '' for none)")
    ap.add_argument("--naive-max-s", type=float, default=NAIVE_MAX_S,
                    help=f"stop a naive-loop run after this many seconds of its loop and extrapolate the rest "
                         f"(default {NAIVE_MAX_S}; 0: never)")
    ap.add_argument("--no-naive-t1", action="store_true", help="skip (a1), the naive loop with 1 torch thread")
    ap.add_argument("--no-stages", action="store_true",
                    help="skip the in-process stage timings (bench/stages.py: decode vs preprocessing vs inference)")
    ap.add_argument("--no-record", action="store_true", help="do not write bench/RESULTS.md")
    ap.add_argument("--label", default="", help="suffix of the RESULTS.md section heading (one section per label)")
    args = ap.parse_args(argv)
    if args.n < 12:
        ap.error("--n must be >= 12 (the naive loop's steady rate excludes 10 warm-up photos)")
    if args.repeat < 1:
        ap.error("--repeat must be >= 1")
    n = args.n

    t_start = time.perf_counter()
    load_before = os.getloadavg()
    folder = build_testset(n)
    one = first_photos(folder, 1)
    work = OUT / "runs"
    work.mkdir(parents=True, exist_ok=True)

    naive = Case("(a) naive loop", naive=True)
    batched = Case("(b) imclass predict --backend torch", list(TORCH))
    naive_t1 = Case("(a1) naive loop, 1 torch thread (reference)", naive=True, torch_threads=1)
    naive_1, batched_1 = Case("(a) naive loop", naive=True), Case("(b) imclass predict", list(TORCH))
    variants = [parse_variant(v) for v in args.variants.split(";") if v.strip()]
    t_ready: list[float] = []

    def measure(case: Case, src: Path, count: int, tag: str) -> Proc:
        out_csv, timing = work / f"{tag}.csv", work / f"{tag}.timing.json"
        out_csv.unlink(missing_ok=True)
        timing.unlink(missing_ok=True)
        cmd = case.command(src, out_csv, timing, args.naive_max_s if count > 1 else None)
        wall, rss, first = run_process(cmd, work / f"{tag}.log", env=case.env, watch=None if case.naive else out_csv)
        proc = Proc(wall=wall, maxrss_mib=rss, photos=count, total=count, load=os.getloadavg()[0], output=out_csv)
        if case.naive:
            t = json.loads(timing.read_text())
            proc.photos = t["n"]
            t_ready.append(t["t_ready"])
            if t["n"] > t["warm"] > 0:
                proc.steady = (t["n"] - t["warm"]) / (t["t_end"] - t["t_warm"])
        elif first and count - first[1] >= 50:  # fewer rows after the first batch: mostly exit time, not a rate
            proc.steady = (count - first[1]) / (wall - first[0])
        case.runs.append(proc)
        done = f"{proc.photos}/{count}" if proc.photos < count else f"{count}"
        steady = f" {proc.steady:6.2f} img/s steady" if proc.steady else ""
        print(f"  {case.name:<50} {done:>9} photos {wall:7.1f}s {rss:6.0f} MiB{steady} (load {proc.load:.1f})",
              flush=True)
        return proc

    print(f"n={n}, repeat={args.repeat}, variants={args.variants!r}; load average {load_before[0]:.1f}", flush=True)
    steps = [(naive, "naive"), (batched, "imclass")]
    for r in range(args.repeat):
        # Alternate the order so that drifting machine load favours neither side; a round's runs are adjacent.
        k = r % len(steps)
        for case, tag in steps[k:] + steps[:k]:
            measure(case, folder, n, f"{tag}-{r}")
    if not args.no_naive_t1:
        measure(naive_t1, folder, n, "naive-t1")
    measure(naive_1, one, 1, "naive-one")
    measure(batched_1, one, 1, "imclass-one")
    onnx_first = None
    if any("--backend" in c.args and c.args[c.args.index("--backend") + 1] != "torch" for c in variants):
        # The first --backend auto run exports and verifies the ONNX model into CACHE; later runs reuse it.
        cached = any(CACHE.rglob("*.onnx"))
        onnx_first = Case("(c) --backend auto, 1 photo", ["--backend", "auto"])
        measure(onnx_first, one, 1, "onnx-one-first")
        measure(onnx_first, one, 1, "onnx-one")
    for i, case in enumerate(variants):
        measure(case, folder, n, f"variant-{i}")
    stages = None
    if not args.no_stages:
        print("  in-process stage timings (bench/stages.py) ...", flush=True)
        stages = subprocess.run([sys.executable, str(BENCH / "stages.py"), str(folder)], cwd=ROOT,
                                env={**os.environ, "IMCLASS_CACHE_DIR": str(CACHE)},
                                capture_output=True, text=True, check=True).stdout.strip()
    load_after = os.getloadavg()

    # Top-1 agreement on the same photos (all of them unless every naive run stopped early).
    most = max(naive.runs, key=lambda r: r.photos)
    a, b = top1(most.output), top1(batched.runs[-1].output)
    if len(b) != n or not set(a) <= set(b):
        sys.exit(f"bench/predict.py: outputs cover {len(a)} and {len(b)} photos, expected {n}")
    agree = sum(a[k] == b[k] for k in a)
    disagree = sorted(k for k in a if a[k] != b[k])

    def fmt(x: float | None, unit: str = "") -> str:
        return "n/a" if x is None else f"{x:.2f}{unit}"

    base_rate, base_steady = n / naive.wall, naive.steady
    rows = []
    for case in [naive, *([naive_t1] if naive_t1.runs else []), batched, *variants]:
        rate, st = n / case.wall, case.steady
        mark = f" \\* ({case.partial} of {len(case.runs)} runs)" if case.partial else ""
        rows.append([case.name + mark, f"{case.wall:.1f}", f"{rate:.2f}", f"**{rate / base_rate:.2f}x**",
                     fmt(st), fmt(st / base_steady if st and base_steady else None, "x"), f"{case.maxrss:.0f}",
                     ", ".join(f"{r.load:.1f}" for r in case.runs), case.display()])
    headers = ["run", f"wall s ({n} photos)", "img/s whole process", "vs (a)", "img/s steady", "vs (a)",
               "peak RSS MiB", "load", "command"]
    text = [*md_table(headers, rows), ""]

    ratio = (n / batched.wall) / base_rate
    per_round = ", ".join(f"{x.full_wall / y.full_wall:.2f}x" for x, y in zip(naive.runs, batched.runs))
    notes = [
        f"**Target** imclass predict >= 1.5x the naive loop's img/s (whole process, {n} photos): "
        f"**{ratio:.2f}x, {'met' if ratio >= 1.5 else 'MISSED'}** (per round: {per_round}).",
        "img/s whole process = photos / wall clock from spawn to exit (imports, model load, decode, inference, "
        "output). img/s steady: naive loop = its own timer after 10 warm-up photos; imclass = rows written after "
        "its first batch reached the output file / time from then to exit.",
        f"Start-up (1-photo run, whole process): naive loop {naive_1.wall:.1f}s ({naive_1.maxrss:.0f} MiB), "
        f"imclass predict {batched_1.wall:.1f}s ({batched_1.maxrss:.0f} MiB); the naive loop's model is ready "
        f"{statistics.median(t_ready):.1f}s after its script starts (median)."
        + (f" `--backend auto` (ONNX Runtime): {onnx_first.runs[1].wall:.1f}s ({onnx_first.runs[1].maxrss_mib:.0f} MiB)"
           + (" (the export was cached by an earlier benchmark run)." if cached else
              f"; the first run exported and verified it: {onnx_first.runs[0].wall:.1f}s.")
           if onnx_first else ""),
        f"Top-1 agreement (a) vs (b) on the same {len(a)} photos: {agree}/{len(a)} ({100 * agree / len(a):.1f}%)"
        + (f"; differing: {', '.join(disagree[:5])}" if disagree else "") + ".",
        f"(a) and (b): median of {args.repeat} round(s), run back to back in alternating order; one run for each "
        "other row. Peak RSS: ru_maxrss of each process from os.wait4 (max over its runs). load: the machine's "
        "1-minute load average as each run ended (2 cores: above ~2.5 other jobs were competing; single runs "
        "taken under different loads do not compare).",
    ]
    if any(c.partial for c in (naive, naive_t1)):
        notes.append(f"\\* stopped early by --naive-max-s {args.naive_max_s:g} (a busy machine): such a run's wall "
                     f"time for all {n} photos is its measured wall time plus the remaining photos at its own "
                     "steady rate; the median is over all runs.")
    notes += [
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs (affinity {len(os.sched_getaffinity(0))}), "
        f"Python {platform.python_version()}, {versions()}; load average {load_before[0]:.1f} before, "
        f"{load_after[0]:.1f} after (a shared machine: compare ratios, not absolute figures).",
        f"Test set: {n} JPEGs ~{SIZE[0]}x{SIZE[1]} (every 4th portrait) q{QUALITY}, upscaled from photos in "
        f"../shared/datasets/{{{','.join(SOURCES)}}}; cached in {folder.relative_to(ROOT)}.",
    ]
    command = shlex.join(["python", "bench/predict.py", *(argv if argv is not None else sys.argv[1:])])
    notes.append(f"Command: `{command}` ({time.perf_counter() - t_start:.0f}s in all).")
    text += [f"- {x}" for x in notes]
    if stages:
        text += ["", "### Where the time goes (in-process, `python bench/stages.py DIR`)", "", stages]
    out = "\n".join(text)
    print()
    print(out)
    if not args.no_record:
        record(out, args.label)
        print(f"\nrecorded in {RESULTS.relative_to(ROOT)}")
    return 0


def first_photos(folder: Path, count: int) -> Path:
    """The first ``count`` photos of ``folder`` (by name), as hard links in a sibling folder."""
    dest = folder.parent / f"{folder.name}-first{count}"
    if (dest / ".complete").exists():
        return dest
    dest.mkdir(exist_ok=True)
    for src in sorted(folder.glob("*.jpg"))[:count]:
        target = dest / src.name
        if not target.exists():
            try:
                os.link(src, target)
            except OSError:
                shutil.copyfile(src, target)
    (dest / ".complete").write_text(f"first {count} of {folder.name}\n")
    return dest


def versions() -> str:
    """Library versions and the imclass defaults that shape (b), read in a fresh process."""
    code = ("import torch, PIL, imclass.cli as c, imclass.classifier as k, inspect; "
            "b = inspect.signature(c.predict).parameters['batch_size'].default; "
            "print(torch.__version__, PIL.__version__, torch.get_num_threads(), b, k.default_workers())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False).stdout.split()
    commit = subprocess.run(["git", "log", "-1", "--format=%h"], cwd=ROOT, capture_output=True, text=True,
                            check=False).stdout.strip() or "?"
    dirty = subprocess.run(["git", "status", "--porcelain", "src"], cwd=ROOT, capture_output=True, text=True,
                           check=False).stdout.strip()
    if len(out) != 5:
        return f"imclass at {commit}"
    return (f"torch {out[0]}, Pillow {out[1]}, torch default threads {out[2]}; imclass at {commit}"
            f"{' (src modified)' if dirty else ''}, `imclass predict` defaults: --batch-size {out[3]}, "
            f"--workers {out[4]}")


def record(text: str, label: str = "") -> None:
    """Append a ``## YYYY-MM-DD HH:MM UTC`` section to RESULTS.md (one with the same heading is replaced)."""
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    heading = f"## {now}: imclass predict vs the naive loop" + (f" ({label})" if label else "")
    old = RESULTS.read_text() if RESULTS.exists() else (
        "# Benchmarks\n\nWritten by `bench/predict.py`: one dated section per run, appended (the machine is "
        "shared and noisy, so the history shows the spread); compare ratios within a section.\n")
    kept, skip = [], False
    for line in old.splitlines():
        if line.startswith("## "):
            skip = line == heading
        if not skip:
            kept.append(line)
    body = "\n".join(kept).rstrip("\n")
    RESULTS.write_text(f"{body}\n\n{heading}\n\n{text}\n")


if __name__ == "__main__":
    raise SystemExit(main())
