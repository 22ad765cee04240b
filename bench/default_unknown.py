"""Can the default ImageNet model honestly say "unknown" for photos that are none of its 1,000 classes?

The default model (``imclass.load("default")``, EfficientNet-Lite0, ONNX Runtime on CPU) is run on

- ``imagenet_10class_1k``: 1,000 real ImageNet validation photos of 10 classes (in distribution);
- ``neu_steel_defects``: steel surface textures, none of ImageNet's classes (out of distribution);
- ``natural_scenes_multilabel``: landscapes; *partly* ImageNet-like (alp, seashore, lakeside, valley, volcano
  are ImageNet classes), so rejecting them is not always right: reported, not a target;
- ``flowers5``: daisy is an ImageNet class, the others are not (sunflowers, roses, tulips, dandelions).

For each candidate score (higher = more familiar) computed from the logits: max softmax probability (``msp``),
max logit, energy (``logsumexp`` of the logits), negative entropy:

- AUROC, ImageNet photos vs each other set;
- the threshold accepting 95% of the ImageNet photos, and the share of each other set it rejects;
- cross-fitted coverage: the threshold set on 9 of the 10 ImageNet classes, coverage measured on the held-out
  one (mean, min, max over the 10 folds), with the rejection of each other set at those thresholds (mean, min):
  the 10 classes are 10 of 1,000 (the easy Imagenette ones), so a threshold calibrated on them may not hold for
  a class it never saw; the folds show how much coverage moves from class to class;
- top-1 accuracy (1,000-way) on all and on the accepted ImageNet photos;
- the shipped rule (``imclass.load("default", unknown=True)``, :data:`imclass.models.default.LITE0_UNKNOWN`):
  the share of each set it accepts or rejects, from the ``known_score`` the classifier computes.

``--facts neg_entropy`` prints that score's percentiles on the ImageNet photos: the shipped rule's data.

    python bench/default_unknown.py [--per-set 300] [--coverage 0.95] [--seed 0] [--record]
    python bench/default_unknown.py --per-set 100000 --record     # every photo of each set (~90 s on 2 cores)
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATASETS = Path(os.environ.get("IMCLASS_DATASETS", ROOT.parent / "shared" / "datasets"))
EXTS = {".jpg", ".jpeg", ".png", ".bmp"}
OOD = ("neu_steel_defects", "natural_scenes_multilabel", "flowers5")
SHORT = {"neu_steel_defects": "steel", "natural_scenes_multilabel": "scenes", "flowers5": "flowers"}


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in EXTS)


def _group(name: str, path: Path) -> str:
    """A photo's class within its set (flowers, steel: the folder; scenes: its first label)."""
    if name == "natural_scenes_multilabel":
        return _scene_labels().get(path.name, "?")
    return path.parent.name


def _scene_labels() -> dict[str, str]:
    import csv

    with open(DATASETS / "natural_scenes_multilabel" / "labels_list.csv", encoding="utf-8") as f:
        return {Path(r["filename"]).name: r[next(k for k in r if k not in ("filename", "split"))].split()[0]
                for r in csv.DictReader(f)}


def scores_of(logits: np.ndarray) -> dict[str, np.ndarray]:
    """Candidate known-class scores (higher = more familiar) from raw logits ``(N, 1000)``."""
    z = logits.astype(np.float64)
    m = z.max(axis=1, keepdims=True)
    lse = (m + np.log(np.exp(z - m).sum(axis=1, keepdims=True)))[:, 0]
    logp = z - lse[:, None]
    p = np.exp(logp)
    return {"msp": p.max(axis=1), "max_logit": z.max(axis=1), "energy": lse,
            "neg_entropy": (p * logp).sum(axis=1)}


def run_model(clf, paths: list[Path], batch: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Raw logits and ``known_score`` (the shipped rule) of ``paths`` through the public API: ``decode``, then
    ``outputs`` of ``imclass.load("default", unknown=True)``."""
    out, known = [], []
    for i in range(0, len(paths), batch):
        arr = np.stack([clf.decode(str(p)) for p in paths[i:i + batch]])
        lg, k = clf.outputs(arr)
        out.append(lg)
        known.append(k)
    return np.concatenate(out), np.concatenate(known)


def auroc(known: np.ndarray, unseen: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(np.r_[np.ones(len(known)), np.zeros(len(unseen))], np.r_[known, unseen]))


def threshold(scores: np.ndarray, coverage: float) -> float:
    """The largest threshold that accepts (score >= threshold) at least ``coverage`` of ``scores``."""
    return float(np.quantile(scores, 1.0 - coverage, method="lower"))


def measure(ind: np.ndarray, classes: np.ndarray, correct: np.ndarray, ood: dict[str, np.ndarray],
            coverage: float) -> dict:
    thr = threshold(ind, coverage)
    acc = ind >= thr
    row = {"threshold": thr, "coverage": float(acc.mean()), "acc_all": float(correct.mean()),
           "acc_accepted": float(correct[acc].mean())}
    for name, s in ood.items():
        row[f"auroc_{name}"] = auroc(ind, s)
        row[f"rej_{name}"] = float((s < thr).mean())
    folds = []
    for c in np.unique(classes):
        t = threshold(ind[classes != c], coverage)
        folds.append({"class": c, "threshold": t, "coverage": float((ind[classes == c] >= t).mean()),
                      **{f"rej_{n}": float((s < t).mean()) for n, s in ood.items()}})
    cov = np.array([f["coverage"] for f in folds])
    row.update(cv_mean=float(cov.mean()), cv_min=float(cov.min()), cv_max=float(cov.max()),
               cv_worst=folds[int(cov.argmin())]["class"], folds=folds)
    for n in ood:
        r = np.array([f[f"rej_{n}"] for f in folds])
        row[f"cv_rej_{n}"] = (float(r.mean()), float(r.min()))
    return row


def table(rows: dict[str, dict], names: list[str]) -> str:
    head = ["score", "threshold (95% of ImageNet)"]
    head += [f"AUROC vs {SHORT[n]}" for n in names]
    head += [f"{SHORT[n]} rejected" for n in names]
    head += ["ImageNet coverage, class held out: mean (min, max)"]
    head += [f"{SHORT[n]} rejected, cross-fitted: mean (min)" for n in names]
    head += ["top-1 all / accepted"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for score, r in rows.items():
        cells = [score, f"{r['threshold']:.4g}"]
        cells += [f"{r[f'auroc_{n}']:.3f}" for n in names]
        cells += [f"{r[f'rej_{n}']:.1%}" for n in names]
        cells += [f"{r['cv_mean']:.1%} ({r['cv_min']:.1%} {r['cv_worst']}, {r['cv_max']:.1%})"]
        cells += [f"{r[f'cv_rej_{n}'][0]:.1%} ({r[f'cv_rej_{n}'][1]:.1%})" for n in names]
        cells += [f"{r['acc_all']:.1%} / {r['acc_accepted']:.1%}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--per-set", type=int, default=300, help="photos drawn (seeded) from each other set")
    ap.add_argument("--coverage", type=float, default=0.95)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--facts", choices=["msp", "max_logit", "energy", "neg_entropy"],
                    help="print this score's percentiles 0..100 on the ImageNet photos (the default model's data)")
    ap.add_argument("--record", action="store_true", help="append the table to bench/RESULTS.md")
    args = ap.parse_args(argv)
    if not (DATASETS / "imagenet_10class_1k").is_dir():
        print(f"skipped: no shared datasets at {DATASETS}")
        return 0
    import imclass
    from imclass.models.default import imagenet_wnids

    t0 = time.perf_counter()
    clf = imclass.load("default", backend=args.backend, unknown=True)
    wnids = imagenet_wnids()
    ind_paths = _images(DATASETS / "imagenet_10class_1k")
    classes = np.array([p.parent.name for p in ind_paths])
    logits, ind_known = run_model(clf, ind_paths)
    truth = np.array([wnids.index(c) for c in classes])
    correct = logits.argmax(axis=1) == truth
    ind = scores_of(logits)
    rng = np.random.default_rng(args.seed)
    names, ood, ood_top, ood_classes, ood_known, counts = [], {}, {}, {}, {}, {}
    for name in OOD:
        if not (DATASETS / name).is_dir():
            print(f"skipped {name}: not in {DATASETS}")
            continue
        paths = _images(DATASETS / name)
        paths = [paths[i] for i in sorted(rng.choice(len(paths), min(args.per_set, len(paths)), replace=False))]
        lg, ood_known[name] = run_model(clf, paths)
        names.append(name)
        ood[name] = scores_of(lg)
        top = np.bincount(lg.argmax(axis=1), minlength=1000)
        ood_top[name] = ", ".join(f"{clf.labels[j]} {top[j]}" for j in np.argsort(-top)[:5])
        ood_classes[name] = np.array([_group(name, p) for p in paths])
        counts[name] = len(paths)
        print(f"{name}: {len(paths)} photos; top labels: {ood_top[name]}", flush=True)
    rows = {s: measure(ind[s], classes, correct, {n: ood[n][s] for n in names}, args.coverage) for s in ind}
    text = table(rows, names)
    thr = clf.spec.unknown_threshold
    shipped = (f"The shipped rule (`imclass.load(\"default\", unknown=True)`: `known_score` below {thr}): "
               f"{(ind_known >= thr).mean():.1%} of the ImageNet photos accepted (top-1 on them "
               f"{correct[ind_known >= thr].mean():.1%}); rejected: "
               + ", ".join(f"{SHORT[n]} {(ood_known[n] < thr).mean():.1%}" for n in names) + ".")
    text += "\n\n" + shipped
    seconds = time.perf_counter() - t0
    print(text)
    for s, r in rows.items():
        print(s, "coverage per held-out class:",
              ", ".join(f"{f['class']} {f['coverage']:.2f}" for f in r["folds"]))
    for s, r in rows.items():
        for n in names:
            g = ood_classes[n]
            print(f"{s} {SHORT[n]} rejected per class:", ", ".join(
                f"{c} {(ood[n][s][g == c] < r['threshold']).mean():.2f}" for c in np.unique(g)))
    if args.facts:
        q = np.quantile(ind[args.facts], np.linspace(0, 1, 101))
        print(f"{args.facts} percentiles 0..100 on the ImageNet photos:")
        print("(" + ", ".join(f"{v:.4f}" for v in q) + ")")
    per_class_acc = {c: float(correct[classes == c].mean()) for c in np.unique(classes)}
    print("top-1 per class:", ", ".join(f"{c} {a:.2f}" for c, a in per_class_acc.items()))
    if args.record:
        load = os.getloadavg()[0]
        stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
        command = " ".join(sys.argv[1:] if argv is None else argv)
        tops = "; ".join(f"{SHORT[n]}: {t}" for n, t in ood_top.items())
        with open(ROOT / "bench" / "RESULTS.md", "a", encoding="utf-8") as f:
            f.write(f"\n## {stamp}: Unknown option for the default model (bench/default_unknown.py)\n\n"
                    f"`python bench/default_unknown.py {command}` ({seconds:.0f} s, load {load:.1f}, backend "
                    f"{clf.runtime['backend']}): the default model on the 1,000 ImageNet photos of "
                    f"imagenet_10class_1k and, drawn with seed {args.seed}, "
                    + ", ".join(f"{c} of {n}" for n, c in counts.items()) + "; "
                    f"thresholds accept {args.coverage:.0%} of the ImageNet photos; cross-fitted: set on 9 "
                    f"classes, coverage on the 10th. Top labels the model gives the other sets: {tops}.\n\n"
                    f"{text}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
