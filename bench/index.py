"""Benchmark the similarity index (imclass.Index): finding copies of real photos, scale, incremental updates.

    python bench/index.py                                  # all parts at full size (~15-25 min on 2 cores)
    python bench/index.py --n 300 --copies 10 --scale 50000 --base 5000 --new 50    # a quick look
    python bench/index.py --parts scale --scale 1000000 --record

Parts (``--parts``, default all):

- ``real``: ``--copies`` photos held out of ``../shared/datasets`` (``IMCLASS_DATASETS=DIR`` elsewhere) plus
  a copy of each (JPEG quality 40, half size, cropped to the central 90%, mirrored: all four at once), mixed
  into ``--n`` other photos (links in ``bench/out/index/real-*/library/``, gitignored; the photos are never
  copied into the repository). Built with ``imclass.Index.build`` (embeddings from the shared cache when
  there). Each copy is a query: is its original the top hit (its own path left out)? As searched by default
  (embedding neighbours plus verified copies from perceptual-hash candidates, listed first), by embedding
  alone, with ``verify`` (the audit's pair check re-ranking the top 10), the reverse (original -> copy), and
  ``imclass index duplicates`` on the library: copies grouped with their original.
- ``scale``: ``--scale`` synthetic vectors shaped like real ones: a 32-component Gaussian mixture fitted in
  a 128-d PCA of the real photos' embeddings (default model, 1280-d), plus the PCA residual's per-dimension
  noise, clipped at 0 like the real (ReLU) features: not well-separated clusters (its nearest neighbours are
  *less* distinct than real ones: the table shows both). Timed: ``add_vectors`` in chunks of 50,000 (float16
  vectors to disk, rows to SQLite) and ``save()`` (training the IVF lists on a sample, adding every vector);
  peak RSS of the process from there (VmHWM reset first). Then 200 single queries (latency p50/p95) and
  recall@10 against exact search (brute force over the stored vectors, streamed), and removing 1,000 ids.
  Exact (flat) single-query latency at a few sizes justifies ``FLAT_MAX``; a product-quantised index of a
  ``--pq-sample`` sample measures what a 10,000,000-vector index would use (projected on paper).
- ``incremental``: an index of ``--base`` synthetic vectors (as above), then ``Index.add`` of ``--new`` real
  photos re-encoded at JPEG quality 90 with a per-run JPEG comment (new files: really embedded through the
  engine, not found in the cache); the comparisons are the faiss structure rebuilt from the stored vectors and
  re-embedding every image (projected at the measured embedding rate).

The table is markdown with the command; ``--record`` appends it to ``bench/RESULTS.md`` with a dated heading.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import hashlib
import json
import os
import platform
import random
import shlex
import shutil
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
OUT = ROOT / "bench" / "out" / "index"
RESULTS = ROOT / "bench" / "RESULTS.md"
DATASETS = Path(os.environ.get("IMCLASS_DATASETS", ROOT.parent / "shared" / "datasets"))
PARTS = ("real", "scale", "incremental")


# ---- helpers ------------------------------------------------------------------------------------------

def all_photos() -> list[Path]:
    if not DATASETS.is_dir():
        sys.exit(f"bench/index.py: real photos not found at {DATASETS} (set IMCLASS_DATASETS=DIR)")
    exts = {".jpg", ".jpeg", ".png"}
    return sorted(p for p in DATASETS.rglob("*") if p.suffix.lower() in exts and p.is_file())


def peak_rss_gb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1e6
    return float("nan")


def reset_peak_rss() -> None:
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def sha(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def real_embeddings(photos: list[Path]) -> np.ndarray:
    import imclass

    emb = imclass.embed([str(p) for p in photos], shas=[sha(p) for p in photos])
    return emb.vectors[emb.ok]


def neighbour_stats(x: np.ndarray) -> tuple[float, float, float]:
    """Mean cosine of the 1st and 10th nearest neighbour, and the median cosine of all pairs."""
    u = x / np.linalg.norm(x, axis=1, keepdims=True)
    s = u @ u.T
    np.fill_diagonal(s, -1)
    top = -np.sort(-s, axis=1)[:, :10]
    return float(top[:, 0].mean()), float(top[:, 9].mean()), float(np.median(s))


class Mixture:
    """Synthetic embeddings: a Gaussian mixture in a PCA of real ones, plus the residual noise, clipped at 0."""

    def __init__(self, real: np.ndarray, components: int = 32, dims: int = 128, seed: int = 0):
        from sklearn.decomposition import PCA
        from sklearn.mixture import GaussianMixture

        real = real.astype(np.float64)
        pca = PCA(dims, random_state=seed).fit(real)
        z = pca.transform(real)
        self.rstd = (real - pca.inverse_transform(z)).std(axis=0).astype(np.float32)
        gm = GaussianMixture(components, covariance_type="full", random_state=seed, reg_covar=1e-3).fit(z)
        self.mean, self.comp = pca.mean_.astype(np.float32), pca.components_.astype(np.float32)
        self.w, self.mu = gm.weights_, gm.means_.astype(np.float32)
        self.chol = np.linalg.cholesky(gm.covariances_).astype(np.float32)

    def sample(self, n: int, seed: int) -> np.ndarray:
        rng = np.random.default_rng(seed)
        c = rng.choice(len(self.w), size=n, p=self.w)
        z = np.empty((n, self.mu.shape[1]), np.float32)
        for k in range(len(self.w)):
            sel = np.flatnonzero(c == k)
            z[sel] = self.mu[k] + rng.standard_normal((len(sel), z.shape[1]), dtype=np.float32) @ self.chol[k].T
        x = z @ self.comp + self.mean + rng.standard_normal((n, len(self.mean)), dtype=np.float32) * self.rstd
        return np.maximum(x, 0)


def exact_top(index, queries: np.ndarray, k: int = 10) -> list[set[int]]:
    """Exact top-k ids by brute force over the index's stored vectors (streamed from disk)."""
    q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    ids = index.store.ids()
    best_s = np.full((len(q), k), -np.inf, np.float32)
    best_i = np.full((len(q), k), -1, np.int64)
    for start in range(0, len(ids), 65536):
        chunk = ids[start:start + 65536]
        s = q @ index.store.read(chunk).T
        all_s = np.concatenate([best_s, s], axis=1)
        all_i = np.concatenate([best_i, np.broadcast_to(chunk, s.shape)], axis=1)
        top = np.argpartition(-all_s, k - 1, axis=1)[:, :k]
        best_s, best_i = np.take_along_axis(all_s, top, 1), np.take_along_axis(all_i, top, 1)
    return [set(map(int, row)) for row in best_i]


def single_query_ms(index, queries: np.ndarray, k: int = 10) -> tuple[np.ndarray, list[set[int]]]:
    import faiss

    faiss.omp_set_num_threads(1)  # one query: one thread (what a server handling requests in parallel does)
    lat, found = [], []
    index.search_vectors(queries[:1], k)  # warm
    for i in range(len(queries)):
        t = time.perf_counter()
        hits = index.search_vectors(queries[i:i + 1], k)[0]
        lat.append((time.perf_counter() - t) * 1000)
        found.append({h for h, _ in hits})
    faiss.omp_set_num_threads(os.cpu_count() or 1)
    return np.array(lat), found


# ---- part 1: copies of real photos ----------------------------------------------------------------------

def make_copy(src: Path, dest: Path) -> None:
    from PIL import Image

    with Image.open(src) as im:
        img = im.convert("RGB")
    w, h = img.size
    img = img.resize((max(1, w // 2), max(1, h // 2)), Image.Resampling.LANCZOS)
    w, h = img.size
    cw, ch = round(w * 0.9), round(h * 0.9)
    x, y = (w - cw) // 2, (h - ch) // 2
    img = img.crop((x, y, x + cw, y + ch)).transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    img.save(dest, "JPEG", quality=40)


def part_real(a: argparse.Namespace) -> dict:
    import imclass

    photos = all_photos()
    rng = random.Random(a.seed)
    chosen = rng.sample(photos, a.n + a.copies)
    originals, others = chosen[:a.copies], chosen[a.copies:]
    folder = OUT / f"real-n{a.n}-c{a.copies}-seed{a.seed}"
    lib = folder / "library"
    if folder.exists():
        shutil.rmtree(folder)
    (lib / "copies").mkdir(parents=True)
    pairs = {}
    for i, src in enumerate([*originals, *others]):
        link = lib / src.parent.name / f"{i:05d}_{src.name}"
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(src)
        if i < a.copies:
            copy = lib / "copies" / f"copy{i:03d}_{src.stem}.jpg"
            make_copy(src, copy)
            pairs[str(copy.absolute())] = str(link.absolute())
    t0 = time.perf_counter()
    idx = imclass.Index.build([lib], folder / "library.idx")
    build_s = time.perf_counter() - t0
    res = idx.last_build
    t0 = time.perf_counter()
    again = idx.add([lib])
    noop_s = time.perf_counter() - t0
    copies = list(pairs)
    t0 = time.perf_counter()
    matches = idx.search(copies, k=10)
    search_s = time.perf_counter() - t0
    top1 = sum(m.neighbours[0].path == pairs[m.query] for m in matches if m.neighbours)
    emb = idx.search(copies, k=10, copies=False)
    top1_emb = sum(m.neighbours[0].path == pairs[m.query] for m in emb if m.neighbours)
    in10_emb = sum(pairs[m.query] in [n.path for n in m.neighbours] for m in emb)
    in10 = sum(pairs[m.query] in [n.path for n in m.neighbours] for m in matches)
    ranks_scores = [next(n.score for n in m.neighbours if n.path == pairs[m.query]) for m in matches
                    if pairs[m.query] in [n.path for n in m.neighbours]]
    t0 = time.perf_counter()
    verified = idx.search(copies, k=10, verify=True)
    verify_s = time.perf_counter() - t0
    top1_v = sum(m.neighbours[0].path == pairs[m.query] and m.neighbours[0].match == "duplicate"
                 for m in verified if m.neighbours)
    back = idx.search([pairs[c] for c in copies], k=1)
    reverse = sum(m.neighbours and m.neighbours[0].path == c for m, c in zip(back, copies))
    t0 = time.perf_counter()
    dup = idx.duplicates(workers=2)
    dup_s = time.perf_counter() - t0
    grouped = sum(any(c in g["paths"] and o in g["paths"] for g in dup.duplicates) for c, o in pairs.items())
    grouped_any = sum(any(c in g["paths"] and o in g["paths"] for g in dup.near) for c, o in pairs.items())
    other_scores = [n.score for m in matches for n in m.neighbours[1:2]]
    return {"images": res.count, "copies": len(copies), "build_s": build_s, "embedded": res.embedded,
            "noop_s": noop_s, "noop_changes": again.added + again.updated + again.removed,
            "top1": top1, "in_top10": in10, "top1_embedding": top1_emb, "in_top10_embedding": in10_emb,
            "search_ms_per_query": search_s / len(copies) * 1000,
            "copy_score_min": min(ranks_scores) if ranks_scores else None,
            "second_best_median": float(np.median(other_scores)) if other_scores else None,
            "top1_verified": top1_v, "verify_ms_per_query": verify_s / len(copies) * 1000, "reverse": reverse,
            "dup_grouped": grouped, "dup_grouped_any": grouped_any, "dup_s": dup_s, "dup_stats": dup.stats,
            "dup_groups": [len(dup.duplicates), len(dup.possible), len(dup.exact)], "kind": idx.kind}


# ---- part 2: scale ---------------------------------------------------------------------------------------

def part_scale(a: argparse.Namespace, mix: Mixture) -> dict:
    import faiss

    from imclass.index import Index, kinds

    folder = OUT / f"scale-{a.scale}"
    if folder.exists():
        shutil.rmtree(folder)
    out: dict = {"n": a.scale, "queries": a.queries}
    reset_peak_rss()
    rss0 = peak_rss_gb()
    idx = Index.create(folder, kind="auto")
    gen_s = add_s = 0.0
    chunk = 25_000
    for start in range(0, a.scale, chunk):
        t = time.perf_counter()
        x = mix.sample(min(chunk, a.scale - start), seed=1000 + start)
        gen_s += time.perf_counter() - t
        t = time.perf_counter()
        idx.add_vectors([f"/synthetic/{i:08d}.jpg" for i in range(start, start + len(x))], x)
        add_s += time.perf_counter() - t
        del x
    t = time.perf_counter()
    idx.save()
    save_s = time.perf_counter() - t
    out.update(generate_s=gen_s, store_s=add_s, faiss_s=save_s, build_s=add_s + save_s, kind=idx.kind,
               faiss_parts=idx.manifest["index"].get("built_seconds"),
               settings=idx.manifest["index"], peak_rss_gb=peak_rss_gb(), rss_before_gb=rss0,
               faiss_bytes=(folder / "index.faiss").stat().st_size,
               vectors_bytes=(folder / "vectors.f16").stat().st_size,
               sqlite_bytes=sum(p.stat().st_size for p in folder.glob("files.sqlite3*")))
    t = time.perf_counter()
    idx = Index.load(folder)
    idx.search_vectors(mix.sample(1, 7), 10)
    out["load_s"] = time.perf_counter() - t
    q = mix.sample(a.queries, seed=999_999)
    lat, found = single_query_ms(idx, q)
    t = time.perf_counter()
    truth = exact_top(idx, q)
    out["exact_s"] = time.perf_counter() - t
    out.update(p50_ms=float(np.median(lat)), p95_ms=float(np.percentile(lat, 95)),
               recall=float(np.mean([len(f & t) / 10 for f, t in zip(found, truth)])))
    gone = np.array(sorted({i for t_ in truth[:100] for i in t_}))[:1000]
    paths = idx.store.paths_of(gone)
    t = time.perf_counter()
    removed = idx.remove(list(paths.values()))
    out["remove_s"] = time.perf_counter() - t
    _, after = single_query_ms(idx, q[:100])
    out.update(removed=removed, removed_returned=sum(len(f & set(map(int, gone))) for f in after))
    # exact search latency by size (FLAT_MAX)
    flat = {}
    sample = mix.sample(max(a.flat_sizes), seed=5)
    sample /= np.linalg.norm(sample, axis=1, keepdims=True)
    faiss.omp_set_num_threads(1)
    for n in a.flat_sizes:
        f = faiss.IndexFlatIP(sample.shape[1])
        f.add(sample[:n])
        times = []
        for i in range(30):
            t = time.perf_counter()
            f.search(q[i:i + 1] / np.linalg.norm(q[i]), 10)
            times.append((time.perf_counter() - t) * 1000)
        flat[n] = float(np.median(times))
    faiss.omp_set_num_threads(os.cpu_count() or 1)
    out["flat_ms"] = flat
    del sample
    # product-quantised codes on a sample: what 10,000,000 would use
    n = min(a.pq_sample, a.scale)
    pq_folder = OUT / f"scale-pq-{n}"
    if pq_folder.exists():
        shutil.rmtree(pq_folder)
    pq = Index.create(pq_folder, kind="ivf-pq")
    t = time.perf_counter()
    for start in range(0, n, chunk):
        pq.add_vectors([f"/synthetic/{i:08d}.jpg" for i in range(start, min(n, start + chunk))],
                       mix.sample(min(chunk, n - start), seed=1000 + start))
    t1 = time.perf_counter()
    pq.save()
    t2 = time.perf_counter()
    lat_pq, found_pq = single_query_ms(pq, q)
    truth_pq = exact_top(pq, q)
    out["pq"] = {"n": n, "store_s": t1 - t, "faiss_s": t2 - t1, "settings": pq.manifest["index"],
                 "parts": pq.manifest["index"].get("built_seconds"),
                 "faiss_bytes": (pq_folder / "index.faiss").stat().st_size,
                 "p50_ms": float(np.median(lat_pq)),
                 "recall": float(np.mean([len(f & t_) / 10 for f, t_ in zip(found_pq, truth_pq)]))}
    out["bytes_per_vector"] = {k: kinds.bytes_per_vector(k, 1280) for k in kinds.KINDS}
    if not a.keep:
        shutil.rmtree(folder)
        shutil.rmtree(pq_folder)
    return out


# ---- part 3: incremental ----------------------------------------------------------------------------------

def part_incremental(a: argparse.Namespace, mix: Mixture) -> dict:
    from PIL import Image

    from imclass.index import Index

    folder = OUT / f"incremental-{a.base}-{a.new}"
    if folder.exists():
        shutil.rmtree(folder)
    new = folder / "new"
    new.mkdir(parents=True)
    rng = random.Random(a.seed + 1)
    nonce = f"bench/index.py {time.time()}".encode()  # in a JPEG comment: new files for the cache on every run
    for i, src in enumerate(rng.sample(all_photos(), a.new)):
        with Image.open(src) as im:
            im.convert("RGB").save(new / f"n{i:05d}.jpg", "JPEG", quality=90, comment=nonce)
    idx = Index.create(folder / "idx")
    for start in range(0, a.base, 50_000):
        m = min(50_000, a.base - start)
        idx.add_vectors([f"/synthetic/{i:08d}.jpg" for i in range(start, start + m)], mix.sample(m, seed=start))
    t = time.perf_counter()
    idx.save()
    base_s = time.perf_counter() - t
    idx = Index.load(folder / "idx")
    t = time.perf_counter()
    res = idx.add([new])
    add_s = time.perf_counter() - t
    t = time.perf_counter()
    res2 = idx.add([new])
    again_s = time.perf_counter() - t
    t = time.perf_counter()
    idx._rebuild(idx.kind)  # the comparison: the faiss structure rebuilt from every stored vector
    rebuild_s = time.perf_counter() - t
    hit = idx.search([new / "n00000.jpg"], k=1, exclude_self=False)[0].neighbours
    return {"base": a.base, "new": a.new, "kind": idx.kind, "base_build_s": base_s, "add_s": add_s,
            "added": res.added, "embedded": res.embedded, "seconds": res.seconds, "again_s": again_s,
            "again_changes": res2.added + res2.updated + res2.removed, "rebuild_s": rebuild_s,
            "reembed_s": (a.base + a.new) * res.seconds.get("embed", 0) / max(res.embedded, 1),
            "found_itself": bool(hit) and hit[0].path == str((new / "n00000.jpg").absolute())}


# ---- report -----------------------------------------------------------------------------------------------

def fmt_s(x: float) -> str:
    return f"{x:.1f} s" if x >= 1 else f"{x * 1000:.0f} ms"


def report(r: dict, argv: list[str], load: tuple[float, float]) -> str:
    lines = [f"`{shlex.join(['python', 'bench/index.py', *argv])}`: {platform.machine()}, {os.cpu_count()} cores, "
             f"Python {platform.python_version()}, faiss {r.get('faiss')}; load average {load[0]:.1f} before, "
             f"{load[1]:.1f} after (other jobs share the machine).", ""]
    lines += ["| measure | result | target | met |", "|---|---|---|---|"]

    def row(what, result, target="", met=""):
        lines.append(f"| {what} | {result} | {target} | {met} |")

    if "real" in r:
        x = r["real"]
        c = x["copies"]
        row("real: index build (images; embedded now)", f"{x['images']} images, {fmt_s(x['build_s'])} "
            f"({x['embedded']} embedded, the rest from the cache); kind {x['kind']}")
        row("real: re-run with nothing changed", f"{fmt_s(x['noop_s'])}, {x['noop_changes']} changes")
        row("real: copy -> original is the top hit", f"{x['top1']}/{c} ({x['top1'] / c:.1%}); in the top 10: "
            f"{x['in_top10']}/{c}", ">= 98%", "yes" if x["top1"] >= 0.98 * c else "no")
        row("real: the same by embedding alone (`copies=False`: no hash candidates, no verification)",
            f"{x['top1_embedding']}/{c} ({x['top1_embedding'] / c:.1%}); in the top 10: {x['in_top10_embedding']}/{c}")
        row("real: score of copy vs original (lowest) / 2nd-best hit (median)",
            f"{x['copy_score_min']:.3f} / {x['second_best_median']:.3f}")
        row("real: with verify (pair check re-ranks the top 10): top hit is the original, a duplicate",
            f"{x['top1_verified']}/{c}; {x['verify_ms_per_query']:.0f} ms per query "
            f"(search alone {x['search_ms_per_query']:.1f} ms incl. embedding the copy)")
        row("real: original -> copy is the top hit", f"{x['reverse']}/{c}")
        s = x["dup_stats"]
        row("real: `index duplicates`: copies grouped with their original (duplicate / any)",
            f"{x['dup_grouped']}/{c} / {x['dup_grouped_any']}/{c}; groups dup/possible/identical "
            f"{'/'.join(map(str, x['dup_groups']))}; {s.get('candidates')} candidates, {s.get('verified')} verified, "
            f"{fmt_s(x['dup_s'])}")
    if "synthetic_vs_real" in r:
        syn, real = r["synthetic_vs_real"]
        row("synthetic vs real vectors (5,000 each): mean cosine of 1st / 10th neighbour, median of all pairs",
            f"synthetic {syn[0]:.3f} / {syn[1]:.3f} / {syn[2]:.3f}; real {real[0]:.3f} / {real[1]:.3f} / "
            f"{real[2]:.3f}")
    if "scale" in r:
        x = r["scale"]
        st = x["settings"]
        parts = x.get("faiss_parts") or {}
        row(f"scale: {x['n']:,} vectors (1280-d) indexed: store + faiss",
            f"{fmt_s(x['build_s'])} = {fmt_s(x['store_s'])} (float16 to disk, rows to SQLite) + "
            f"{fmt_s(x['faiss_s'])} ({st.get('factory', x['kind'])}: train {fmt_s(parts.get('train', 0))} + add "
            f"{fmt_s(parts.get('add', 0))}, write); vectors generated apart ({fmt_s(x['generate_s'])})", "<= 10 min",
            "yes" if x["build_s"] <= 600 else "no")
        row("scale: peak RSS of the process (a fresh one: only this part)", f"{x['peak_rss_gb']:.2f} GB (after "
            f"fitting the mixture: {x['rss_before_gb']:.2f} GB); faiss file {x['faiss_bytes'] / 1e9:.2f} GB, "
            f"vectors on disk {x['vectors_bytes'] / 1e9:.2f} GB, SQLite {x['sqlite_bytes'] / 1e6:.0f} MB", "<= 4 GB",
            "yes" if x["peak_rss_gb"] <= 4 else "no")
        row("scale: one query (k=10, 1 thread, re-ranked exactly)", f"p50 {x['p50_ms']:.2f} ms, p95 "
            f"{x['p95_ms']:.2f} ms (nprobe {st.get('nprobe')} of {st.get('nlist')} lists, {st.get('rerank')} "
            f"re-ranked); open + first query {fmt_s(x['load_s'])}", "<= 10 ms", "yes" if x["p50_ms"] <= 10 else "no")
        row("scale: recall@10 against exact search", f"{x['recall']:.3f} ({x['queries']} queries)", ">= 0.95",
            "yes" if x["recall"] >= 0.95 else "no")
        row("scale: removal", f"{x['removed']} removed in {fmt_s(x['remove_s'])}; returned afterwards: "
            f"{x['removed_returned']}", "works", "yes" if x["removed_returned"] == 0 and x["removed"] else "no")
        row("exact (flat) single query by size",
            ", ".join(f"{int(n):,}: {ms:.1f} ms" for n, ms in x["flat_ms"].items()))
        pq = x["pq"]
        bpv = x["bytes_per_vector"]
        pp = pq.get("parts") or {}
        row(f"ivf-pq on a {pq['n']:,} sample ({pq['settings'].get('factory')}, {pq['settings'].get('rerank')} "
            "re-ranked)", f"faiss {fmt_s(pq['faiss_s'])} (train {fmt_s(pp.get('train', 0))} + add "
            f"{fmt_s(pp.get('add', 0))}), {pq['faiss_bytes'] / pq['n']:.0f} B/vector in the file, "
            f"p50 {pq['p50_ms']:.2f} ms, recall@10 {pq['recall']:.3f}")
        row("bytes per vector in RAM (codes + id): flat / ivf-sq8 / ivf-pq; on disk",
            f"{bpv['flat']} / {bpv['ivf-sq8']} / {bpv['ivf-pq']}; 2,560 (float16) + ~{x['sqlite_bytes'] / x['n']:.0f} "
            "(SQLite)")
    if "incremental" in r:
        x = r["incremental"]
        sec = x["seconds"]
        row(f"incremental: {x['new']:,} new real photos into a {x['base']:,}-vector index ({x['kind']})",
            f"{fmt_s(x['add_s'])} in all: scan {fmt_s(sec.get('scan', 0))}, hash {fmt_s(sec.get('hash', 0))}, "
            f"embed {fmt_s(sec.get('embed', 0))} ({x['embedded']} computed), index {fmt_s(sec.get('index', 0))}",
            "seconds, not a rebuild")
        row("incremental: instead, the faiss structure rebuilt (train + add all) / re-embedding every image "
            "(projected at this run's embedding rate)",
            f"{fmt_s(x['rebuild_s'])} ({x['rebuild_s'] / max(sec.get('index', 0), 1e-3):.0f}x the update's index "
            f"step) / {x['reembed_s'] / 60:.0f} min ({x['reembed_s'] / max(x['add_s'], 1e-3):.0f}x the whole update)",
            "", "yes" if x["found_itself"] else "no")
        row("incremental: the same add again", f"{fmt_s(x['again_s'])}, {x['again_changes']} changes")
    return "\n".join(lines)


def parse_args(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--parts", default=",".join(PARTS))
    ap.add_argument("--n", type=int, default=4000, help="other photos in the real library (default 4000)")
    ap.add_argument("--copies", type=int, default=50, help="held-out photos copied (default 50)")
    ap.add_argument("--scale", type=int, default=1_000_000, help="synthetic vectors (default 1,000,000)")
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--pq-sample", type=int, default=200_000, help="vectors in the ivf-pq sample (default 200,000)")
    ap.add_argument("--flat-sizes", default="5000,20000,50000,100000")
    ap.add_argument("--base", type=int, default=100_000, help="synthetic vectors before the update (100,000)")
    ap.add_argument("--new", type=int, default=1000, help="real photos added (default 1,000)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--keep", action="store_true", help="keep the scale indexes (GBs) in bench/out/index")
    ap.add_argument("--record", action="store_true", help="append the table to bench/RESULTS.md")
    ap.add_argument("--child", help=argparse.SUPPRESS)  # internal: run one part, write its JSON there
    a = ap.parse_args(argv)
    a.parts = [p for p in a.parts.split(",") if p]
    a.flat_sizes = [int(s) for s in a.flat_sizes.split(",") if s and int(s) <= max(a.scale, 1)]
    return a


def main(argv: list[str] | None = None) -> int:
    import faiss

    argv = sys.argv[1:] if argv is None else argv
    a = parse_args(argv)
    load0 = os.getloadavg()[0]
    OUT.mkdir(parents=True, exist_ok=True)
    r: dict = {"faiss": faiss.__version__}
    t0 = time.perf_counter()
    if "real" in a.parts:
        r["real"] = part_real(a)
        print(json.dumps(r["real"], default=str), flush=True)
    mix = None
    if "scale" in a.parts or "incremental" in a.parts:
        real = real_embeddings(all_photos())
        mix = Mixture(real)
        rs = np.random.default_rng(0).choice(len(real), min(len(real), 5000), replace=False)
        r["synthetic_vs_real"] = (neighbour_stats(mix.sample(len(rs), seed=42)), neighbour_stats(real[rs]))
        del real
    if "scale" in a.parts and a.child:
        r["scale"] = part_scale(a, mix)
    elif "scale" in a.parts:  # in a fresh process, so that its peak memory is the index's, not the real part's
        import subprocess

        child = OUT / "scale-child.json"
        args = [sys.executable, __file__, "--parts", "scale", "--child", str(child), "--scale", str(a.scale),
                "--queries", str(a.queries), "--pq-sample", str(a.pq_sample),
                "--flat-sizes", ",".join(map(str, a.flat_sizes)), "--seed", str(a.seed),
                *(["--keep"] if a.keep else [])]
        subprocess.run(args, check=True)
        r["scale"] = json.loads(child.read_text())["scale"]
        print(json.dumps(r["scale"], default=str), flush=True)
    if "incremental" in a.parts:
        r["incremental"] = part_incremental(a, mix)
        print(json.dumps(r["incremental"], default=str), flush=True)
    r["seconds"] = time.perf_counter() - t0
    if a.child:
        Path(a.child).write_text(json.dumps(r, default=str))
        return 0
    (OUT / "summary.json").write_text(json.dumps(r, indent=1, default=str))
    text = report(r, argv, (load0, os.getloadavg()[0]))
    print()
    print(text)
    if a.record:
        now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
        with RESULTS.open("a", encoding="utf-8") as f:
            f.write(f"\n## {now}: Similarity index (bench/index.py)\n\n{text}\n")
        print(f"\nrecorded in {RESULTS.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
