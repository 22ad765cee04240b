"""Benchmark the studio as a whole system: a studio started as a subprocess, driven over HTTP.

    python bench/studio.py                                   # the issue's sizes (a few minutes)
    python bench/studio.py --import-n 300 --grid-n 2000 --suggest-n 100     # quick look
    python bench/studio.py --record                          # append the table to bench/RESULTS.md

Each measure starts ``python -m imclass studio --data-dir D --port 0`` (default settings: the worker runs in
its own process) with a fresh data folder under ``bench/out/studio/`` (gitignored), reads the URL it prints,
and talks to it with httpx like the pages do:

1. **import**: ``--import-n`` real photos (``../shared/datasets``: flowers5, then the ImageNet 10-class set;
   ``IMCLASS_DATASETS=DIR`` elsewhere) linked into a folder of class folders; ``POST /imports`` with the
   folder's path (JSON), then ``GET /imports/{id}`` every 50 ms until it is done: every file listed, hashed,
   decoded by the safe loader and committed. Target <= 60 s for 5,000. The worker embeds the new images
   meanwhile (that is what a studio does), so the import shares the cores with it.
2. **grid**: a project of ``--grid-n`` images registered straight in the database before the studio starts
   (rows pointing at the 5,000 real photos of measure 1 in turn, each row with its own content hash, so no
   two rows share a thumbnail: every thumbnail is cold). Per page: ``GET /images?limit=200&offset=O`` and then
   the 200 ``GET .../thumb?size=128`` with 6 concurrent keep-alive connections, as a browser fetches a grid;
   time from the list call to the last thumbnail. Pages at the start, middle and end; then the first page
   again (warm thumbnails). Target <= 1 s. Measured once the worker is embedding the project in the
   background (the state of a project just imported). ``--grid-side N`` re-encodes 1,000 of the photos first
   so that their longest side is N px (the originals are 128-224 px; camera photos cost more to decode).
3. **suggest**: a cold embedding cache (``IMCLASS_CACHE_DIR`` a new empty folder for the studio and its
   worker: the backbone's ONNX export is redone too); a project with ``--labels-per-class`` labelled flowers5
   photos per class (class folders), imported and waited for; then ``--suggest-n`` other flowers5 photos
   (one flat folder: unlabelled). Time from that import being done to every one of them carrying a
   suggestion of the probe (``GET /assist``: mode ``probe``, nothing pending; then checked image by image).
   Target <= 30 s for 1,000. Also shown: the accuracy of those suggestions (the truth is known).
4. **hotkeys**: the label view in a real browser (Playwright driving ``/usr/bin/chromium``) while the worker is
   busy: ``--hotkeys-photos`` real photos (flowers5 interleaved by class, then the ImageNet set) imported flat
   (unlabelled) with a cold embedding cache, so the worker embeds them all through the measurement; 3 labels
   per flower class through the API and the first probe waited for; then ``--hotkeys-n`` images labelled with
   digit keys (the right flower class), ``--hotkeys-pause`` seconds apart (a person's pace), with
   ``--retrain-every`` (default 5) on the studio's command line and a ``POST /assist/retrain`` every 20
   labels, so probes retrain (with their out-of-fold search) and suggestions are rewritten meanwhile. The
   round trip is what the page measures (``window.studioLabel.timings``: key press -> PUT saved -> next image
   shown, after its next frame). Target p95 <= 100 ms. What the worker did meanwhile (photos embedded, probes
   trained, from the studio's records; its heartbeat via ``GET /assist`` every 0.25 s) shows it was busy.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import datetime as dt
import hashlib
import json
import os
import platform
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out" / "studio"
RESULTS = ROOT / "bench" / "RESULTS.md"
DATASETS = Path(os.environ.get("IMCLASS_DATASETS", ROOT.parent / "shared" / "datasets"))
TARGETS = {"import": 60.0, "grid": 1.0, "suggest": 30.0, "hotkeys": 100.0}
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
URL = re.compile(r"imclass studio: (http://\S+)")


# ---- photos ------------------------------------------------------------------------------------------------

def source_photos() -> list[tuple[str, Path]]:
    """(class, file) of every flowers5 photo, then of the ImageNet 10-class photos; sorted, the same every run."""
    out = []
    for root in (DATASETS / "flowers5" / "all", DATASETS / "imagenet_10class_1k"):
        if not root.is_dir():
            sys.exit(f"bench/studio.py: {root} not found (set IMCLASS_DATASETS)")
        for d in sorted(p for p in root.iterdir() if p.is_dir()):
            out += [(d.name, f) for f in sorted(d.iterdir()) if f.suffix.lower() in (".jpg", ".jpeg", ".png")]
    return out


def link(src: Path, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dest)
    except OSError:
        shutil.copyfile(src, dest)


def build_import_set(n: int) -> Path:
    photos = source_photos()
    if n > len(photos):
        sys.exit(f"bench/studio.py: --import-n {n} > the {len(photos)} photos available")
    folder = OUT / f"import-{n}"
    if not (folder / ".complete").exists():
        shutil.rmtree(folder, ignore_errors=True)
        for cls, f in photos[:n]:
            link(f, folder / cls / f.name)
        (folder / ".complete").write_text("")
    return folder


def build_grid_photos(side: int) -> list[Path]:
    """The 5,000 photos of measure 1 (or as many as there are); re-encoded to ``side`` px when asked (the
    first 1,000 of them then: the rows still have their own content hash each)."""
    photos = [f for _, f in source_photos()[:5000]]
    if not side:
        return photos
    photos = photos[:1000]
    from PIL import Image

    folder = OUT / f"grid-photos-{side}"
    if not (folder / ".complete").exists():
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        for i, f in enumerate(photos):
            with Image.open(f) as img:
                img = img.convert("RGB")
                scale = side / max(img.size)
                img.resize((round(img.width * scale), round(img.height * scale)), Image.Resampling.BICUBIC).save(
                    folder / f"{i:05d}.jpg", quality=90)
        (folder / ".complete").write_text("")
    return [folder / f"{i:05d}.jpg" for i in range(len(photos))]


def build_suggest_set(per_class: int, n_new: int) -> tuple[Path, Path, dict[str, str]]:
    """Labelled flowers5 photos in class folders, and ``n_new`` other flowers5 photos in one flat folder
    (round robin over the classes); returns (labelled folder, new folder, new file name -> class)."""
    root = DATASETS / "flowers5" / "all"
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    files = {c: sorted((root / c).glob("*.jpg")) for c in classes}
    folder = OUT / f"suggest-{per_class}-{n_new}"
    labelled, new = folder / "labelled", folder / "new"
    truth: dict[str, str] = {}
    i = per_class
    while len(truth) < n_new:
        for c in classes:
            if len(truth) < n_new and i < len(files[c]):
                truth[f"{len(truth):05d}.jpg"] = c
                if not (folder / ".complete").exists():
                    link(files[c][i], new / f"{len(truth) - 1:05d}.jpg")
        i += 1
    if not (folder / ".complete").exists():
        for c in classes:
            for f in files[c][:per_class]:
                link(f, labelled / c / f.name)
        (folder / ".complete").write_text("")
    return labelled, new, truth


# ---- a studio in a subprocess --------------------------------------------------------------------------------

class Studio:
    """``python -m imclass studio --data-dir D --port 0``, its URL read from what it prints."""

    def __init__(self, data_dir: Path, env: dict[str, str] | None = None, args: list[str] | None = None):
        self.data_dir = data_dir
        self.log = data_dir.parent / f"{data_dir.name}.log"
        self.log_file = open(self.log, "wb")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen([sys.executable, "-m", "imclass", "studio", "--data-dir", str(data_dir),
                                      "--port", "0", "--log-level", "warning", *(args or [])], cwd=ROOT,
                                     stdout=self.log_file,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     env={**os.environ, **(env or {})})
        deadline = time.monotonic() + 180
        self.url = None
        while self.url is None:
            m = URL.search(self.log.read_text(errors="replace"))
            if m:
                self.url = m.group(1)
            elif self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                sys.exit(f"bench/studio.py: the studio did not start:\n{self.log.read_text(errors='replace')[-2000:]}")
            else:
                time.sleep(0.05)
        self.client = httpx.Client(base_url=self.url, timeout=120)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=90)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log_file.close()
        if (self.data_dir / "worker.pid").exists():
            print(f"warning: {self.data_dir}/worker.pid left behind", file=sys.stderr)

    def __enter__(self) -> Studio:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def project(self, name: str, classes: list[str] | None = None) -> int:
        r = self.client.post("/api/v1/projects", json={"name": name, "classes": classes or []})
        r.raise_for_status()
        return r.json()["id"]

    def import_path(self, pid: int, folder: Path) -> dict:
        r = self.client.post(f"/api/v1/projects/{pid}/imports", json={"path": str(folder)})
        r.raise_for_status()
        status = r.json()
        while status["status"] == "running":
            time.sleep(0.05)
            status = self.client.get(f"/api/v1/projects/{pid}/imports/{status['id']}").json()
        if status["status"] != "done":
            sys.exit(f"bench/studio.py: import {status['status']}: {status}")
        return status

    def assist(self, pid: int) -> dict:
        return self.client.get(f"/api/v1/projects/{pid}/assist").json()


def fresh(name: str) -> Path:
    d = OUT / name
    shutil.rmtree(d, ignore_errors=True)
    d.parent.mkdir(parents=True, exist_ok=True)
    return d


# ---- 1. import ---------------------------------------------------------------------------------------------

def measure_import(n: int) -> dict:
    folder = build_import_set(n)
    with Studio(fresh("data-import")) as s:
        pid = s.project("import")
        t0 = time.perf_counter()
        status = s.import_path(pid, folder)
        wall = time.perf_counter() - t0
        listed = s.client.get(f"/api/v1/projects/{pid}").json()
        embedded = listed["images"] - s.assist(pid)["pending"]["embed"]
    print(f"[import] {n} photos: {wall:.1f}s, added {status['added']}, duplicates {status['duplicates']}, "
          f"rejected {status.get('rejected_count', len(status['rejected']))}; {embedded} embedded meanwhile",
          flush=True)
    return {"n": n, "seconds": wall, "added": status["added"], "duplicates": status["duplicates"],
            "rejected": status.get("rejected_count", len(status["rejected"])), "listed": listed["images"],
            "embedded_meanwhile": embedded}


# ---- 2. grid -------------------------------------------------------------------------------------------------

def register_rows(data_dir: Path, n: int, photos: list[Path]) -> int:
    """A project of ``n`` images straight in the studio's database: rows pointing at ``photos`` in turn, each
    with its own content hash (so each has its own, cold, thumbnail)."""
    from PIL import Image

    from imclass.studio import projects
    from imclass.studio.db import Database

    db = Database(data_dir / "studio.sqlite3")
    db.migrate()
    pid = projects.create_project(db, "grid", "single_label", [])
    facts = []
    for f in photos:
        with Image.open(f) as img:
            facts.append((str(f.resolve()), img.width, img.height, f.stat().st_size,
                          hashlib.sha256(f.read_bytes()).hexdigest()))
    now = time.time()
    rows = []
    for i in range(n):
        path, w, h, size, sha = facts[i % len(facts)]
        fake = hashlib.sha256(f"{sha}:{i}".encode()).hexdigest()
        rows.append((pid, fake, f"{i:06d}-{Path(path).name}", path, 0, w, h, size, now))
    with db.tx() as con:
        con.executemany("INSERT INTO images (project_id, sha256, name, path, stored, width, height, bytes, added) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
    db.close()
    return pid


def fetch_page(s: Studio, pid: int, offset: int, clients: list[httpx.Client]) -> dict:
    t0 = time.perf_counter()
    r = s.client.get(f"/api/v1/projects/{pid}/images", params={"limit": 200, "offset": offset})
    r.raise_for_status()
    ids = [it["id"] for it in r.json()["items"]]
    t_list = time.perf_counter() - t0

    def thumb(k: int) -> int:
        c = clients[k % len(clients)]
        got = c.get(f"/api/v1/projects/{pid}/images/{ids[k]}/thumb", params={"size": 128})
        got.raise_for_status()
        return len(got.content)

    with cf.ThreadPoolExecutor(len(clients)) as pool:  # one connection per thread, 6 at a time
        sizes = list(pool.map(thumb, range(len(ids)), chunksize=1))
    total = time.perf_counter() - t0
    return {"offset": offset, "list_s": t_list, "thumbs_s": total - t_list, "total_s": total, "n": len(sizes)}


def measure_grid(n: int, side: int) -> dict:
    photos = build_grid_photos(side)
    data = fresh("data-grid")
    data.mkdir(parents=True)
    t0 = time.perf_counter()
    pid = register_rows(data, n, photos)
    print(f"[grid] {n} rows registered in {time.perf_counter() - t0:.1f}s", flush=True)
    with Studio(data) as s:
        deadline = time.monotonic() + 120  # measure once the worker is at work on the project
        while s.assist(pid)["pending"]["embed"] >= n and time.monotonic() < deadline:
            time.sleep(0.2)
        clients = [httpx.Client(base_url=s.url, timeout=60) for _ in range(6)]
        try:
            pages = []
            for offset in (0, n // 2 // 200 * 200, max(0, n - 200)):
                pages.append(fetch_page(s, pid, offset, clients))
            warm = fetch_page(s, pid, 0, clients)
        finally:
            for c in clients:
                c.close()
        embedded = n - s.assist(pid)["pending"]["embed"]
    for p in pages:
        print(f"[grid] offset {p['offset']}: list {p['list_s'] * 1000:.0f} ms + 200 cold thumbnails "
              f"{p['thumbs_s'] * 1000:.0f} ms = {p['total_s']:.2f}s", flush=True)
    print(f"[grid] first page again (warm thumbnails): {warm['total_s']:.2f}s; the worker had embedded {embedded}",
          flush=True)
    return {"n": n, "side": side, "pages": pages, "warm": warm, "embedded_meanwhile": embedded}


# ---- 3. suggestions ----------------------------------------------------------------------------------------

def measure_suggest(n: int, per_class: int) -> dict:
    labelled, new, truth = build_suggest_set(per_class, n)
    cache = Path(tempfile.mkdtemp(prefix="cold-cache-", dir=OUT))  # empty: embeddings and the ONNX export
    try:
        with Studio(fresh("data-suggest"), env={"IMCLASS_CACHE_DIR": str(cache)}) as s:
            pid = s.project("suggest")
            s.import_path(pid, labelled)
            t0 = time.perf_counter()
            added = s.import_path(pid, new)["added"]  # flowers5 holds a few exact duplicates
            t_import = time.perf_counter() - t0
            print(f"[suggest] import done at {dt.datetime.now():%H:%M:%S.%f}", flush=True)
            at_import = s.assist(pid)
            images = s.client.get(f"/api/v1/projects/{pid}").json()["images"]
            t1 = time.perf_counter()
            while True:
                st = s.assist(pid)
                if st["mode"] == "probe" and st["pending"] == {"embed": 0, "suggest": 0}:
                    break
                if time.perf_counter() - t1 > 600:
                    sys.exit(f"bench/studio.py: suggestions not done after 600 s: {st}")
                time.sleep(0.1)
            wait = time.perf_counter() - t1
            items = []
            for offset in range(0, images + 1000, 1000):
                page = s.client.get(f"/api/v1/projects/{pid}/images",
                                    params={"status": "unlabelled", "limit": 1000, "offset": offset}).json()
                items += page["items"]
                if len(page["items"]) < 1000:
                    break
            probe = st["probe"]
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    suggested = [it for it in items if it["suggestion"] and it["suggestion"]["source"] == "probe"]
    if len(items) != added or len(suggested) != added:
        sys.exit(f"bench/studio.py: {len(suggested)} of {len(items)} new images have a probe suggestion")
    right = sum(it["suggestion"]["label"] == truth[it["name"]] for it in items)
    out = {"n": n, "added": added, "per_class": per_class, "import_s": t_import, "wait_s": wait,
           "embedded_at_import": images - at_import["pending"]["embed"], "probe": probe,
           "accuracy": right / added}
    print(f"[suggest] import {t_import:.1f}s; then {wait:.1f}s until all {n} had a probe suggestion "
          f"(probe {probe['id']} on {probe['labels']} labels); accuracy {right / added:.3f}", flush=True)
    return out


# ---- 4. hotkeys ----------------------------------------------------------------------------------------------

def build_hotkeys_set(n: int) -> tuple[Path, list[str]]:
    """``n`` photos in one flat folder (unlabelled): flowers5 round robin over the classes (names
    ``NNNNN-<class>-<file>``: the truth is in the name), then the ImageNet set; returns (folder, flower classes)."""
    photos = source_photos()
    flowers = DATASETS / "flowers5" / "all"
    classes = sorted(p.name for p in flowers.iterdir() if p.is_dir())
    by_class = {c: [f for k, f in photos if k == c and f.parent.parent == flowers] for c in classes}
    ordered: list[tuple[str, Path]] = []
    for i in range(max(len(v) for v in by_class.values())):
        ordered += [(c, by_class[c][i]) for c in classes if i < len(by_class[c])]
    ordered += [(k, f) for k, f in photos if f.parent.parent != flowers]
    if n > len(ordered):
        sys.exit(f"bench/studio.py: --hotkeys-photos {n} > the {len(ordered)} photos available")
    folder = OUT / f"hotkeys-{n}"
    if not (folder / ".complete").exists():
        shutil.rmtree(folder, ignore_errors=True)
        for i, (c, f) in enumerate(ordered[:n]):
            link(f, folder / f"{i:05d}-{c}-{f.name}")
        (folder / ".complete").write_text("")
    return folder, classes


def measure_hotkeys(n_photos: int, n_labels: int, retrain_every: int, pause: float) -> dict:
    import threading

    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        sys.exit("bench/studio.py: the hotkeys measure needs playwright (pip install playwright)")
    if not CHROMIUM.exists():
        sys.exit(f"bench/studio.py: {CHROMIUM} is not installed")
    folder, classes = build_hotkeys_set(n_photos)
    cache = Path(tempfile.mkdtemp(prefix="cold-cache-", dir=OUT))  # the worker embeds every photo
    samples: list[dict] = []
    try:
        data = fresh("data-hotkeys")
        with Studio(data, env={"IMCLASS_CACHE_DIR": str(cache)},
                    args=["--retrain-every", str(retrain_every)]) as s:
            pid = s.project("hotkeys", classes)
            added = s.import_path(pid, folder)["added"]
            items = s.client.get(f"/api/v1/projects/{pid}/images", params={"limit": 1000}).json()["items"]
            seeds = []
            for c in classes:  # the first probe needs 3 labels per class
                seeds += [it for it in items if it["name"].split("-")[1] == c][:3]
            for it in seeds:
                s.client.put(f"/api/v1/projects/{pid}/images/{it['id']}/labels",
                             json={"labels": [it["name"].split("-")[1]]}).raise_for_status()
            t0 = time.perf_counter()
            while s.assist(pid)["mode"] != "probe":
                if time.perf_counter() - t0 > 300:
                    sys.exit(f"bench/studio.py: no probe after 300 s: {s.assist(pid)}")
                time.sleep(0.2)
            print(f"[hotkeys] {added} photos imported; first probe after {time.perf_counter() - t0:.1f}s",
                  flush=True)
            stop = threading.Event()

            def sample() -> None:
                with httpx.Client(base_url=s.url, timeout=30) as c:
                    while not stop.is_set():
                        a = c.get(f"/api/v1/projects/{pid}/assist").json()
                        samples.append({"t": time.perf_counter(), "doing": a["worker"]["doing"],
                                        "running": a["worker"]["running"], "embedded": a["worker"]["embedded"],
                                        "retrains": a["worker"]["retrains"], "pending": a["pending"]["embed"],
                                        "probe": (a["probe"] or {}).get("id")})
                        stop.wait(0.25)

            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
                page = browser.new_page(viewport={"width": 1280, "height": 800})
                page.set_default_timeout(30_000)
                page.goto(f"{s.url}/projects/{pid}/label?queue=unlabelled")
                page.wait_for_function("document.body.dataset.shown && window.studioLabel.ready")
                sampler = threading.Thread(target=sample, daemon=True)
                sampler.start()
                time.sleep(0.5)
                requested = 0
                wall_start, t_start = time.time(), time.perf_counter()
                for k in range(n_labels):
                    shown = page.evaluate("document.body.dataset.shown")
                    parts = page.inner_text("#photo-name").split("-")
                    cls = parts[1] if len(parts) > 2 and parts[1] in classes else classes[0]
                    page.keyboard.press(str(classes.index(cls) + 1))
                    page.wait_for_function("o => { const s = document.body.dataset.shown; return s && s !== o; }",
                                           arg=shown)
                    if k % 20 == 10:
                        s.client.post(f"/api/v1/projects/{pid}/assist/retrain").raise_for_status()
                        requested += 1
                    time.sleep(pause)
                wall_end, t_end = time.time(), time.perf_counter()
                timings = page.evaluate("window.studioLabel.timings")
                time.sleep(0.5)
                stop.set()
                sampler.join(10)
                browser.close()
            labelled = s.client.get(f"/api/v1/projects/{pid}").json()["labelled"]
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    from imclass.studio.db import Database

    db = Database(data / "studio.sqlite3")  # what the worker did meanwhile, from its records
    probes = db.all("SELECT created, labels, accuracy FROM probes WHERE project_id = ? AND created BETWEEN ? AND ?",
                    (pid, wall_start, wall_end))
    checks = int(db.scalar("SELECT COUNT(*) FROM jobs WHERE project_id = ? AND kind = 'audit' AND started BETWEEN "
                           "? AND ?", (pid, wall_start, wall_end)))
    db.close()
    totals = [t["total"] for t in timings]
    saves = [t["save"] for t in timings]
    during = [x for x in samples if t_start <= x["t"] <= t_end]
    if len(totals) != n_labels or labelled != n_labels + len(seeds) or not during:
        sys.exit(f"bench/studio.py: {len(totals)} timings, {labelled} labelled, {len(during)} samples")
    busy = sum(x["doing"] not in (None, "idle") for x in during) / len(during)
    doing = {k: sum(x["doing"] == k for x in during) for k in sorted({str(x["doing"]) for x in during})}
    out = {"photos": added, "labels": n_labels, "retrain_every": retrain_every, "retrain_requests": requested,
           "seconds": t_end - t_start, "p50_ms": pct(totals, 0.5), "p95_ms": pct(totals, 0.95),
           "max_ms": max(totals), "save_p50_ms": pct(saves, 0.5), "save_p95_ms": pct(saves, 0.95),
           "pause_s": pause, "embedded": during[0]["pending"] - during[-1]["pending"],
           "retrains": len(probes), "probe_labels": [int(r["labels"]) for r in probes], "checks": checks,
           "pending_embed": [during[0]["pending"], during[-1]["pending"]], "busy_share": busy, "doing": doing,
           "always_running": all(x["running"] for x in during)}
    print(f"[hotkeys] {n_labels} labels in {out['seconds']:.1f}s: round trip p50 {out['p50_ms']:.1f} ms, p95 "
          f"{out['p95_ms']:.1f} ms, max {out['max_ms']:.0f} ms (PUT saved p50 {out['save_p50_ms']:.1f}, p95 "
          f"{out['save_p95_ms']:.1f} ms)", flush=True)
    print(f"[hotkeys] worker meanwhile: embedded {out['embedded']} (not embedded {out['pending_embed'][0]} -> "
          f"{out['pending_embed'][1]}), {out['retrains']} retrains started (on {out['probe_labels']} labels), "
          f"{checks} data checks; heartbeat: busy in {busy:.0%} of {len(during)} samples {doing}", flush=True)
    return out


def pct(values: list[float], q: float) -> float:
    v = sorted(values)
    k = (len(v) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (k - lo)


# ---- table and record ----------------------------------------------------------------------------------------

def table(res: dict) -> str:
    rows = ["| measure | what | result | target | met |", "|---|---|---|---|---|"]
    if "import" in res:
        r = res["import"]
        rows.append(f"| import | {r['n']:,} real photos (class folders), POST JSON import to done: listed, hashed, "
                    f"validated, committed ({r['added']:,} added, {r['duplicates']} exact duplicates, "
                    f"{r['rejected']} rejected; the worker embedded {r['embedded_meanwhile']:,} meanwhile) | "
                    f"{r['seconds']:.1f} s | <= {TARGETS['import']:.0f} s (5,000) | "
                    f"{'yes' if r['seconds'] <= TARGETS['import'] else 'NO'} |")
    if "grid" in res:
        r = res["grid"]
        worst = max(p["total_s"] for p in r["pages"])
        detail = "; ".join(f"offset {p['offset']:,}: {p['list_s'] * 1000:.0f} + {p['thumbs_s'] * 1000:.0f} ms"
                           for p in r["pages"])
        photos = f"photos re-encoded to {r['side']} px" if r["side"] else "the photos as they are (128-224 px)"
        rows.append(f"| grid | project of {r['n']:,} images ({photos}); list call + 200 cold `thumb?size=128` "
                    f"over 6 connections, per page ({detail}; warm page {r['warm']['total_s'] * 1000:.0f} ms; the "
                    f"worker embedding meanwhile) | worst {worst:.2f} s, median "
                    f"{statistics.median(p['total_s'] for p in r['pages']):.2f} s | <= {TARGETS['grid']:.0f} s | "
                    f"{'yes' if worst <= TARGETS['grid'] else 'NO'} |")
    if "suggest" in res:
        r = res["suggest"]
        rows.append(f"| suggest | {r['n']:,} new photos ({r['added']:,} added, the rest exact duplicates), cold "
                    f"embedding cache, {r['per_class']} labels per class "
                    f"(5 classes): import done -> every one has a probe suggestion (import {r['import_s']:.1f} s, "
                    f"{r['embedded_at_import']:,} embedded by then; probe on {r['probe']['labels']} labels; "
                    f"suggestions {r['accuracy']:.1%} right) | {r['wait_s']:.1f} s | <= {TARGETS['suggest']:.0f} s "
                    f"(1,000) | {'yes' if r['wait_s'] <= TARGETS['suggest'] else 'NO'} |")
    if "hotkeys" in res:
        r = res["hotkeys"]
        rows.append(f"| hotkeys | label view in chromium (Playwright), {r['labels']} images labelled with digit keys "
                    f"while the worker embeds {r['photos']:,} new photos (cold cache) and retrains (`--retrain-every "
                    f"{r['retrain_every']}`, {r['retrain_requests']} `POST /assist/retrain`), one label every "
                    f"~{r['seconds'] / r['labels']:.2f} s ({r['pause_s']:.2f} s pause): key -> PUT saved -> next image "
                    f"shown (PUT saved p50 {r['save_p50_ms']:.0f} / p95 {r['save_p95_ms']:.0f} ms; max "
                    f"{r['max_ms']:.0f} ms). Worker meanwhile: {r['embedded']:,} photos embedded, {r['retrains']} "
                    f"retrains, {r['checks']} data checks; its heartbeat said busy in {r['busy_share']:.0%} of the "
                    f"0.25 s samples | p50 {r['p50_ms']:.0f} ms, p95 "
                    f"{r['p95_ms']:.0f} ms | p95 <= {TARGETS['hotkeys']:.0f} ms | "
                    f"{'yes' if r['p95_ms'] <= TARGETS['hotkeys'] else 'NO'} |")
    return "\n".join(rows)


def command_line(argv: list[str]) -> str:
    return shlex.join(["python", "bench/studio.py", *argv])


def report(res: dict, argv: list[str], load_before: float) -> str:
    settings = "default settings" + (f"; hotkeys: `--retrain-every {res['hotkeys']['retrain_every']}`"
                                     if "hotkeys" in res else "")
    notes = (f"`{command_line(argv)}`: {platform.machine()}, {os.cpu_count()} cores, load {load_before:.1f} "
             f"before, {os.getloadavg()[0]:.1f} at the end. Each measure starts `python -m imclass studio "
             f"--data-dir D --port 0` (worker process, {settings}) on a fresh data folder and drives it over "
             "HTTP from this process (client and studio share the cores).")
    if "grid" in res:
        notes += (" Grid rows are registered in the database before the studio starts, pointing at the real "
                  "photos in turn, each with its own content hash (every thumbnail is cold).")
    if "hotkeys" in res:
        notes += (" Hotkeys: chromium (headless, Playwright) on the same machine; the round trip is the page's "
                  "own measure (`window.studioLabel.timings`).")
    return f"{notes}\n\n{table(res)}"


def record(text: str) -> None:
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    with RESULTS.open("a", encoding="utf-8") as f:
        f.write(f"\n## {now}: Studio (bench/studio.py)\n\n{text}\n")
    print(f"\nrecorded in {RESULTS.relative_to(ROOT)}")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--measures", default="import,grid,suggest,hotkeys", help="comma-separated (default: all four)")
    ap.add_argument("--import-n", type=int, default=5000, help="photos imported (default 5,000)")
    ap.add_argument("--grid-n", type=int, default=50_000, help="images in the grid project (default 50,000)")
    ap.add_argument("--grid-side", type=int, default=0,
                    help="re-encode the grid's photos to this longest side first (default 0: as they are)")
    ap.add_argument("--suggest-n", type=int, default=1000, help="new photos to suggest for (default 1,000)")
    ap.add_argument("--labels-per-class", type=int, default=5, help="labelled photos per class (default 5)")
    ap.add_argument("--hotkeys-photos", type=int, default=5000,
                    help="photos the worker embeds during the hotkeys measure (default 5,000)")
    ap.add_argument("--hotkeys-n", type=int, default=100, help="images labelled with hotkeys (default 100)")
    ap.add_argument("--hotkeys-pause", type=float, default=0.5,
                    help="seconds between two labels in the hotkeys measure (default 0.5)")
    ap.add_argument("--retrain-every", type=int, default=5,
                    help="the studio's --retrain-every in the hotkeys measure (default 5)")
    ap.add_argument("--record", action="store_true", help="append the table to bench/RESULTS.md")
    a = ap.parse_args(argv)
    measures = [m.strip() for m in a.measures.split(",") if m.strip()]
    unknown = set(measures) - set(TARGETS)
    if unknown:
        ap.error(f"unknown measures {sorted(unknown)}; choose from {', '.join(TARGETS)}")
    load_before = os.getloadavg()[0]
    res: dict = {}
    if "import" in measures:
        res["import"] = measure_import(a.import_n)
    if "grid" in measures:
        res["grid"] = measure_grid(a.grid_n, a.grid_side)
    if "suggest" in measures:
        res["suggest"] = measure_suggest(a.suggest_n, a.labels_per_class)
    if "hotkeys" in measures:
        res["hotkeys"] = measure_hotkeys(a.hotkeys_photos, a.hotkeys_n, a.retrain_every, a.hotkeys_pause)
    text = report(res, argv, load_before)
    (OUT / "summary.json").write_text(json.dumps({"command": command_line(argv), "results": res}, indent=1))
    print()
    print(text)
    if a.record:
        record(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
