"""One self-contained HTML report (plus ``metrics.json`` and ``predictions.csv``) for an :class:`EvalResult`.

Charts are matplotlib PNGs and thumbnails small JPEGs, all embedded as data URIs: the file opens offline and
can be mailed as is.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from ..fileio import atomic_write_text
from ..html_assets import jpeg_uri, thumbnail_uri
from . import charts
from .metrics import MULTI_LABEL, headline
from .result import EvalResult, write_json, write_predictions

log = logging.getLogger("imclass")
THUMB = 160  # pixels, longest side
GALLERY = 12
SAMPLES = 8
PAIR_EXAMPLES = 4

_PERCENT = {"accuracy", "balanced_accuracy", "macro_f1", "subset_accuracy", "micro_f1", "coverage", "mAP",
            "roc_auc_macro", "accuracy_all_images"}
_NAMES = {"accuracy": "accuracy", "accuracy_all_images": "accuracy on all images (unknown counted wrong)",
          "balanced_accuracy": "balanced accuracy", "macro_f1": "macro F1",
          "top3_accuracy": "top-3 accuracy", "top5_accuracy": "top-5 accuracy", "log_loss": "log loss",
          "ece": "calibration error (ECE)", "coverage": "coverage (not unknown)", "subset_accuracy": "exact match",
          "hamming_loss": "Hamming loss", "micro_f1": "micro F1", "mAP": "mean average precision",
          "roc_auc_macro": "ROC-AUC (macro)", "n_evaluated": "images evaluated", "n_errors": "unreadable images"}


def write_report(result: EvalResult, out_dir: str | os.PathLike, *, clf=None, audit: dict[str, Any] | None = None,
                 cam_method: str = "gradcam", gallery: int = GALLERY, samples: int = SAMPLES,
                 title: str | None = None) -> dict[str, str]:
    """Write ``report.html``, ``metrics.json`` and ``predictions.csv`` into ``out_dir``; return their paths.

    ``clf`` (the evaluated Classifier) adds CAM overlays to the top-losses gallery and model provenance;
    ``audit`` (a dataset audit summary dict) adds a section.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = {"metrics": str(write_json(result.metrics, out / "metrics.json")),
             "predictions": str(write_predictions(result.table, out / "predictions.csv"))}
    html = render_report(result, clf=clf, audit=audit, cam_method=cam_method, gallery=gallery, samples=samples,
                         title=title)
    files["report"] = str(atomic_write_text(out / "report.html", html))
    return files


def render_report(result: EvalResult, *, clf=None, audit: dict[str, Any] | None = None, cam_method: str = "gradcam",
                  gallery: int = GALLERY, samples: int = SAMPLES, title: str | None = None) -> str:
    """The report as an HTML string."""
    import jinja2

    from .template import REPORT_HTML

    m = result.metrics
    multi = result.task == MULTI_LABEL
    top = [int(i) for i in _top_indices(result, gallery)]
    top_tiles = [_tile(result, i) for i in top]
    cam_note = _add_cams(result, top_tiles, top, clf, cam_method) if top_tiles else None
    correct, wrong = _samples(result, samples)
    spec = clf.spec if clf is not None else None
    ctx = {
        "title": title or f"Evaluation: {result.model}",
        "subtitle": (f"{m.get('n_evaluated')} images from {m['dataset'].get('source') or 'the dataset'} "
                     f"(split: {m.get('split')}), {len(result.classes)} {'labels' if multi else 'classes'}"),
        "notes": _notes(m),
        "cards": _cards(m),
        "multi": multi,
        "model_info": m.get("model", {}),
        "data_info": _data_info(m),
        "provenance": dict(spec.provenance) if spec is not None else {},
        "training": dict(spec.training) if spec is not None else {},
        "per_class": m["per_class"],
        "class_chart": _class_chart(m["per_class"], multi),
        "confusion_chart": None if multi else charts.confusion_heatmap(m["confusion_matrix"]),
        "reliability_chart": None if multi or not m.get("n_evaluated") else charts.reliability_diagram(
            m["calibration"]),
        "confidence": m.get("confidence") or {},
        "rejection": m.get("rejection"),
        "pairs": [] if multi else _pairs(result, m.get("most_confused") or []),
        "top": top_tiles,
        "cam_note": cam_note,
        "correct": [_tile(result, i) for i in correct],
        "wrong": [_tile(result, i) for i in wrong],
        "errors": m.get("errors") or [],
        "n_errors": m.get("n_errors", 0),
        "audit": audit,
        "version": m.get("imclass_version", ""),
        "created": m.get("created", ""),
        "pct": _pct,
        "num": _num,
    }
    env = jinja2.Environment(autoescape=True, undefined=jinja2.ChainableUndefined)
    return env.from_string(REPORT_HTML).render(**ctx)


# ---- content -----------------------------------------------------------------------------------------

def _class_chart(per_class: dict[str, Any], multi: bool) -> str:
    if multi:
        return charts.class_bars(per_class, ("precision", "recall", "f1", "average_precision"),
                                 "Per-label precision, recall, F1 and average precision")
    return charts.class_bars(per_class)


def _pct(v) -> str:
    return "-" if v is None else f"{100 * float(v):.1f}%"


def _num(v) -> str:
    return "-" if v is None else f"{float(v):.3f}"


def _cards(m: dict[str, Any]) -> list[dict[str, str]]:
    cards = []
    rejecting = bool(m.get("rejection"))
    for k, v in headline(m).items():
        if k == "n_errors" and not v:
            continue
        text = _pct(v) if k in _PERCENT or k.startswith("top") else (str(v) if k.startswith("n_") else _num(v))
        name = "accuracy on accepted images" if k == "accuracy" and rejecting else _NAMES.get(k, k.replace("_", " "))
        cards.append({"name": name, "value": text})
    for lv in m.get("levels") or []:  # hierarchy models: accuracy at each depth of the label paths
        cards.append({"name": f"level {lv['level']} accuracy", "value": _pct(lv["accuracy"])})
    return cards


def _notes(m: dict[str, Any]) -> list[str]:
    notes = list(m.get("warnings") or [])
    if m.get("label_mapping"):
        notes.append(m["label_mapping"]["note"])
    if m.get("n_errors"):
        n = m["n_errors"]
        notes.append(f"{n} {'image' if n == 1 else 'images'} could not be read and {'is' if n == 1 else 'are'} "
                     "left out of every metric")
    return notes


def _data_info(m: dict[str, Any]) -> dict[str, Any]:
    d = dict(m.get("dataset") or {})
    d["split evaluated"] = m.get("split")
    if m.get("split_requested") != m.get("split"):
        d["split requested"] = m.get("split_requested")
    d["images evaluated"] = m.get("n_evaluated")
    if m.get("label_mapping"):
        d["label mapping"] = m["label_mapping"]["mapped"]
    return d


def _top_indices(result: EvalResult, k: int) -> list[int]:
    t = result.table
    bad = t["correct"].eq(False) & t["loss"].notna()
    return t[bad].sort_values("loss", ascending=False, kind="stable").index[:k].tolist()


def _samples(result: EvalResult, k: int) -> tuple[list[int], list[int]]:
    t = result.table
    rng = np.random.default_rng(0)
    picks = []
    for flag in (True, False):
        idx = t.index[t["correct"].eq(flag)].to_numpy()
        picks.append(sorted(rng.choice(idx, size=min(k, len(idx)), replace=False).tolist()) if len(idx) else [])
    return picks[0], picks[1]


def _pairs(result: EvalResult, confused: list[dict[str, Any]]) -> list[dict[str, Any]]:
    t = result.table
    out = []
    for p in confused:
        rows = t[(t["true"] == p["true"]) & (t["predicted"] == p["predicted"])]
        rows = rows.sort_values("confidence", ascending=False).head(PAIR_EXAMPLES)
        examples = []
        for i in rows.index:
            thumb = thumbnail_uri(t.at[i, "path"], 96)
            if thumb:
                examples.append({"thumb": thumb, "path": t.at[i, "path"], "name": Path(t.at[i, "path"]).name,
                                 "confidence": float(t.at[i, "confidence"])})
        out.append({**p, "examples": examples})
    return out


def _tile(result: EvalResult, i: int) -> dict[str, Any]:
    t = result.table
    path = str(t.at[i, "path"])
    loss = t.at[i, "loss"]
    return {"path": path, "name": Path(path).name, "thumb": thumbnail_uri(path, THUMB), "cam": None, "cam_label": None,
            "true": t.at[i, "true"], "predicted": t.at[i, "predicted"], "confidence": _maybe(t.at[i, "confidence"]),
            "correct": bool(t.at[i, "correct"]) if t.at[i, "correct"] is not None else False,
            "loss": None if loss is None or not np.isfinite(loss) else float(loss)}


def _maybe(v) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if np.isfinite(f) else None


def _add_cams(result: EvalResult, tiles: list[dict[str, Any]], rows: list[int], clf, method: str) -> str | None:
    """CAM overlays for the gallery: the predicted class (single-label) or the worst label (multi-label)."""
    if clf is None:
        return None
    mapping = (result.metrics.get("label_mapping") or {}).get("mapped") or {}
    targets = []
    for i in rows:
        p, y = result.probabilities[i], result.targets[i]
        if result.task == MULTI_LABEL:
            q = np.clip(p, 1e-7, 1 - 1e-7)
            j = int(np.argmax(-(y * np.log(q) + (1 - y) * np.log1p(-q))))
        else:
            j = int(np.argmax(p))
        targets.append(mapping.get(result.classes[j], result.classes[j]))
    try:
        from .explain import explain

        exps = explain(clf, [tiles[k]["path"] for k in range(len(rows))], method=method, target=targets,
                       overlay="crop")
    except Exception as e:  # overlays are an extra: a model CAM cannot handle must not lose the evaluation
        log.warning("CAM overlays skipped: %s", e)
        return f"CAM overlays unavailable for this model ({e})"
    for tile, e in zip(tiles, exps):
        if e.overlay is not None:
            tile["cam"] = jpeg_uri(e.overlay, THUMB)
            tile["cam_label"] = e.label
    return None


