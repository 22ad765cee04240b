"""The Python API: one function per capability. Every face (CLI, server, studio) calls these, so a
capability exists once.

>>> import imclass
>>> clf = imclass.load()                                    # embedded ImageNet model, offline
>>> [p.label for p in clf.predict("photos/")]              # a folder, paths or PIL images
>>> imclass.label_library(["photos/"], output="labels.csv") # resumable, one row per image
>>> clf, run = imclass.train("my_classes/", out="runs/mine")
>>> imclass.evaluate("runs/mine", "my_classes/", report="eval/").metrics["accuracy"]
>>> imclass.explain("runs/mine", "photos/", out="cams/")   # CAM overlays, one PNG per image
>>> imclass.export("runs/mine", "runs/mine-onnx", int8=True, calibration=["photos/"])
>>> imclass.audit("my_classes/", report="audit/").counts()

Errors a caller can fix raise :class:`~imclass.errors.ImclassError`; invalid arguments raise
:class:`~imclass.errors.ParameterError`, which names the parameter (``top_k must be >= 1``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from .errors import ImageLoadError, ImclassError, ModelNotFoundError, ParameterError

#: Names this module re-exports from the workflows, imported on first use (``imclass --help`` stays fast).
_LAZY = {
    "AuditResult": ".data", "CleanResult": ".data", "Dataset": ".data", "ResizeResult": ".data",
    "SplitResult": ".data", "audit": ".data", "clean": ".data", "load_dataset": ".data", "resize": ".data",
    "split": ".data", "DownloadResult": ".data", "download": ".data", "export_dataset": ".data",
    "Comparison": ".evaluation", "EvalResult": ".evaluation", "Explanation": ".evaluation",
    "compare": ".evaluation", "evaluate": ".evaluation", "explain": ".evaluation",
    "LabelSummary": ".labelling", "label_library": ".labelling",
    "TrainConfig": ".training.config", "TrainResult": ".training.config", "find_lr": ".training.api",
    "Classifier": ".classifier", "Prediction": ".prediction", "Preprocess": ".preprocess",
    "ExportResult": ".export.bundle",
    "Index": ".index",
    "Embedder": ".features", "Embeddings": ".features", "Head": ".features.head", "fit_head": ".features.head",
}

if TYPE_CHECKING:
    from .classifier import Classifier
    from .data import (
        AuditResult,
        CleanResult,
        Dataset,
        DownloadResult,
        ResizeResult,
        SplitResult,
        audit,
        clean,
        download,
        export_dataset,
        load_dataset,
        resize,
        split,
    )
    from .evaluation import Comparison, EvalResult, Explanation, compare, evaluate, explain
    from .export.bundle import ExportResult
    from .features import Embedder, Embeddings
    from .features.head import Head, fit_head
    from .index import Index
    from .labelling import LabelSummary, label_library
    from .prediction import Prediction
    from .preprocess import Preprocess
    from .training.api import find_lr
    from .training.config import TrainConfig, TrainResult

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


def load(name: str | os.PathLike = "default", *, classes: Sequence[str] | str | None = None,
         templates: Sequence[str] | None = None, unknown_threshold: float | None = None, unknown: bool = False,
         device: str = "auto",
         threads: int | None = None, backend: str = "auto", streams: int | None = None,
         precision: str = "auto", tta: bool = False) -> Classifier:
    """Load a classifier: ``default`` (embedded ImageNet model), ``lite1``/``lite2`` (larger embedded ones), a
    bundle folder, ``hf:<id>``, a timm name (the grammar: :func:`models`).

    ``classes``: labels you name, without training (zero-shot): a CLIP-style ``hf:`` model scores each image
    against text prompts for each name (``templates``, e.g. ``["a photo of a {}."]``; default: a small
    ensemble). ``unknown_threshold``: a top score below it is ``unknown`` instead of the model's own rule (0:
    never; zero-shot models have none unless given). ``unknown=True``: the default model, which never says
    ``unknown`` otherwise, uses its measured rule (rows carry ``known_score``; below 0.05, ``unknown``: 95% of
    ImageNet photos accepted, most photos of none of its classes rejected; README, "Label a library").
    ``backend``: ``auto`` (ONNX Runtime on CPU, torch on CUDA), ``torch``, ``onnx``, ``onnx-int8`` or ``openvino``
    (extra ``imclass[openvino]``); ``precision``: ``auto``, ``fp32``, ``bf16`` (OpenVINO, CPUs with bf16) or
    ``int8`` (see :class:`Classifier`).
    ``threads``: CPU threads for the model; ``streams``: batches inferred at once, each with
    ``threads // streams`` threads (default: 2 for ONNX Runtime on CPU, else 1; 1 is best for latency).
    ``tta``: also run each image mirrored and average the outputs (test-time augmentation, twice the work).

    >>> clf = imclass.load("hf:openai/clip-vit-base-patch32", classes=["receipt", "selfie", "screenshot"])
    """
    from .classifier import Classifier

    return Classifier.load(name, device=device, threads=threads, backend=backend, streams=streams, classes=classes,
                           templates=templates, unknown_threshold=unknown_threshold, unknown=unknown,
                           precision=precision, tta=tta)


def models() -> list[dict[str, str]]:
    """The ways to name a model (``{"name", "what"[, "weights"]}`` per kind): what :func:`load` accepts."""
    from .models.registry import model_names

    return model_names()


def export(model: Any = "default", out: str | os.PathLike | None = None, *, int8: bool = False,
           calibration: Sequence[str | os.PathLike] | None = None, force: bool = False, openvino: bool = False,
           precision: str | None = None) -> ExportResult:
    """Export ``model`` (a name or a :class:`Classifier`) to an ONNX bundle folder ``out``, checked against torch.

    ``int8``: also write a static INT8 model, calibrated on ``calibration`` (image files or folders: photos
    like the ones it will label; at least 64). The parity of each file with the torch model is measured on
    held-out calibration photos (synthetic images without them) and recorded in the bundle's manifest; an
    export below the agreement thresholds is refused unless ``force``. Default ``out``: ``<model>-onnx``.
    ``openvino``: also write OpenVINO IR (``model.xml``/``.bin``) with its parity at f32, bf16 (where the CPU has
    it) and INT8 (with ``int8``); ``precision``: pin OpenVINO at that precision as the bundle's runtime.
    """
    from .classifier import Classifier
    from .engine.sources import iter_image_paths, validate_sources
    from .export.bundle import export_bundle

    if calibration is not None and not isinstance(calibration, (list, tuple)):
        calibration = [calibration]  # type: ignore[list-item]
    if calibration:
        missing = validate_sources(calibration)
        if missing:
            raise ParameterError("calibration", f"names no such file or folder: {', '.join(missing[:3])}")
    if int8 and not calibration:
        raise ParameterError("int8", "needs {calibration} photos (a folder of images like the ones it will label)")
    if isinstance(model, Classifier):
        clf = model
        name = model.spec.source or model.spec.model_id
    else:
        name = os.fspath(model)
        clf = Classifier.load(name, device="cpu", backend="torch")
    target = out if out is not None else f"{os.path.basename(os.path.normpath(name)) or 'model'}-onnx"
    images = list(iter_image_paths([os.fspath(c) for c in calibration])) if calibration else None
    return export_bundle(clf, target, int8=int8, images=images, force=force, openvino=openvino, precision=precision)


def embed(images: Sequence[Any], *, model: Any = "default", shas: Sequence[str | None] | None = None,
          device: str = "auto", threads: int | None = None, workers: int | None = None,
          progress=None) -> Embeddings:
    """Embeddings of ``images`` (paths, PIL images or bytes) from ``model``'s backbone: an
    :class:`~imclass.features.Embeddings` with ``vectors`` ``(N, D)`` (NaN rows for unreadable images) and
    ``errors``. With ``shas`` (the files' content hashes) they are cached on disk and reused by any later call
    (probe training, the audit, the studio's suggestions). ``progress(n)``: called with each batch's size.
    """
    from .features import Embedder

    embedder = Embedder(model, device=device, threads=threads)
    return embedder.embed(list(images), None if shas is None else list(shas), workers=workers, progress=progress)


def train(data: Any, out: str | os.PathLike | None = None, *, config: Any = None, resume: bool = False,
          progress=None, on_epoch=None, track: str | None = None, track_uri: str | None = None, budget: Any = None,
          on_candidate=None, **options: Any):
    """Train a classifier on ``data`` (a :class:`~imclass.data.Dataset`, class folders or a CSV); returns
    ``(Classifier, TrainResult)`` and writes the run folder ``out``. Options are the fields of :class:`TrainConfig`
    (``mode``, ``backbone``, ``epochs``, ``devices``...); see :func:`imclass.training.api.train`.

    ``devices=N`` (finetune, scratch) trains on N processes with PyTorch DDP, and a process started by
    ``torchrun`` trains as its share of the run (:mod:`imclass.distributed.ddp`); the result is the same
    bundle, from process 0 (the others return ``(None, TrainResult)``).

    ``track="mlflow"`` (store: ``track_uri``, else ``$MLFLOW_TRACKING_URI``, else ``./mlruns``) or
    ``"tensorboard"`` (``<out>/tensorboard/``) logs the parameters, per-epoch metrics, the validation confusion
    matrix and the bundle (extra ``imclass[track]``); ``result.metrics["tracking"]`` says where.

    ``budget="10m"`` (s, m, h; ``"auto"``: 5 minutes) lets imclass choose: the probe first, then what can still win
    in the time left (mirrored and enlarged views, Lite1 and Lite2 embeddings, fine-tuning), keeping the best on
    validation; ``result.metrics["budget"]`` says what it tried and why it stopped. With ``mode=`` too, only that
    mode's candidates are tried.

    >>> clf, result = imclass.train("flowers/", out="runs/flowers")
    >>> result.metrics["val"]["accuracy"]
    """
    from .training.api import train as train_one
    from .training.config import TrainConfig

    if config is not None and options:
        raise ImclassError("pass either config= or keyword options, not both")
    cfg = config or TrainConfig(**options)
    if budget is not None:
        return train_one(data, out, config=config, resume=resume, progress=progress, on_epoch=on_epoch, track=track,
                         track_uri=track_uri, budget=budget, on_candidate=on_candidate, **options)
    if cfg.devices > 1 or _under_torchrun():
        if track not in (None, "none"):
            raise ParameterError("track", "is not available for data-parallel runs yet ({devices} > 1)")
        from .distributed.ddp import train as train_parallel

        return train_parallel(data, out, config=cfg, resume=resume, progress=progress, on_epoch=on_epoch)
    return train_one(data, out, config=cfg, resume=resume, progress=progress, on_epoch=on_epoch, track=track,
                     track_uri=track_uri)


def _under_torchrun() -> bool:
    """Whether this process is one of several started by ``torchrun`` (``WORLD_SIZE`` > 1 and a ``RANK``)."""
    try:
        return "RANK" in os.environ and int(os.environ.get("WORLD_SIZE", "1")) > 1
    except ValueError:
        return False


def update_bundle(path: str | os.PathLike, *, unknown_threshold: Any = "keep", label_thresholds: Any = "keep"):
    """Change a trained bundle's thresholds (``unknown_threshold``: below it a prediction is ``unknown``; None:
    never) without retraining; returns its new spec."""
    from .models.bundle import update_bundle as update

    return update(path, unknown_threshold=unknown_threshold, label_thresholds=label_thresholds)


def augmentations(image: Any, *, preset: str = "default", n: int = 8, size: int = 224, seed: int = 0) -> list:
    """``n`` augmented versions of one image (a path, PIL image or bytes) as fine-tuning would see them with
    ``preset`` (none | light | default | heavy): PIL images, for a preview grid."""
    import random

    import numpy as np
    import torch

    from .images import load_image as _load
    from .preprocess import Preprocess
    from .training.config import AUGMENTS
    from .training.finetune import train_transform

    if preset not in AUGMENTS:
        raise ParameterError("preset", f"must be one of {', '.join(AUGMENTS)}")
    if not 1 <= n <= 64:
        raise ParameterError("n", "must be between 1 and 64")
    img = _load(image)
    transform = train_transform(Preprocess(input_size=(size, size)), preset)
    out = []
    for i in range(n):
        random.seed(seed + i)
        torch.manual_seed(seed + i)
        np.random.seed(seed + i)
        t = transform(img)
        arr = t.numpy() if hasattr(t, "numpy") else np.asarray(t)
        if arr.ndim == 3 and arr.shape[0] == 3:  # a normalised CHW tensor: back to pixels
            mean = np.asarray((0.485, 0.456, 0.406)).reshape(3, 1, 1)
            std = np.asarray((0.229, 0.224, 0.225)).reshape(3, 1, 1)
            arr = np.clip((arr * std + mean) * 255, 0, 255).astype(np.uint8).transpose(1, 2, 0)
        from PIL import Image

        out.append(Image.fromarray(np.asarray(arr, dtype=np.uint8)))
    return out


def load_image(src: Any):
    """One image through the safe loader (EXIF orientation, modes, bomb guard) as an RGB PIL image."""
    from .images import load_image as _load

    return _load(src)


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name], __package__), name)
    raise AttributeError(f"module 'imclass.api' has no attribute {name!r}")
