"""imclass: label image libraries offline, learn your own classes, ship the result.

>>> import imclass
>>> clf = imclass.load()                      # embedded ImageNet model, offline
>>> [p.label for p in clf.predict("photos/")] # a folder, paths or PIL images
>>> clf, result = imclass.train("my_classes/", out="runs/mine")  # class folders or a CSV
>>> imclass.evaluate("runs/mine", "my_classes/", report="eval/").metrics["accuracy"]

Everything here is :mod:`imclass.api` (the one API the CLI, the server and the studio call), imported
on first use so that ``import imclass`` stays cheap.
"""

from __future__ import annotations

import sys
import types
from typing import TYPE_CHECKING

from .version import __version__

if TYPE_CHECKING:
    from .api import (
        AuditResult,
        Classifier,
        CleanResult,
        Comparison,
        Dataset,
        DownloadResult,
        Embedder,
        Embeddings,
        EvalResult,
        Explanation,
        ExportResult,
        Head,
        ImageLoadError,
        ImclassError,
        Index,
        LabelSummary,
        ModelNotFoundError,
        ParameterError,
        Prediction,
        Preprocess,
        ResizeResult,
        SplitResult,
        TrainConfig,
        TrainResult,
        audit,
        augmentations,
        clean,
        compare,
        download,
        embed,
        evaluate,
        explain,
        export,
        export_dataset,
        find_lr,
        fit_head,
        label_library,
        load,
        load_dataset,
        load_image,
        models,
        resize,
        split,
        train,
        update_bundle,
    )

__all__ = [
    "AuditResult",
    "Classifier",
    "CleanResult",
    "Comparison",
    "Dataset",
    "DownloadResult",
    "Embedder",
    "Embeddings",
    "EvalResult",
    "Explanation",
    "ExportResult",
    "Head",
    "ImageLoadError",
    "ImclassError",
    "Index",
    "LabelSummary",
    "ModelNotFoundError",
    "ParameterError",
    "Prediction",
    "Preprocess",
    "ResizeResult",
    "SplitResult",
    "TrainConfig",
    "TrainResult",
    "__version__",
    "audit",
    "augmentations",
    "clean",
    "compare",
    "download",
    "embed",
    "evaluate",
    "explain",
    "export",
    "export_dataset",
    "find_lr",
    "fit_head",
    "label_library",
    "load",
    "load_dataset",
    "load_image",
    "models",
    "resize",
    "split",
    "train",
    "update_bundle",
]


def __getattr__(name: str):
    if name in __all__:
        from . import api

        return getattr(api, name)
    if name == "distributed":  # scale-out (imclass.distributed.predict, .embed, DDP), imported on first use
        import importlib

        return importlib.import_module(".distributed", __name__)
    raise AttributeError(f"module 'imclass' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


class _Package(types.ModuleType):
    """``imclass.export`` is the API function, also after the workflow package of the same name is imported.

    Importing a submodule binds it as an attribute of its parent, so the first ``import imclass.export.bundle``
    anywhere in a process would turn ``imclass.export(...)`` into a module ("'module' object is not
    callable"). The package stays importable by its full name (``from imclass.export.bundle import ...``).
    """

    def __setattr__(self, name: str, value) -> None:
        if name == "export" and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
