"""Bounded load test of ``imclass serve`` on loopback, compared with ``imclass predict`` on the same images.

    python bench/serve_load.py                     # 2,000 requests at concurrency 32, the recorded figures
    python bench/serve_load.py --requests 300 --no-record      # quick look

What it does, in one run (everything on 127.0.0.1, bounded in count and time, stops by itself):

1. picks ``--images`` distinct real photos from ``../shared/datasets/flowers5/all/*/`` (round robin over
   the classes, sorted names: the same set every run);
2. runs ``imclass predict <images> -o out.csv -q --overwrite`` as a subprocess, and once more on one
   image, so that its steady-state rate is (n - 1) / (wall(n) - wall(1)) (start-up excluded);
3. starts ``python -m imclass serve --model MODEL --port P ...`` as a subprocess and waits for ``/readyz``;
4. from this process (a separate one), sends ``--requests`` POST /v1/predict requests (``--files`` images
   each, multipart, images reused round-robin) with httpx async at ``--concurrency``, after a short
   warm-up; stops issuing at ``--time-limit`` seconds;
5. reports status counts (any 5xx or transport error fails the run), p50/p95/p99 latency, throughput in
   images/s, the ratio to ``imclass predict``, the server's mean batch size, and top-1 agreement with
   the CLI's labels; then SIGTERMs the server and checks that it exits cleanly;
6. appends a section to ``bench/RESULTS.md`` (``bench/SERVE_RESULTS.md`` when that file does not exist);
   ``--no-record``: don't.

Client and server share the machine's cores: the figures include the client's own CPU use.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import datetime as dt
import os
import platform
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
OUT = BENCH / "out" / "serve_load"
DATASETS = Path(os.environ.get("IMCLASS_DATASETS", ROOT.parent / "shared" / "datasets"))
HOST = "127.0.0.1"  # loopback only, whatever the arguments


def pick_images(n: int) -> list[Path]:
    root = DATASETS / "flowers5" / "all"
    classes = sorted(p for p in root.iterdir() if p.is_dir())
    per_class = [sorted(f for f in c.iterdir() if f.suffix.lower() in (".jpg", ".jpeg", ".png")) for c in classes]
    out: list[Path] = []
    i = 0
    while len(out) < n and any(i < len(files) for files in per_class):
        out.extend(files[i] for files in per_class if i < len(files) and len(out) < n)
        i += 1
    if len(out) < n:
        raise SystemExit(f"only {len(out)} images under {root}")
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def run_cli(images: list[Path], model: str, out_csv: Path) -> float:
    cmd = [sys.executable, "-m", "imclass", "predict", *map(str, images), "-m", model, "-o", str(out_csv), "-q",
           "--overwrite"]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"imclass predict failed ({r.returncode}):\n{r.stderr}")
    return wall


def cli_labels(path: Path) -> dict[str, str]:
    with open(path, newline="") as f:
        return {row["path"]: row["label"] for row in csv.DictReader(f)}


def server_command(args, port: int) -> list[str]:
    return [sys.executable, "-m", "imclass", "serve", "--model", args.model, "--host", HOST, "--port", str(port),
            "--max-batch", str(args.max_batch), "--max-wait-ms", str(args.max_wait_ms), "--device", "cpu",
            *(["--streams", str(args.streams)] if args.streams else [])]


def start_server(cmd: list[str], log) -> subprocess.Popen:
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    port = cmd[cmd.index("--port") + 1]
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode}; see {log.name}")
        try:
            if httpx.get(f"http://{HOST}:{port}/readyz", timeout=2).status_code == 200:
                return proc
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise SystemExit("server did not become ready within 180 s")


async def load(url: str, blobs: list[tuple[str, bytes]], *, requests: int, concurrency: int, files: int,
               time_limit: float, warmup: int) -> dict:
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    timeout = httpx.Timeout(60.0)
    statuses: Counter = Counter()
    transport_errors: Counter = Counter()
    latencies: list[float] = []
    labels: dict[str, str] = {}
    images_ok = 0
    counter = 0

    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=timeout) as client:
        async def one(i: int, record: bool) -> None:
            nonlocal images_ok
            parts = [blobs[(i * files + j) % len(blobs)] for j in range(files)]
            t0 = time.perf_counter()
            try:
                upload = [("files", (name, data, "image/jpeg")) for name, data in parts]
                r = await client.post("/v1/predict", files=upload)
            except httpx.HTTPError as e:
                if record:
                    transport_errors[type(e).__name__] += 1
                return
            dt_ms = (time.perf_counter() - t0) * 1000
            if not record:
                return
            statuses[r.status_code] += 1
            latencies.append(dt_ms)
            if r.status_code == 200:
                for p in r.json()["predictions"]:
                    if p["error"] is None:
                        images_ok += 1
                        labels[p["filename"]] = p["label"]

        await asyncio.gather(*(one(i, False) for i in range(warmup)))
        deadline = time.perf_counter() + time_limit

        async def worker() -> None:
            nonlocal counter
            while counter < requests and time.perf_counter() < deadline:
                i = counter
                counter += 1
                await one(i, True)

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - t0
        stats = (await client.get("/healthz")).json()
    return {"statuses": statuses, "transport_errors": transport_errors, "latencies": latencies, "wall": wall,
            "images_ok": images_ok, "sent": counter, "labels": labels, "server_stats": stats}


def percentile(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    k = (len(xs) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="default")
    ap.add_argument("--images", type=int, default=200, help="distinct photos, reused round-robin")
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--files", type=int, default=1, help="images per request")
    ap.add_argument("--max-batch", type=int, default=32)
    ap.add_argument("--max-wait-ms", type=int, default=5)
    ap.add_argument("--streams", type=int, default=None, help="server's --streams (default: its own)")
    ap.add_argument("--time-limit", type=float, default=600.0, help="stop issuing requests after this many s")
    ap.add_argument("--cli-repeat", type=int, default=2, help="imclass predict runs (n images and 1 image) each")
    ap.add_argument("--no-cli", action="store_true", help="skip the imclass predict baseline")
    ap.add_argument("--no-record", action="store_true")
    args = ap.parse_args()
    if not (1 <= args.requests <= 100_000 and 1 <= args.concurrency <= 512 and 1 <= args.files <= 64):
        ap.error("--requests 1..100000, --concurrency 1..512, --files 1..64")
    OUT.mkdir(parents=True, exist_ok=True)
    command = shlex.join(["python", "bench/serve_load.py", *sys.argv[1:]])

    load_before = os.getloadavg()
    images = pick_images(args.images)
    blobs = [(str(p), p.read_bytes()) for p in images]
    print(f"{len(images)} images from {DATASETS / 'flowers5' / 'all'}", file=sys.stderr)

    cli = None
    if not args.no_cli:
        print("imclass predict baseline ...", file=sys.stderr)
        wall_1s, wall_ns = [], []
        for _ in range(args.cli_repeat):  # interleaved; the minimum is the least disturbed run
            wall_1s.append(run_cli(images[:1], args.model, OUT / "cli-1.csv"))
            wall_ns.append(run_cli(images, args.model, OUT / "cli.csv"))
        wall_1, wall_n = min(wall_1s), min(wall_ns)
        steady = (len(images) - 1) / (wall_n - wall_1) if wall_n > wall_1 else float("nan")
        cli = {"wall_n": wall_n, "wall_1": wall_1, "rate_total": len(images) / wall_n, "rate_steady": steady,
               "labels": cli_labels(OUT / "cli.csv")}
        print(f"  {len(images)} images in {wall_n:.1f} s ({cli['rate_total']:.1f} img/s incl. start-up); "
              f"1 image in {wall_1:.1f} s; steady state {steady:.1f} img/s", file=sys.stderr)

    port = free_port()
    cmd = server_command(args, port)
    print(f"starting the server on {HOST}:{port} ...", file=sys.stderr)
    with open(OUT / "server.log", "w") as log:
        proc = start_server(cmd, log)
        try:
            res = asyncio.run(load(f"http://{HOST}:{port}", blobs, requests=args.requests,
                                   concurrency=args.concurrency, files=args.files, time_limit=args.time_limit,
                                   warmup=2 * args.concurrency))
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                rc = proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                rc = proc.wait()
    access = (OUT / "server.log").read_text().count('"path": "/v1/predict"')

    load_after = os.getloadavg()
    lat = res["latencies"]
    n5xx = sum(n for code, n in res["statuses"].items() if code >= 500)
    throughput = res["images_ok"] / res["wall"]
    agree = None
    if cli is not None:
        both = [k for k in res["labels"] if k in cli["labels"]]
        agree = (sum(res["labels"][k] == cli["labels"][k] for k in both), len(both))
    s = res["server_stats"]
    ok = n5xx == 0 and not res["transport_errors"] and res["sent"] == args.requests and rc == 0

    lines = [
        "## Serving (imclass serve)",
        "",
        f"{dt.date.today().isoformat()}, {platform.machine()} {os.cpu_count()} cores, Python "
        f"{platform.python_version()}; model `{args.model}`; client and server on the same machine "
        "(loopback), client = a separate process (httpx async). Load average before/after: "
        f"{load_before[0]:.1f} / {load_after[0]:.1f} (other jobs share the machine).",
        "",
        f"Command: `{command}`",
        f"Server (= `imclass serve`): `{shlex.join(['python', *cmd[1:]])}`",
        "",
        "| measure | value |",
        "|---|---|",
        f"| requests sent / planned | {res['sent']} / {args.requests} ({args.files} image(s) each, "
        f"concurrency {args.concurrency}, {len(images)} distinct photos round-robin) |",
        f"| status codes | {dict(sorted(res['statuses'].items()))} |",
        f"| 5xx / transport errors | {n5xx} / {sum(res['transport_errors'].values())} "
        f"{dict(res['transport_errors']) or ''} |",
        f"| latency p50 / p95 / p99 | {percentile(lat, .5):.0f} / {percentile(lat, .95):.0f} / "
        f"{percentile(lat, .99):.0f} ms (mean {statistics.fmean(lat) if lat else float('nan'):.0f}) |",
        f"| throughput | **{throughput:.1f} img/s** ({res['images_ok']} images in {res['wall']:.1f} s) |",
        f"| server batches | mean {s.get('mean_batch')} images, largest {s.get('largest_batch')} "
        f"(max-batch {args.max_batch}, max-wait {args.max_wait_ms} ms); {s.get('inference_threads', 1)} inference "
        f"thread(s), model calls {s.get('infer_seconds')} s in all (summed over the threads) |",
        f"| access-log lines for /v1/predict | {access} (warm-up included) |",
        f"| server exit after SIGTERM | {rc} |",
    ]
    if cli is not None:
        ratio = throughput / cli["rate_steady"] if cli["rate_steady"] == cli["rate_steady"] else float("nan")
        lines += [
            f"| `imclass predict` ({len(images)} images, same run) | {cli['wall_n']:.1f} s wall = "
            f"{cli['rate_total']:.1f} img/s incl. start-up; steady state {cli['rate_steady']:.1f} img/s "
            f"(1-image run {cli['wall_1']:.1f} s; min of {args.cli_repeat} runs each) |",
            f"| serve / predict throughput | **{ratio:.2f}x** of steady state, "
            f"{throughput / cli['rate_total']:.2f}x of the whole CLI run |",
            f"| top-1 agreement with `imclass predict` | {agree[0]}/{agree[1]} |",
        ]
    lines += ["", f"Result: {'PASS' if ok else 'FAIL'} (no 5xx, no transport errors, all requests sent, "
                  "clean exit).", ""]
    text = "\n".join(lines)
    print(text)
    if not args.no_record:
        target = BENCH / "RESULTS.md"
        if not target.exists():
            target = BENCH / "SERVE_RESULTS.md"
        with open(target, "a") as f:  # append only: other sections of the file belong to other benchmarks
            f.write(("\n" if target.exists() and target.stat().st_size else "") + text)
        print(f"appended to {target.relative_to(ROOT)}", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
