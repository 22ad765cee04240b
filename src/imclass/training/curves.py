"""Training curves as a PNG (matplotlib's Agg canvas without pyplot: no display, no global state, and a
third of pyplot's import time)."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any


class CurvesInBackground:
    """:func:`plot_curves` in a thread, started as soon as the history is known; :meth:`result` waits for it.

    matplotlib's import and the layout are ~0.8 s of pure Python; the calibration and known-class fits that
    follow a probe spend most of their time in NumPy and LAPACK, which release the GIL, so on a machine with a
    second core the chart costs a probe retrain little of its wall time. An error is raised by :meth:`result`.
    """

    def __init__(self, history: list[dict[str, Any]], mode: str, path: Path):
        self._out: Path | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(list(history), mode, path), daemon=True,
                                        name="imclass-curves")
        self._thread.start()

    def _run(self, history: list[dict[str, Any]], mode: str, path: Path) -> None:
        try:
            self._out = plot_curves(history, mode, path)
        except BaseException as e:  # handed to the caller by result()
            self._error = e

    def join(self) -> None:
        self._thread.join()

    def result(self) -> Path | None:
        self.join()
        if self._error is not None:
            raise self._error
        return self._out


def plot_curves(history: list[dict[str, Any]], mode: str, path: Path) -> Path | None:
    """Probe: validation log loss per regularisation strength. Networks: loss and metric per epoch."""
    if not history:
        return None
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10 if mode != "probe" else 5, 3.6))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2 if mode != "probe" else 1, squeeze=False)
    if mode == "probe":
        ax = axes[0][0]
        ax.plot([h["C"] for h in history], [h["val_log_loss"] for h in history], marker="o")
        ax.set_xscale("log")
        ax.set_xlabel("C (inverse regularisation)")
        ax.set_ylabel("validation log loss")
        ax.set_title("linear probe: choosing C")
    else:
        epochs = [h["epoch"] for h in history]
        ax = axes[0][0]
        ax.plot(epochs, [h["train_loss"] for h in history], marker="o", label="train")
        if any(h.get("val_loss") is not None for h in history):
            ax.plot(epochs, [h.get("val_loss") for h in history], marker="o", label="validation")
        ax.set_xlabel("epoch")
        ax.set_ylabel("loss")
        ax.legend()
        ax.set_title("loss")
        ax = axes[0][1]
        key = next((k for k in ("val_accuracy", "val_macro_f1") if k in history[0]), None)
        if key:
            ax.plot(epochs, [h.get(key) for h in history], marker="o", color="tab:green")
            ax.set_ylabel(key.replace("_", " "))
        ax.plot(epochs, [h.get("lr", 0) / max(h.get("lr", 0) for h in history) for h in history],
                color="tab:gray", alpha=0.4, label="lr (relative)")
        ax.set_xlabel("epoch")
        ax.set_title("validation")
        ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path
