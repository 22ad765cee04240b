"""Benchmark ``imclass.download``: N downloads from a local HTTP server (loopback, its own process).

    python bench/download.py                      # 2,000 photos (real ones from ../shared/datasets when present)
    python bench/download.py --n 200              # a quick look
    python bench/download.py --record             # append the table to bench/RESULTS.md

The server (``http.server.ThreadingHTTPServer``, HTTP/1.1 keep-alive, in a child process so that it does not
share the client's interpreter lock) serves ``/<i>.jpg``: real photos from ``../shared/datasets``
(``imagenet_10class_1k``, ``natural_scenes_multilabel``, ``flowers5``; ``IMCLASS_DATASETS=DIR`` elsewhere), else
the four of ``samples/``, each made unique by a JPEG comment segment when the pool is smaller than N (same
pixels, different bytes: no duplicates).

Measured in the same run, same URLs, same concurrency:

- ``raw fetch``: the baseline, ``httpx`` GETs from a thread pool, bodies read and dropped (no checks, no files),
  run before and after the measured call (the mean is the baseline);
- ``imclass.download``: guarded transport, the per-host gate (``--per-host``, no politeness delay), every body
  decoded by the one image loader, content hash, atomic write, manifest row appended and flushed per file;
- ``rerun``: the same call again on the finished folder (nothing to fetch: reads the manifest, checks files).

Reported: files/s, MB/s, the ratio to the baseline, and the share of per-file time spent verifying (the loader's
full decode) out of fetch + verify + write, summed over the download threads. Files go to
``bench/out/download/`` (gitignored).
"""

from __future__ import annotations

import argparse
import datetime as dt
import multiprocessing as mp
import os
import platform
import shlex
import shutil
import struct
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out" / "download"
RESULTS = ROOT / "bench" / "RESULTS.md"
DATASETS = Path(os.environ.get("IMCLASS_DATASETS", ROOT.parent / "shared" / "datasets"))
POOLS = ("imagenet_10class_1k", "natural_scenes_multilabel", "flowers5")


def photo_pool(n: int) -> tuple[list[Path], str]:
    """Up to ``n`` real photos, and where they came from."""
    found: list[Path] = []
    used = []
    for name in POOLS:
        folder = DATASETS / name
        if not folder.is_dir() or len(found) >= n:
            continue
        files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg"))
        take = files[: n - len(found)]
        if take:
            found += take
            used.append(f"{name} ({len(take)})")
    if found:
        return found, ", ".join(used)
    samples = sorted((ROOT / "samples").glob("*.jpg"))
    return samples, f"samples/ ({len(samples)} photos, made unique per URL)"


def unique(data: bytes, i: int) -> bytes:
    note = f"bench {i}".encode()
    return data[:2] + b"\xff\xfe" + struct.pack(">H", len(note) + 2) + note + data[2:]


def serve(paths: list[str], n: int, port_queue) -> None:
    """The child process: serve ``/<i>.jpg`` for i < n until killed."""
    import http.server

    blobs = [Path(p).read_bytes() for p in paths]

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:
            pass

        def do_GET(self) -> None:
            try:
                i = int(self.path.strip("/").split(".")[0])
            except ValueError:
                i = -1
            if not 0 <= i < n:
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            data = blobs[i % len(blobs)]
            if len(blobs) < n:
                data = unique(data, i)
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    srv.daemon_threads = True
    srv.request_queue_size = 128
    port_queue.put(srv.server_port)
    srv.serve_forever()


def raw_fetch(urls: list[str], parallel: int) -> tuple[float, int]:
    """The baseline: plain httpx GETs from ``parallel`` threads; seconds and bytes."""
    from concurrent.futures import ThreadPoolExecutor

    import httpx

    limits = httpx.Limits(max_connections=parallel * 2, max_keepalive_connections=parallel * 2)
    with httpx.Client(limits=limits, trust_env=False, timeout=30) as client:
        def get(url: str) -> int:
            r = client.get(url)
            r.raise_for_status()
            return len(r.content)

        t = time.perf_counter()
        with ThreadPoolExecutor(parallel) as pool:
            total = sum(pool.map(get, urls))
        return time.perf_counter() - t, total


def command_line(argv: list[str]) -> str:
    return shlex.join(["python", "bench/download.py", *argv])


def record(text: str) -> None:
    """Append a dated ``Downloads (bench/download.py)`` section to bench/RESULTS.md."""
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    with RESULTS.open("a", encoding="utf-8") as f:
        f.write(f"\n## {now}: Downloads (bench/download.py)\n\n{text}\n")
    print(f"\nrecorded in {RESULTS.relative_to(ROOT)}")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=2000, help="downloads (default 2000)")
    ap.add_argument("--parallel", type=int, default=16, help="downloads at once (default 16, the CLI's default)")
    ap.add_argument("--per-host", type=int, default=16, help="at once to the one host (default 16)")
    ap.add_argument("--record", action="store_true", help="append the table to bench/RESULTS.md")
    a = ap.parse_args(argv)

    sys.path.insert(0, str(ROOT / "src"))
    import imclass

    pool, source = photo_pool(a.n)
    ctx = mp.get_context("spawn")
    ports = ctx.Queue()
    server = ctx.Process(target=serve, args=([str(p) for p in pool], a.n, ports), daemon=True)
    server.start()
    try:
        port = ports.get(timeout=60)
        urls = [f"http://127.0.0.1:{port}/{i}.jpg" for i in range(a.n)]
        warm = urls[: min(50, a.n)]  # warm up both sides (connections, imports, the server's threads)
        raw_fetch(warm, a.parallel)
        shutil.rmtree(OUT, ignore_errors=True)
        imclass.download(warm, OUT / "warm", parallel=a.parallel, per_host=a.per_host, delay=0)
        raw_before, raw_bytes = raw_fetch(urls, a.parallel)
        t = time.perf_counter()
        res = imclass.download(urls, OUT / "files", parallel=a.parallel, per_host=a.per_host, delay=0)
        dl_s = time.perf_counter() - t
        raw_after, _ = raw_fetch(urls, a.parallel)
        raw_s = (raw_before + raw_after) / 2  # the baseline on both sides of the measured run (a noisy machine)
        t = time.perf_counter()
        again = imclass.download(urls, OUT / "files", parallel=a.parallel, per_host=a.per_host, delay=0)
        rerun_s = time.perf_counter() - t
    finally:
        server.kill()
        server.join()
    c = res.counts
    assert c["files"] == a.n and c["failed"] == 0 and c["duplicates"] == 0, c
    assert again.counts["fetched"] == 0 and again.counts["new_files"] == 0, again.counts
    busy = sum(res.timings.values())
    share = res.timings["verify"] / busy if busy else 0.0
    mb = res.bytes / 1e6
    rows = [
        "| run | files | s | files/s | MB/s | vs raw fetch | verify share of per-file time | fetch / verify / write "
        "thread-s |",
        "|---|---|---|---|---|---|---|---|",
        f"| raw fetch (httpx, no checks, no files; mean of {raw_before:.2f} s before, {raw_after:.2f} s after) | "
        f"{a.n} | {raw_s:.2f} | {a.n / raw_s:.0f} | "
        f"{raw_bytes / 1e6 / raw_s:.1f} | 1.00x | - | - |",
        f"| imclass.download | {c['files']} | {dl_s:.2f} | {a.n / dl_s:.0f} | {mb / dl_s:.1f} | "
        f"{raw_s / dl_s:.2f}x | {100 * share:.0f}% | {res.timings['fetch']:.1f} / {res.timings['verify']:.1f} / "
        f"{res.timings['write']:.1f} |",
        f"| rerun (nothing new) | {again.counts['skipped']} skipped | {rerun_s:.2f} | {a.n / rerun_s:.0f} | - | - | - "
        "| - |",
    ]
    notes = (f"`{command_line(argv)}`: {platform.machine()}, {os.cpu_count()} cores, load "
             f"{os.getloadavg()[0]:.1f} at the end; {a.n} photos ({mb:.1f} MB, mean {res.bytes / a.n / 1e3:.0f} KB) "
             f"from {source}, served on loopback by a ThreadingHTTPServer in a child process; --parallel "
             f"{a.parallel}, --per-host {a.per_host}, no politeness delay. Verify share: the loader's full decode "
             "out of fetch + verify + write, summed over the download threads (they overlap; the server shares the "
             "2 cores).")
    text = notes + "\n\n" + "\n".join(rows)
    print(text)
    if a.record:
        record(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
