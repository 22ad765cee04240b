"""Training curves as a PNG (matplotlib, Agg: no display needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def plot_curves(history: list[dict[str, Any]], mode: str, path: Path) -> Path | None:
    """Probe: validation log loss per regularisation strength. Networks: loss and metric per epoch."""
    if not history:
        return None
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2 if mode != "probe" else 1, figsize=(10 if mode != "probe" else 5, 3.6),
                             squeeze=False)
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
    plt.close(fig)
    return path
