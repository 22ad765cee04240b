"""imclass: label image libraries offline, learn your own classes, ship the result.

>>> import imclass
>>> clf = imclass.load()                      # embedded ImageNet model, offline
>>> [p.label for p in clf.predict("photos/")] # a folder, paths or PIL images
>>> clf, result = imclass.train("my_classes/", out="runs/mine")  # class folders or a CSV
>>> imclass.evaluate("runs/mine", "my_classes/", report="eval/").metrics["accuracy"]
"""

from __future__ import annotations

from typing import TYPE_CHECKING

__version__ = "0.1.0"

__all__ = [
    "Classifier",
    "Dataset",
    "ImageLoadError",
    "ImclassError",
    "LabelSummary",
    "ModelNotFoundError",
    "Prediction",
    "Preprocess",
    "TrainConfig",
    "TrainResult",
    "__version__",
    "audit",
    "compare",
    "evaluate",
    "explain",
    "label_library",
    "load",
    "load_dataset",
    "load_image",
    "train",
]

_LAZY = {
    "Classifier": ".classifier",
    "Prediction": ".prediction",
    "Preprocess": ".preprocess",
    "label_library": ".labelling",
    "LabelSummary": ".labelling",
    "load_image": ".images",
    "Dataset": ".data",
    "load_dataset": ".data",
    "audit": ".data",
    "train": ".training.api",
    "evaluate": ".evaluation.runner",
    "compare": ".evaluation.runner",
    "explain": ".evaluation.explain",
    "TrainConfig": ".training.config",
    "TrainResult": ".training.config",
    "ImclassError": ".errors",
    "ImageLoadError": ".errors",
    "ModelNotFoundError": ".errors",
}

if TYPE_CHECKING:
    from .classifier import Classifier
    from .data import Dataset, audit, load_dataset
    from .errors import ImageLoadError, ImclassError, ModelNotFoundError
    from .evaluation.explain import explain
    from .evaluation.runner import compare, evaluate
    from .images import load_image
    from .labelling import LabelSummary, label_library
    from .prediction import Prediction
    from .preprocess import Preprocess
    from .training.api import train
    from .training.config import TrainConfig, TrainResult


def load(name: str = "default", device: str = "auto", threads: int | None = None,
         backend: str = "auto") -> Classifier:
    """Load a classifier: ``default`` (embedded ImageNet model), a bundle folder, ``hf:<id>``, a timm name.

    ``backend``: ``auto`` (ONNX Runtime on CPU, torch on CUDA), ``torch``, ``onnx`` or ``onnx-int8``.
    """
    from .classifier import Classifier

    return Classifier.load(name, device=device, threads=threads, backend=backend)


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module 'imclass' has no attribute {name!r}")
