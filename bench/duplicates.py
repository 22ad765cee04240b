"""Benchmark the audit's near-duplicate decision: the same photo, not the same background.

    python bench/duplicates.py                       # all four sets at full size (~7,500 photos; minutes)
    python bench/duplicates.py --sets varied --n 1000 --copies 20
    python bench/duplicates.py --n 60 --copies 5 --fixed-n 40 --fixed-copies 4 --steel-n 60   # quick look

A near-duplicate must be *the same photo* (re-encoded, resized, cropped a little, mirrored), not the same
scene or the same kind of object. On real photos from ``../shared/datasets`` (``IMCLASS_DATASETS=DIR``
elsewhere) this script builds class-folder datasets with planted copies whose originals it knows:

- ``varied``: ``--n`` varied photos (ImageNet 10-class, flowers5, natural scenes, a few steel images; class =
  ``<set>-<label>``) plus a copy of each of ``--copies`` of them (the original stays in the set);
- ``pasted`` (fixed background): ``--fixed-n`` composites of one real scene with the centre of a different
  ImageNet photo pasted at nearly the same place, like a fixed traffic or production-line camera; class = the
  object's ImageNet class; plus ``--fixed-copies`` copies;
- ``steel-crops`` (fixed background): the four quadrants of ``--fixed-n / 4`` steel photos, each quadrant a
  photo of its own (same texture, different pixels: not copies); plus ``--fixed-copies`` copies;
- ``steel`` (fixed background): the NEU steel photos themselves (``train`` + ``val``, ``--steel-n``, 0 = all
  1,800), look-alike grey textures per class; plus ``--fixed-copies`` copies.

A copy is made with one or more of: JPEG re-encode at quality 40-60, a crop keeping 85-95% of each side
(centred or offset), half size, a horizontal mirror (half of the copies); the manifest records which.

Each set's folder ``bench/out/duplicates/<set>-<params>/`` (gitignored) holds ``data/`` (the dataset),
``manifest.json`` (every file's label and source; copy -> original and its transforms; groups of files with
identical decoded pixels) and, after the audit, ``results.json``. The audit runs in-process:
``imclass.audit(data, label_check=False, workers=2)`` (embeddings on, cached by content in the user cache).

Measured per set, from ``result.near_duplicates`` (a group without ``certainty`` counts as "duplicate"):

- copies grouped: share of planted copies that share a group with their original ("duplicate" groups; and
  "duplicate" or "possible" groups);
- non-copies flagged: share of the other photos (not a copy, not an original with a copy, not in a group of
  identical files or identical pixels) that are in any near-duplicate group;
- groups, the largest group, and pairs of photos with different labels put in one group;
- the audit's own time (``result.seconds["total"]``) and the wall time of the call.

Targets: varied: copies >= 95%, non-copies flagged <= 1%; fixed background: non-copies flagged <= 1%, copies
grouped reported (>= 50% wanted). Non-copies flagged in ``varied`` may include near-duplicates that the
source sets really hold: ``results.json`` lists the flagged groups to look at. ``--record`` appends the table
to ``bench/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import csv
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
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out" / "duplicates"
RESULTS = ROOT / "bench" / "RESULTS.md"
DATASETS = Path(os.environ.get("IMCLASS_DATASETS", ROOT.parent / "shared" / "datasets"))
SETS = ("varied", "pasted", "steel-crops", "steel")
FIXED = ("pasted", "steel-crops", "steel")
#: Share of the varied set taken from each source (capped by what the source has; the rest goes to flowers).
VARIED_SHARE = {"imagenet": 0.25, "flowers": 0.325, "scenes": 0.375, "steel": 0.05}
TARGETS = {"varied": "copies >= 95%, non-copies <= 1%", "fixed": "non-copies <= 1% (copies >= 50% wanted)"}

Photo = tuple[Path, str]  # (source file, class)


# ---- sources --------------------------------------------------------------------------------------------

def check_datasets() -> None:
    if not DATASETS.is_dir():
        sys.exit(f"bench/duplicates.py: real photos not found at {DATASETS}\n"
                 "  it needs ../shared/datasets (relative to the repository root) or IMCLASS_DATASETS=DIR")


def imagenet_photos() -> list[Photo]:
    root = DATASETS / "imagenet_10class_1k"
    return sorted((p, f"imagenet-{p.parent.name}") for p in root.glob("n*/*") if p.is_file())


def flowers_photos() -> list[Photo]:
    return sorted((p, f"flowers-{p.parent.name}") for p in (DATASETS / "flowers5" / "all").glob("*/*") if p.is_file())


def scenes_photos() -> list[Photo]:
    root = DATASETS / "natural_scenes_multilabel"
    with open(root / "labels_list.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    return sorted((root / "images" / r["filename"], f"scenes-{r['labels'].split()[0]}") for r in rows)


def steel_photos() -> list[Photo]:
    root = DATASETS / "neu_steel_defects"
    return sorted((p, f"steel-{p.parent.name}") for p in root.glob("*/*/*.jpg"))


SOURCES = {"imagenet": imagenet_photos, "flowers": flowers_photos, "scenes": scenes_photos, "steel": steel_photos}


# ---- copies ---------------------------------------------------------------------------------------------

def plan_copy(rng: random.Random, mirror: bool) -> list[dict]:
    """One copy's transforms, in the order they are applied: crop, half size, mirror, JPEG re-encode."""
    while True:
        ops = []
        if rng.random() < 0.5:
            ops.append({"op": "crop", "keep": round(rng.uniform(0.85, 0.95), 3),
                        "where": "centre" if rng.random() < 0.5 else "offset"})
        if rng.random() < 0.5:
            ops.append({"op": "half_size"})
        if mirror:
            ops.append({"op": "mirror"})
        if rng.random() < 0.5:
            ops.append({"op": "jpeg", "quality": rng.randint(40, 60)})
        if ops:
            return ops


def apply_copy(img, ops: list[dict], rng: random.Random):
    """``img`` transformed by ``ops`` (crop boxes are drawn from ``rng`` and written into the op)."""
    from PIL import Image

    for op in ops:
        w, h = img.size
        if op["op"] == "crop":
            cw, ch = round(w * op["keep"]), round(h * op["keep"])
            if op["where"] == "centre":
                x, y = (w - cw) // 2, (h - ch) // 2
            else:
                x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
            op["box"] = [x, y, x + cw, y + ch]
            img = img.crop(op["box"])
        elif op["op"] == "half_size":
            img = img.resize((max(1, w // 2), max(1, h // 2)), Image.Resampling.LANCZOS)
        elif op["op"] == "mirror":
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return img


def write_copy(src: Path, dest_dir: Path, name: str, rng: random.Random, mirror: bool) -> tuple[Path, list[dict]]:
    """A copy of ``src`` in ``dest_dir``: JPEG at the planned quality, or lossless PNG when not re-encoded."""
    from PIL import Image

    ops = plan_copy(rng, mirror)
    with Image.open(src) as im:
        img = apply_copy(im.convert("RGB"), ops, rng)
    jpeg = next((op for op in ops if op["op"] == "jpeg"), None)
    dest = dest_dir / (f"{name}.jpg" if jpeg else f"{name}.png")
    if jpeg:
        img.save(dest, "JPEG", quality=jpeg["quality"])
    else:
        img.save(dest, "PNG")
    return dest, ops


def plant_copies(data: Path, files: dict[str, dict], k: int, rng: random.Random) -> dict[str, dict]:
    """Copies of ``k`` of ``files`` (rel path -> info), each in its original's class folder: copy -> info."""
    if k > len(files):
        sys.exit(f"bench/duplicates.py: {k} copies asked for but the set has {len(files)} photos")
    originals = rng.sample(sorted(files), k)
    mirrors = [i % 2 == 1 for i in range(k)]
    rng.shuffle(mirrors)
    copies = {}
    for i, (orig, mirror) in enumerate(zip(originals, mirrors)):
        src = data / orig
        dest, ops = write_copy(src, src.parent, f"copy{i:03d}_{Path(orig).stem}", rng, mirror)
        rel = dest.relative_to(data).as_posix()
        files[rel] = {"label": files[orig]["label"], "source": f"copy of {orig}"}
        copies[rel] = {"original": orig, "transforms": ops}
    return copies


# ---- sets -----------------------------------------------------------------------------------------------

def varied_quotas(n: int) -> dict[str, int]:
    """Photos per source for a varied set of ``n`` (each capped by its source; what is missing goes to the
    sources with photos to spare, flowers first)."""
    have = {name: len(fn()) for name, fn in SOURCES.items()}
    if n > sum(have.values()):
        sys.exit(f"bench/duplicates.py: --n {n} is more than the {sum(have.values())} photos available")
    quota = {name: min(have[name], int(n * share)) for name, share in VARIED_SHARE.items()}
    for name in ("flowers", "steel", "imagenet", "scenes"):
        quota[name] += min(have[name] - quota[name], n - sum(quota.values()))
    return quota


def copy_source(src: Path, data: Path, cls: str, name: str) -> str:
    dest = data / cls / name
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dest)
    return dest.relative_to(data).as_posix()


def build_varied(data: Path, a: argparse.Namespace, rng: random.Random) -> dict:
    files = {}
    for source, k in varied_quotas(a.n).items():
        for src, cls in rng.sample(SOURCES[source](), k):
            rel = copy_source(src, data, cls, f"{source}_{src.name}")
            files[rel] = {"label": cls, "source": str(src)}
    return {"files": files, "copies": plant_copies(data, files, a.copies, rng)}


def build_pasted(data: Path, a: argparse.Namespace, rng: random.Random) -> dict:
    """One real scene as the background, the centre 40% of a different ImageNet photo pasted on it at nearly
    the same place (jitter of +-3% of the width), 35% of the background's width wide; JPEG quality 90."""
    from PIL import Image

    objects = imagenet_photos()
    if a.fixed_n > len(objects):
        sys.exit(f"bench/duplicates.py: --fixed-n {a.fixed_n} is more than the {len(objects)} ImageNet objects")
    bg_path = rng.choice([p for p, _ in scenes_photos()])
    with Image.open(bg_path) as im:
        bg = im.convert("RGB")
    bw, bh = bg.size
    files = {}
    for i, (src, cls) in enumerate(rng.sample(objects, a.fixed_n)):
        with Image.open(src) as im:
            w, h = im.size
            obj = im.convert("RGB").crop((round(w * 0.3), round(h * 0.3), round(w * 0.7), round(h * 0.7)))
        ow = round(bw * 0.35)
        obj = obj.resize((ow, max(1, round(obj.height * ow / obj.width))), Image.Resampling.LANCZOS)
        jitter = round(bw * 0.03)
        x = round(bw * 0.55 - ow / 2) + rng.randint(-jitter, jitter)
        y = round(bh * 0.6 - obj.height / 2) + rng.randint(-jitter, jitter)
        img = bg.copy()
        img.paste(obj, (x, y))
        dest = data / f"pasted-{cls.split('-', 1)[1]}" / f"{i:04d}_{src.stem}.jpg"
        dest.parent.mkdir(parents=True, exist_ok=True)
        img.save(dest, "JPEG", quality=90)
        files[dest.relative_to(data).as_posix()] = {"label": dest.parent.name, "source": str(src),
                                                    "pasted_at": [x, y, ow, obj.height]}
    return {"files": files, "background": str(bg_path),
            "copies": plant_copies(data, files, a.fixed_copies, rng)}


def build_steel_crops(data: Path, a: argparse.Namespace, rng: random.Random) -> dict:
    """The four quadrants of ``fixed_n // 4`` steel photos, each saved as its own lossless PNG."""
    from PIL import Image

    photos = steel_photos()
    k = max(1, a.fixed_n // 4)
    if k > len(photos):
        sys.exit(f"bench/duplicates.py: --fixed-n {a.fixed_n} needs more than the {len(photos)} steel photos")
    files = {}
    for src, cls in rng.sample(photos, k):
        with Image.open(src) as im:
            img = im.convert("RGB")
        w, h = img.size
        for q, (x, y) in enumerate(((0, 0), (w // 2, 0), (0, h // 2), (w // 2, h // 2))):
            dest = data / cls / f"{src.parent.parent.name}_{src.stem}_q{q}.png"
            dest.parent.mkdir(parents=True, exist_ok=True)
            img.crop((x, y, x + w // 2, y + h // 2)).save(dest, "PNG")
            files[dest.relative_to(data).as_posix()] = {"label": cls, "source": f"{src} quadrant {q}"}
    return {"files": files, "copies": plant_copies(data, files, a.fixed_copies, rng)}


def build_steel(data: Path, a: argparse.Namespace, rng: random.Random) -> dict:
    photos = steel_photos()
    if a.steel_n > len(photos):
        sys.exit(f"bench/duplicates.py: --steel-n {a.steel_n} is more than the {len(photos)} steel photos")
    files = {}
    for src, cls in (rng.sample(photos, a.steel_n) if a.steel_n else photos):
        rel = copy_source(src, data, cls, f"{src.parent.parent.name}_{src.name}")
        files[rel] = {"label": cls, "source": str(src)}
    return {"files": files, "copies": plant_copies(data, files, a.fixed_copies, rng)}


BUILDERS = {"varied": build_varied, "pasted": build_pasted, "steel-crops": build_steel_crops, "steel": build_steel}


def set_params(name: str, a: argparse.Namespace) -> dict:
    if name == "varied":
        return {"n": a.n, "copies": a.copies, "seed": a.seed}
    size = a.steel_n if name == "steel" else a.fixed_n
    return {"n": size, "copies": a.fixed_copies, "seed": a.seed}


def set_folder(name: str, a: argparse.Namespace) -> Path:
    p = set_params(name, a)
    return OUT / f"{name}-n{p['n'] or 'all'}-c{p['copies']}-seed{p['seed']}"


def identical_pixels(data: Path, files: dict[str, dict]) -> list[list[str]]:
    """Groups of files whose decoded pixels are identical (known exact duplicates, whatever their bytes)."""
    from PIL import Image

    by_hash: dict[str, list[str]] = {}
    for rel in sorted(files):
        with Image.open(data / rel) as im:
            img = im.convert("RGB")
        key = hashlib.sha1(f"{img.size}".encode() + img.tobytes()).hexdigest()
        by_hash.setdefault(key, []).append(rel)
    return [g for g in by_hash.values() if len(g) > 1]


def build_set(name: str, a: argparse.Namespace) -> Path:
    """Build (or reuse) one set's folder: ``data/`` and ``manifest.json``."""
    folder = set_folder(name, a)
    manifest = folder / "manifest.json"
    if manifest.exists() and not a.rebuild:
        return folder
    if folder.exists():
        shutil.rmtree(folder)
    data = folder / "data"
    data.mkdir(parents=True)
    t0 = time.perf_counter()
    built = BUILDERS[name](data, a, random.Random(f"{a.seed}:{name}"))
    built["identical"] = identical_pixels(data, built["files"])
    doc = {"set": name, "params": set_params(name, a), "datasets": str(DATASETS), **built}
    manifest.write_text(json.dumps(doc, indent=1))
    print(f"built {folder.relative_to(ROOT)}: {len(built['files'])} photos, {len(built['copies'])} copies, "
          f"{len(built['identical'])} groups of identical pixels ({time.perf_counter() - t0:.1f}s)", flush=True)
    return folder


# ---- audit and metrics ----------------------------------------------------------------------------------

def run_audit(data: Path) -> tuple[object, float]:
    sys.path.insert(0, str(ROOT / "src"))
    import imclass

    t0 = time.perf_counter()
    res = imclass.audit(str(data), label_check=False, workers=2)
    return res, time.perf_counter() - t0


def rel_path(p: str, data: Path) -> str:
    return Path(os.path.relpath(os.path.abspath(p), os.path.abspath(data))).as_posix()


def read_groups(res, data: Path) -> list[dict]:
    """The audit's near-duplicate groups (``near_duplicates`` and, listed apart, ``possible_duplicates``) as
    ``{"paths": set of rel paths, "certainty": str}``."""
    found = [*res.near_duplicates, *getattr(res, "possible_duplicates", [])]
    return [{"paths": {rel_path(p, data) for p in g["paths"]}, "certainty": g.get("certainty", "duplicate")}
            for g in found]


def copies_grouped(groups: list[dict], copies: dict[str, dict]) -> set[str]:
    """The copies that share one of ``groups`` with their original."""
    return {c for c, info in copies.items() if any(c in g["paths"] and info["original"] in g["paths"] for g in groups)}


def mixed_label_pairs(groups: list[dict], files: dict[str, dict]) -> int:
    """Pairs of photos with different labels that share a group."""
    total = 0
    for g in groups:
        counts = Counter(files[p]["label"] if p in files else p.split("/")[0] for p in g["paths"])
        n = sum(counts.values())
        total += n * (n - 1) // 2 - sum(c * (c - 1) // 2 for c in counts.values())
    return total


def shares_pixels(a: Path, b: Path) -> bool:
    """An independent check, for flagged pairs only: do two photos share pixels? The central half of one
    image (as is or mirrored, at a few relative scales) is searched for in the other by normalised
    correlation; >= 0.9 means the same pixels (a copy, a crop, an overlapping tile or frame)."""
    import cv2
    import numpy as np
    from PIL import Image

    def grey(p: Path) -> np.ndarray:
        im = Image.open(p).convert("L")
        im.thumbnail((160, 160))
        return np.asarray(im, dtype=np.float32)

    ga, gb = grey(a), grey(b)
    for x, y in ((ga, gb), (gb, ga)):
        h, w = x.shape
        for patch in (x[h // 4: h - h // 4, w // 4: w - w // 4], x[: h // 2, : w // 2], x[: h // 2, w // 2:],
                      x[h // 2:, : w // 2], x[h // 2:, w // 2:]):  # the centre and the four quadrants
            if _found(patch, y, w, cv2, np):
                return True
    return False


def _found(patch, y, w: int, cv2, np) -> bool:
    """Whether ``patch`` (of an image ``w`` wide) appears in ``y``, as is or mirrored, at 0.5-2x."""
    if patch.std() < 2:  # a flat patch matches anywhere: no evidence
        return False
    for mirrored in (False, True):
        t = np.ascontiguousarray(patch[:, ::-1] if mirrored else patch)
        for scale in (0.5, 0.67, 0.8, 0.9, 1.0, 1.1, 1.25, 1.5, 2.0):
            f = scale * y.shape[1] / w
            th, tw = round(t.shape[0] * f), round(t.shape[1] * f)
            if th < 8 or tw < 8 or th > y.shape[0] or tw > y.shape[1]:
                continue
            small = cv2.resize(t, (tw, th), interpolation=cv2.INTER_AREA)
            if float(cv2.matchTemplate(y, small, cv2.TM_CCOEFF_NORMED).max()) >= 0.9:
                return True
    return False


def score(res, wall: float, data: Path, m: dict) -> dict:
    """The metrics of one set from its audit result and manifest."""
    groups = read_groups(res, data)
    dup = [g for g in groups if g["certainty"] == "duplicate"]
    copies = m["copies"]
    known = {p for g in m["identical"] for p in g}
    known |= {rel_path(p, data) for g in res.exact_duplicates for p in g["paths"]}
    excluded = set(copies) | {c["original"] for c in copies.values()} | known
    others = set(m["files"]) - excluded
    flagged_dup = others & set().union(*(g["paths"] for g in dup))
    flagged_any = others & set().union(*(g["paths"] for g in groups))
    found = copies_grouped(dup, copies)
    # flagged photos that share no pixels with any other member of their group: the real false alarms
    false_dup, false_any = set(), set()
    for g in groups:
        for p in g["paths"] & others:
            if not any(shares_pixels(data / p, data / q) for q in g["paths"] if q != p):
                false_any.add(p)
                if g["certainty"] == "duplicate":
                    false_dup.add(p)
    return {
        "photos": len(m["files"]), "copies": len(copies), "non_copies": len(others), "known_identical": len(known),
        "copies_grouped_duplicate": len(found), "copies_grouped_any": len(copies_grouped(groups, copies)),
        "non_copies_flagged_duplicate": len(flagged_dup), "non_copies_flagged_any": len(flagged_any),
        "false_flags_duplicate": len(false_dup), "false_flags_any": len(false_any),
        "false_flags": sorted(false_any),
        "groups_duplicate": len(dup), "groups_possible": len(groups) - len(dup),
        "largest_group": max((len(g["paths"]) for g in groups), default=0),
        "mixed_label_pairs_duplicate": mixed_label_pairs(dup, m["files"]),
        "mixed_label_pairs_any": mixed_label_pairs(groups, m["files"]),
        "exact_duplicate_groups": len(res.exact_duplicates),
        "missed_copies": {c: copies[c] for c in sorted(set(copies) - found)},
        "flagged_groups": [{"certainty": g["certainty"], "paths": sorted(g["paths"]),
                            "non_copies": sorted(g["paths"] & others)} for g in groups if g["paths"] & others],
        "audit_seconds": res.seconds.get("total"), "audit_stages": res.seconds, "wall_seconds": round(wall, 2),
    }


def meets_target(name: str, s: dict) -> str:
    """"yes", or what misses the target ("no: copies", "no: non-copies")."""
    missed = []
    if name == "varied" and s["copies_grouped_duplicate"] < 0.95 * s["copies"]:
        missed.append("copies")
    if s["false_flags_any"] > 0.01 * s["non_copies"]:
        missed.append("non-copies")
    return "yes" if not missed else "no: " + ", ".join(missed)


def audit_set(name: str, folder: Path) -> dict:
    m = json.loads((folder / "manifest.json").read_text())
    print(f"[{name}] auditing {len(m['files'])} photos ...", flush=True)
    res, wall = run_audit(folder / "data")
    s = score(res, wall, folder / "data", m)
    s["audit_notes"], s["thresholds"] = res.notes, res.thresholds
    s["near_duplicates"] = res.near_duplicates
    s["possible_duplicates"] = getattr(res, "possible_duplicates", [])
    s["duplicate_search"] = getattr(res, "duplicate_search", {})
    (folder / "results.json").write_text(json.dumps({"set": name, "params": m["params"], **s}, indent=1))
    print(f"[{name}] {wall:.1f}s; {s['groups_duplicate']} duplicate + {s['groups_possible']} possible groups",
          flush=True)
    return s


# ---- table and record -----------------------------------------------------------------------------------

def pct(k: int, n: int) -> str:
    return f"{k}/{n} ({100 * k / n:.1f}%)" if n else "-"


def table(scores: dict[str, dict]) -> str:
    head = ("| set | photos | copies grouped: duplicate | duplicate or possible | non-copies flagged: duplicate "
            "| duplicate or possible | of them sharing no pixels (false): duplicate / any | known identical "
            "| groups (dup + possible) | largest | mixed-label pairs (dup / all) | audit s | wall s | target | met |")
    rows = [head, "|" + "---|" * 15]
    for name, s in scores.items():
        rows.append("| " + " | ".join([
            name, str(s["photos"]), pct(s["copies_grouped_duplicate"], s["copies"]),
            pct(s["copies_grouped_any"], s["copies"]), pct(s["non_copies_flagged_duplicate"], s["non_copies"]),
            pct(s["non_copies_flagged_any"], s["non_copies"]),
            f"{s['false_flags_duplicate']} / {s['false_flags_any']}", str(s["known_identical"]),
            f"{s['groups_duplicate']} + {s['groups_possible']}", str(s["largest_group"]),
            f"{s['mixed_label_pairs_duplicate']} / {s['mixed_label_pairs_any']}",
            f"{s['audit_seconds']}", f"{s['wall_seconds']:.1f}",
            TARGETS["varied" if name == "varied" else "fixed"], meets_target(name, s)]) + " |")
    return "\n".join(rows)


def command_line(argv: list[str]) -> str:
    return shlex.join(["python", "bench/duplicates.py", *argv])


def record(text: str) -> None:
    """Append a dated ``Near-duplicates (bench/duplicates.py)`` section to bench/RESULTS.md."""
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    with RESULTS.open("a", encoding="utf-8") as f:
        f.write(f"\n## {now}: Near-duplicates (bench/duplicates.py)\n\n{text}\n")
    print(f"\nrecorded in {RESULTS.relative_to(ROOT)}")


def report(scores: dict[str, dict], argv: list[str]) -> str:
    notes = (f"`{command_line(argv)}`: {platform.machine()}, {os.cpu_count()} cores, load "
             f"{os.getloadavg()[0]:.1f} at the end. Copies grouped: planted copies in one group with their "
             "original. Non-copies flagged: photos that are neither a copy nor an original with a copy nor in a "
             "group of identical files/pixels, yet in a near-duplicate group; \"sharing no pixels\": of those, "
             "the ones whose central half (as is or mirrored, at 0.5-2x) is found in no other member of their group by "
             "normalised correlation >= 0.9 (an independent check: the others are real near-duplicates of the "
             "source sets, such as overlapping tiles or re-saved copies). Mixed-label pairs: pairs of photos "
             "with different labels in one group. Groups without a certainty count as \"duplicate\". Wall s: the "
             "audit call (the first set's includes loading the model).")
    return f"{notes}\n\n{table(scores)}"


# ---- main -----------------------------------------------------------------------------------------------

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sets", default=",".join(SETS), help=f"comma-separated, of {', '.join(SETS)} (default all)")
    ap.add_argument("--n", type=int, default=4000, help="photos in the varied set, before copies (default 4000)")
    ap.add_argument("--copies", type=int, default=50, help="planted copies in the varied set (default 50)")
    ap.add_argument("--fixed-n", type=int, default=800,
                    help="photos in the pasted and steel-crops sets, before copies (default 800)")
    ap.add_argument("--steel-n", type=int, default=0, help="photos in the steel set, 0 = all 1,800 (default)")
    ap.add_argument("--fixed-copies", type=int, default=40,
                    help="planted copies in each fixed-background set (default 40)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rebuild", action="store_true", help="rebuild the sets even when already built")
    ap.add_argument("--no-audit", action="store_true", help="build the sets only")
    ap.add_argument("--record", action="store_true", help="append the table to bench/RESULTS.md")
    a = ap.parse_args(argv)
    a.sets = [s.strip() for s in a.sets.split(",") if s.strip()]
    unknown = [s for s in a.sets if s not in SETS]
    if unknown:
        ap.error(f"unknown set(s) {', '.join(unknown)}; choose from {', '.join(SETS)}")
    return a


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    a = parse_args(argv)
    check_datasets()
    folders = {name: build_set(name, a) for name in a.sets}
    if a.no_audit:
        return 0
    scores = {name: audit_set(name, folder) for name, folder in folders.items()}
    text = report(scores, argv)
    (OUT / "summary.json").write_text(json.dumps(
        {"command": command_line(argv), "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
         "sets": {k: {x: v for x, v in s.items()
                      if x not in ("near_duplicates", "possible_duplicates", "flagged_groups", "thresholds")}
                  for k, s in scores.items()}}, indent=1))
    print()
    print(text)
    if a.record:
        record(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
