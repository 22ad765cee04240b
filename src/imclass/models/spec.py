"""What a model is, as data: the contents of a bundle's ``imclass.json`` minus the weights."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from ..preprocess import Preprocess

Task = Literal["single_label", "multi_label"]
UNKNOWN_LABEL = "unknown"


@dataclass
class ModelSpec:
    """Everything needed to rebuild a model and turn its logits into labels.

    ``architecture`` is ``{"family": "timm", "name": ..., "kwargs": {...}}`` or
    ``{"family": "hf", "config": {...}}`` (a transformers config dict) or
    ``{"family": "imclass", "name": "small_vgg", "kwargs": {...}}`` (imclass's own from-scratch CNN).
    """

    architecture: dict[str, Any]
    labels: list[str]
    preprocess: Preprocess
    task: Task = "single_label"
    temperature: float | None = None  # calibration: logits are divided by it
    label_thresholds: list[float] | None = None  # multi-label decision thresholds, one per label
    unknown_threshold: float | None = None  # known_score (or, without open_set, top score) below it -> "unknown"
    source: str = ""  # how the model was named when loaded
    provenance: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    exports: dict[str, Any] = field(default_factory=dict)  # e.g. {"onnx": {"fp32": "model.onnx", ...}}
    # the known-class score's recipe (imclass.models.open_set); the network then outputs it as a last column
    open_set: dict[str, Any] | None = None
    # labels are paths ("sports/dance/ballet"): predictions carry label_path (imclass.prediction.decide)
    hierarchy: bool = False
    # set when loaded from a bundle (exported files are relative to it); runtime state, not compared
    bundle_dir: str | None = field(default=None, compare=False)

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    @property
    def model_id(self) -> str:
        """A short stable identifier of the architecture (used e.g. for cache keys)."""
        arch = self.architecture
        if arch.get("family") in ("timm", "imclass"):
            return f"{arch['family']}:{arch['name']}"
        if arch.get("family") == "concat":
            return "concat:" + "+".join(str(p.get("name") or p.get("family")) for p in arch.get("parts", []))
        if arch.get("family") == "hf":
            return f"hf:{arch.get('config', {}).get('model_type', 'model')}"
        return str(arch.get("family"))
