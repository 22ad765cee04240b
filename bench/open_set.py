"""Open-set rejection, leave-one-class-out: does "unknown" catch a class the model never saw?

For each shared set and each class C: the other classes' images are split (stratified, seeded) into
train 60% / val 20% / test 20% and a probe is trained on them with ``imclass.train`` twice: the chosen
known-class score (``unknown_score="auto"``) and today's calibrated top probability
(``unknown_score="probability"``). Class C never takes part in training, choosing the score or the threshold.
The figures come from ``Classifier.predict`` rows (what ``imclass predict`` writes) on the known test images
and on every image of C:

- AUROC of ``known_score`` (auto) / the top probability (baseline), known test vs C;
- the share of C labelled ``unknown``; the share of known test images accepted (target 95%), and the
  accuracy on the accepted ones.

The two probes share their head and temperature (only the unknown score differs), so the baseline's rows are
the auto model's probabilities with the baseline's threshold; the script checks that on a sample.

    python bench/open_set.py [--sets flowers5,neu_steel_defects] [--coverage 0.95] [--backbone lite0+lite1] [--record]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATASETS = Path(os.environ.get("IMCLASS_DATASETS", ROOT.parent / "shared" / "datasets"))
SETS = {"flowers5": "all", "neu_steel_defects": "*"}
EXTS = {".jpg", ".jpeg", ".png", ".bmp"}


def class_images(name: str) -> dict[str, list[Path]]:
    root = DATASETS / name
    out: dict[str, list[Path]] = {}
    for split_dir in ([root / SETS[name]] if SETS[name] != "*" else sorted(p for p in root.iterdir() if p.is_dir())):
        for cdir in sorted(p for p in split_dir.iterdir() if p.is_dir()):
            out.setdefault(cdir.name, []).extend(sorted(p for p in cdir.iterdir() if p.suffix.lower() in EXTS))
    return out


def split_folder(images: dict[str, list[Path]], held: str, dest: Path, seed: int) -> dict[str, list[Path]]:
    """Symlinked ``dest/{train,val,test}/<class>/``; returns the test images per class."""
    rng = np.random.default_rng(seed)
    tests: dict[str, list[Path]] = {}
    for c, paths in images.items():
        if c == held:
            continue
        order = rng.permutation(len(paths))
        n_tr, n_va = int(0.6 * len(paths)), int(0.2 * len(paths))
        parts = {"train": order[:n_tr], "val": order[n_tr:n_tr + n_va], "test": order[n_tr + n_va:]}
        for split, idx in parts.items():
            d = dest / split / c
            d.mkdir(parents=True, exist_ok=True)
            for i in idx:
                link = d / f"{i:05d}{paths[i].suffix}"
                link.symlink_to(paths[i])
        tests[c] = [paths[i] for i in parts["test"]]
    return tests


def auroc(known: np.ndarray, unseen: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(np.r_[np.ones(len(known)), np.zeros(len(unseen))], np.r_[known, unseen]))


def run_set(name: str, coverage: float, seed: int, backbone: str = "default") -> list[dict]:
    import imclass

    images = class_images(name)
    rows = []
    for held in images:
        with tempfile.TemporaryDirectory(prefix="imclass-openset-") as tmp:
            tests = split_folder(images, held, Path(tmp) / "data", seed)
            t0 = time.perf_counter()
            auto, res = imclass.train(Path(tmp) / "data", mode="probe", unknown_coverage=coverage, seed=seed,
                                      backbone=backbone)
            t_auto = time.perf_counter() - t0
            base, _ = imclass.train(Path(tmp) / "data", mode="probe", unknown_coverage=coverage, seed=seed,
                                    unknown_score="probability", backbone=backbone)
            known_paths = [p for c in tests for p in tests[c]]
            truth = [c for c in tests for _ in tests[c]]
            unseen_paths = images[held]
            pk = auto.predict(known_paths)
            pu = auto.predict(unseen_paths)
            sample = known_paths[:: max(1, len(known_paths) // 10)][:10]
            check = base.predict(sample)
            mine = {p.path: p.score for p in pk}
            assert all(abs(mine[c.path] - c.score) < 1e-5 for c in check), "auto and baseline heads differ"
            row = {"set": name, "held": held, "known_test": len(pk), "unseen": len(pu),
                   "score": res.metrics["unknown"].get("score"), "train_s": round(t_auto, 1)}
            for tag, thr, key in (("auto", auto.spec.unknown_threshold, "known_score"),
                                  ("baseline", base.spec.unknown_threshold, None)):
                ks = np.array([p.extra[key] if key else p.score for p in pk if p.ok])
                us = np.array([p.extra[key] if key else p.score for p in pu if p.ok])
                acc_k = ks >= thr if thr is not None else np.ones(len(ks), bool)
                correct = np.array([p.topk[0][0] == t for p, t in zip(pk, truth) if p.ok])
                row[f"{tag}_auroc"] = auroc(ks, us)
                row[f"{tag}_rejected"] = float((us < thr).mean()) if thr is not None else 0.0
                row[f"{tag}_coverage"] = float(acc_k.mean())
                row[f"{tag}_acc_accepted"] = float(correct[acc_k].mean()) if acc_k.any() else float("nan")
            # the auto rows' labels must say the same as the threshold test above
            said = np.mean([p.label == "unknown" for p in pu if p.ok])
            assert abs(said - row["auto_rejected"]) < 1e-9
            rows.append(row)
            print(f"{name:18s} {held:16s} auto AUROC {row['auto_auroc']:.3f} rej {row['auto_rejected']:.3f} "
                  f"cov {row['auto_coverage']:.3f} | baseline AUROC {row['baseline_auroc']:.3f} "
                  f"rej {row['baseline_rejected']:.3f} cov {row['baseline_coverage']:.3f} | {row['score']}",
                  flush=True)
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| set | held-out class | score chosen | AUROC | unseen rejected | known accepted | accuracy accepted "
             "| baseline AUROC | baseline rejected | baseline accepted |", "|" + "---|" * 10]
    for r in rows:
        lines.append(f"| {r['set']} | {r['held']} | {r['score']} | {r['auto_auroc']:.3f} | {r['auto_rejected']:.1%} "
                     f"| {r['auto_coverage']:.1%} | {r['auto_acc_accepted']:.1%} | {r['baseline_auroc']:.3f} "
                     f"| {r['baseline_rejected']:.1%} | {r['baseline_coverage']:.1%} |")
    for name in dict.fromkeys(r["set"] for r in rows):
        sub = [r for r in rows if r["set"] == name]
        m = {k: float(np.mean([r[k] for r in sub])) for k in sub[0] if k.startswith(("auto_", "baseline_"))}
        cov = np.array([r["auto_coverage"] for r in sub])
        lines.append(f"| **{name} mean** | | | **{m['auto_auroc']:.3f}** | **{m['auto_rejected']:.1%}** | "
                     f"**{m['auto_coverage']:.1%}** (min {cov.min():.1%}, max {cov.max():.1%}) | "
                     f"{m['auto_acc_accepted']:.1%} | {m['baseline_auroc']:.3f} | {m['baseline_rejected']:.1%} | "
                     f"{m['baseline_coverage']:.1%} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sets", default="flowers5,neu_steel_defects")
    ap.add_argument("--coverage", type=float, default=0.95)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--backbone", default="default", help="the probes' backbone (e.g. lite1, lite0+lite1)")
    ap.add_argument("--record", action="store_true", help="append the table to bench/RESULTS.md")
    args = ap.parse_args(argv)
    if not DATASETS.is_dir():
        print(f"skipped: no shared datasets at {DATASETS}")
        return 0
    t0 = time.perf_counter()
    rows = []
    for name in args.sets.split(","):
        if not (DATASETS / name).is_dir():
            print(f"skipped {name}: not in {DATASETS}")
            continue
        rows += run_set(name, args.coverage, args.seed, args.backbone)
    text = table(rows)
    print(text)
    if args.record and rows:
        load = os.getloadavg()[0]
        stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
        with open(ROOT / "bench" / "RESULTS.md", "a", encoding="utf-8") as f:
            f.write(f"\n## {stamp}: Open-set rejection, leave one class out (bench/open_set.py)\n\n"
                    f"`python bench/open_set.py --sets {args.sets} --backbone {args.backbone} --record` "
                    f"({time.perf_counter() - t0:.0f} s, load {load:.1f}): "
                    f"probes trained on the other classes (60/20/20 stratified, seed {args.seed}), target "
                    f"coverage {args.coverage:.0%}; figures from predict rows on the known test images and every "
                    f"image of the held-out class. Baseline: today's calibrated top probability.\n\n{text}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
