"""The audit as one self-contained HTML file: summary, plots and thumbnail galleries (all inline, base64)."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path
from typing import Any

import numpy as np

from ..fileio import atomic_write_text
from ..html_assets import png_uri, thumbnail_uri
from .dataset import Dataset
from .findings import AuditResult, split_overview, summary_lines
from .marks import marks_path
from .report_template import TEMPLATE

THUMB = 112  # px, longer side
GALLERY_MAX = 60  # images per gallery; the JSON has every finding


def write_report(result: AuditResult, out: str | os.PathLike, dataset: Dataset | None = None) -> Path:
    """Write ``out/audit.html`` (``out`` may also name the ``.html`` file itself); returns its path."""
    from jinja2 import Environment

    target = Path(out)
    if target.suffix.lower() not in (".html", ".htm"):
        target = target / "audit.html"
    target.parent.mkdir(parents=True, exist_ok=True)
    root = result.dataset.get("source", "")
    base = dataset.root if dataset is not None and dataset.root else os.path.dirname(os.path.abspath(root))
    thumbs = _Thumbs()

    def short(path: str) -> str:
        try:
            rel = os.path.relpath(path, base)
        except ValueError:
            return path
        return path if rel.startswith("..") else rel

    def card(path: str, caption: str = "", note: str = "") -> dict[str, str]:
        return {"src": thumbs(path), "name": short(path), "path": path, "caption": caption, "note": note}

    def groups(items: list[dict[str, Any]], caption) -> list[list[dict[str, str]]]:
        return [[card(p, caption(g, k)) for k, p in enumerate(g["paths"])] for g in items[:GALLERY_MAX // 3]]

    r = result
    env = Environment(autoescape=True)
    html = env.from_string(TEMPLATE).render(
        title=f"Dataset audit: {root}",
        generated=dt.datetime.now().strftime("%Y-%m-%d %H:%M"),
        ds=r.dataset, thresholds=r.thresholds, notes=r.notes, label_check=r.label_check,
        summary=summary_lines(r), splits=split_overview(r), imbalance=r.imbalance_ratio,
        coverage=r.split_coverage, classes=list(r.class_counts),
        plots=_plots(r, dataset),
        corrupt=[{"name": short(x["path"]), "path": x["path"], "reason": x["reason"]}
                 for x in r.corrupt + r.non_images],
        wrong_ext=[{"name": short(x["path"]), "path": x["path"], "ext": x["extension"], "fmt": x["format"]}
                   for x in r.wrong_extension],
        conflicts=groups(r.conflicts, lambda g, k: ", ".join(g["labels"][k]) + f" ({g['kind']})"),
        leaks=groups(r.leaks, lambda g, k: g["splits"][k] or "unassigned"),
        exact=groups(r.exact_duplicates, lambda g, k: ", ".join(g["labels"][k]) + (
            f" · {g['splits'][k]}" if g["splits"][k] else "")),
        near=[dup_group(g, card, short) for g in r.near_duplicates[:GALLERY_MAX // 3]],
        possible=[dup_group(g, card, short) for g in r.possible_duplicates[:GALLERY_MAX // 3]],
        marks_file=marks_name(root), marks_path=str(marks_path(root) or marks_name(root)),
        label_issues=[card(x["path"], f"given {', '.join(x['given'])} → {', '.join(x['suggested'])}",
                           f"quality {x['quality']:.3f}") for x in r.label_issues[:GALLERY_MAX]],
        outliers=[card(x["path"], ", ".join(x["labels"]), f"score {x['score']:.3f}") for x in r.outliers[:GALLERY_MAX]],
        tiny=[card(x["path"], f"{x['width']}x{x['height']}") for x in r.tiny[:GALLERY_MAX]],
        odd=[card(x["path"], f"{x['width']}x{x['height']} ({x['aspect']}:1)") for x in r.odd_aspect[:GALLERY_MAX]],
        colour=r.colour, colour_cards=[card(p) for p in r.colour.get("files", [])[:GALLERY_MAX]],
        counts=r.counts(), gallery_max=GALLERY_MAX,
    )
    return atomic_write_text(target, html)


def dup_group(g: dict[str, Any], card, short) -> dict[str, Any]:
    """A near-duplicate group for the report: cards, one line of evidence per pair, and the pairs to mark."""
    import json

    cards = [card(p, ", ".join(g["labels"][k]) + (" · reference" if p == g.get("representative") else ""))
             for k, p in enumerate(g["paths"])]
    evidence = [{"a": short(e["a"]), "b": short(e["b"]), "text": evidence_text(e)} for e in g.get("evidence", [])]
    pairs = [[e.get("sha256_a", ""), e.get("sha256_b", ""), e["a"], e["b"]] for e in g.get("evidence", [])]
    return {"cards": cards, "evidence": evidence, "pairs_json": json.dumps(pairs)}


def evidence_text(e: dict[str, Any]) -> str:
    """One pair's evidence in words."""
    parts = []
    if e.get("method") == "keypoints+pixels":
        parts.append(f"{e.get('inliers')} matching keypoints")
    else:
        parts.append("pixels after a search over mirror, crop and shift")
    if e.get("worst_cell") is not None:
        parts.append(f"worst cell {e['worst_cell']:.2f}")
    if e.get("changed") is not None:
        parts.append(f"changed {100 * e['changed']:.1f}%")
    if e.get("mirrored"):
        parts.append("mirrored")
    if e.get("overlap") is not None and e["overlap"] < 0.8:
        parts.append(f"overlap {100 * e['overlap']:.0f}%")
    return ", ".join(parts)


def marks_name(source: str) -> str:
    path = marks_path(source)
    return path.name if path is not None else "not-duplicates.csv"


class _Thumbs:
    """Thumbnail data URIs, each file decoded once ("" when unreadable)."""

    def __init__(self):
        self.done: dict[str, str] = {}

    def __call__(self, path: str) -> str:
        if path not in self.done:
            self.done[path] = thumbnail_uri(path, THUMB) or ""
        return self.done[path]


def _png(fig) -> str:
    return png_uri(fig, dpi=100)


def _plots(r: AuditResult, dataset: Dataset | None) -> list[dict[str, str]]:
    from matplotlib.figure import Figure

    plots = []
    cov = r.split_coverage.get("counts") or {"all": r.class_counts}
    classes = list(r.class_counts)
    if classes:
        fig = Figure(figsize=(min(14, 2 + 0.45 * len(classes)), 3.2))
        ax = fig.subplots()
        bottom = np.zeros(len(classes))
        for split, counts in cov.items():
            vals = np.array([counts.get(c, 0) for c in classes], dtype=float)
            ax.bar(range(len(classes)), vals, bottom=bottom, label=split)
            bottom += vals
        ax.set_xticks(range(len(classes)), classes, rotation=45 if len(classes) > 6 else 0, ha="right"
                      if len(classes) > 6 else "center", fontsize=8)
        ax.set_ylabel("images")
        ax.set_title("Images per class" + (f" (imbalance {r.imbalance_ratio:g}:1)" if r.imbalance_ratio else ""))
        if len(cov) > 1:
            ax.legend(fontsize=8)
        plots.append({"title": "Class counts", "src": _png(fig)})
    if dataset is not None:
        t = dataset.table
        ok = (t["width"].astype(float) > 0) & (t["height"].astype(float) > 0)
        if ok.any():
            fig = Figure(figsize=(4.2, 3.2))
            ax = fig.subplots()
            ax.scatter(t["width"][ok].astype(float), t["height"][ok].astype(float), s=6, alpha=0.3)
            ax.set_xlabel("width (px)")
            ax.set_ylabel("height (px)")
            ax.set_title("Image sizes")
            plots.append({"title": "Image sizes", "src": _png(fig)})
    scores = np.array([s for s in r.outlier_scores if s is not None], dtype=float)
    if len(scores):
        fig = Figure(figsize=(4.2, 3.2))
        ax = fig.subplots()
        ax.hist(scores, bins=50)
        thr = r.thresholds.get("outlier_threshold")
        if thr is not None:
            ax.axvline(thr, color="crimson", linestyle="--", label=f"threshold {thr:.3f}")
            ax.legend(fontsize=8)
        ax.set_xlabel(f"mean cosine distance to {r.thresholds.get('outlier_k')} nearest images")
        ax.set_ylabel("images")
        ax.set_title("Outlier scores")
        plots.append({"title": "Outlier scores", "src": _png(fig)})
    return plots
