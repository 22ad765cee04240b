"""Report charts: matplotlib (Agg canvas, no pyplot global state) -> PNG data URIs."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..html_assets import png_uri

MAX_BARS = 40  # classes shown in bar charts (the weakest by F1 when there are more)
MAX_ANNOTATED = 25  # confusion matrices larger than this are not annotated with counts
MAX_MATRIX = 40  # classes shown in the confusion matrix (those in the most confusions when there are more)
COLORS = {"precision": "#4c78a8", "recall": "#f58518", "f1": "#54a24b", "average_precision": "#b279a2"}


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def to_data_uri(fig) -> str:
    return png_uri(fig)


def _weakest(per_class: dict[str, dict[str, Any]]) -> tuple[list[str], bool]:
    names = list(per_class)
    if len(names) <= MAX_BARS:
        return names, False
    names = sorted(names, key=lambda c: (per_class[c]["f1"] or 0.0, c))[:MAX_BARS]
    return names, True


def class_bars(per_class: dict[str, dict[str, Any]], keys: tuple[str, ...] = ("precision", "recall", "f1"),
               title: str = "Per-class precision, recall and F1") -> str:
    """Horizontal grouped bars, one group per class, annotated with support."""
    names, cut = _weakest(per_class)
    n, k = len(names), len(keys)
    fig = _figure(8.0, max(2.0, (0.22 + 0.09 * k) * n + 0.9))
    ax = fig.add_subplot()
    y = np.arange(n)
    h = 0.8 / k
    for i, key in enumerate(keys):
        vals = [per_class[c].get(key) or 0.0 for c in names]
        ax.barh(y + (i - (k - 1) / 2) * h, vals, height=h, label=key.replace("_", " "), color=COLORS.get(key))
    f1 = [per_class[c].get("f1") or 0.0 for c in names]
    for yi, v in zip(y, f1):  # the F1 value at the end of each group: readable without the table
        ax.text(1.01, yi, f"{v:.2f}", va="center", fontsize=8, color=COLORS["f1"], transform=ax.get_yaxis_transform())
    ax.set_yticks(y, [f"{c}  (n={per_class[c]['support']})" for c in names])
    ax.set_ylim(n - 0.5, -0.5)  # first class on top, no empty margins
    ax.set_xlim(0, 1)
    ax.grid(axis="x", alpha=0.3)
    ax.legend(loc="center left", bbox_to_anchor=(1.07, 0.5), fontsize=8, frameon=False)
    ax.set_title(title + (f"\n({MAX_BARS} weakest of {len(per_class)})" if cut else ""), fontsize=10, loc="left")
    return to_data_uri(fig)


def confusion_heatmap(cm: dict[str, Any]) -> str:
    """Row-normalised confusion matrix (colour), raw counts annotated."""
    labels = list(cm["labels"])
    norm = np.asarray(cm["normalized"], dtype=float)
    counts = np.asarray(cm["counts"], dtype=int)
    total = len(labels)
    if total > MAX_MATRIX:  # keep the classes involved in the most confusions
        off = counts.copy()
        np.fill_diagonal(off, 0)
        keep = np.sort(np.argsort(-(off.sum(0) + off.sum(1)), kind="stable")[:MAX_MATRIX])
        labels = [labels[i] for i in keep]
        norm, counts = norm[np.ix_(keep, keep)], counts[np.ix_(keep, keep)]
    n = len(labels)
    side = min(16.0, max(4.0, 0.55 * n + 2.0))
    fig = _figure(side + 1.0, side)
    ax = fig.add_subplot()
    im = ax.imshow(norm, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class")
    ticks = np.arange(n)
    ax.set_xticks(ticks, labels, rotation=60 if n > 4 else 0, ha="right" if n > 4 else "center",
                  fontsize=8 if n > 12 else 9)
    ax.set_yticks(ticks, labels, fontsize=8 if n > 12 else 9)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if n <= MAX_ANNOTATED:
        for i in range(n):
            for j in range(n):
                if counts[i, j]:
                    ax.text(j, i, str(counts[i, j]), ha="center", va="center", fontsize=8 if n > 12 else 9,
                            color="white" if norm[i, j] > 0.55 else "#222")
    part = f", the {n} most confused of {total} classes" if total > n else ""
    ax.set_title(f"Confusion matrix (rows: true class, normalised; numbers: image counts{part})", fontsize=10)
    return to_data_uri(fig)


def reliability_diagram(calibration: dict[str, Any]) -> str:
    """Accuracy vs confidence per bin (bars) against the diagonal, with the image count per bin."""
    bins = calibration["bins"]
    lo = np.array([b["lower"] for b in bins])
    width = np.array([b["upper"] - b["lower"] for b in bins])
    acc = np.array([b["accuracy"] if b["accuracy"] is not None else 0.0 for b in bins])
    conf = np.array([b["confidence"] if b["confidence"] is not None else np.nan for b in bins])
    count = np.array([b["count"] for b in bins])
    fig = _figure(8.0, 3.6)
    ax, ax2 = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1.2, 1]})
    ax.bar(lo, acc, width=width, align="edge", color="#4c78a8", edgecolor="white", label="accuracy")
    gap = np.where(count > 0, conf - acc, 0.0)
    ax.bar(lo, gap, bottom=acc, width=width, align="edge", color="#e45756", alpha=0.35, label="gap to confidence")
    ax.plot([0, 1], [0, 1], "--", color="#555", linewidth=1, label="perfect calibration")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence (top probability)")
    ax.set_ylabel("accuracy")
    ece = calibration.get("ece")
    ax.set_title(f"Reliability diagram (ECE {ece:.3f})" if ece is not None else "Reliability diagram", fontsize=10)
    ax.legend(fontsize=8, loc="upper left")
    ax2.bar(lo, count, width=width, align="edge", color="#72b7b2", edgecolor="white")
    ax2.set_xlim(0, 1)
    ax2.set_xlabel("confidence")
    ax2.set_ylabel("images")
    ax2.set_title("Confidence histogram", fontsize=10)
    fig.tight_layout()
    return to_data_uri(fig)
