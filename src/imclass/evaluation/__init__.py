"""Evaluation: metrics, CAM explanations and a self-contained HTML report.

>>> res = evaluate("runs/flowers", "data/flowers", split="val", report="eval/")
>>> res.metrics["accuracy"], res.files["report"]
>>> explain(imclass.load("runs/flowers"), ["photo.jpg"])[0].heatmap
"""

from __future__ import annotations

from .explain import Explanation, explain, save_overlays
from .metrics import compute_metrics, headline, top_losses
from .result import EvalResult, write_json, write_predictions
from .runner import Comparison, compare, evaluate

__all__ = ["Comparison", "EvalResult", "Explanation", "compare", "compute_metrics", "evaluate", "explain",
           "headline", "save_overlays", "top_losses", "write_json", "write_predictions"]
