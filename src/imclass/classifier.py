"""``Classifier``: a model, its labels and preprocessing, and the one way to run it."""

from __future__ import annotations

import importlib.util
import logging
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .engine.backends import TorchBackend, resolve_device
from .engine.pipeline import map_arrays, run_batches
from .engine.sources import iter_image_paths
from .errors import ImclassError, ParameterError
from .images import source_name
from .models.spec import ModelSpec
from .prediction import Prediction, decide, known_scores, probabilities, split_outputs

BACKENDS = ("auto", "torch", "onnx", "onnx-int8", "openvino")
#: ``auto``: the model's verified default on this runtime (see :mod:`imclass.engine.runtimes`).
PRECISIONS = ("auto", "fp32", "bf16", "int8")
log = logging.getLogger("imclass")


class Classifier:
    """An image classifier: backbone + head + labels + preprocessing (+ calibration, thresholds).

    >>> clf = imclass.load("default")
    >>> clf.predict(["cat.jpg"], top_k=3)[0].label
    'tabby'
    """

    def __init__(self, model, spec: ModelSpec, device: str = "auto", threads: int | None = None,
                 backend: str = "auto", streams: int | None = None, precision: str = "auto", tta: bool = False):
        if backend not in BACKENDS:
            raise ImclassError(f"unknown backend {backend!r}; use one of {', '.join(BACKENDS)}")
        if precision not in PRECISIONS:
            raise ImclassError(f"unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}")
        self._model = model
        self._model_loader = None  # builds the torch module on demand (fast ONNX start-up path)
        self._onnx_path: str | None = None
        self.spec = spec
        self.device = device
        self.threads = threads
        self.streams = streams
        self.backend_name = backend
        self.precision = precision
        #: test-time augmentation: each batch is also run mirrored and the two outputs averaged (2x the work)
        self.tta = bool(tta)
        #: a measured "unknown" rule computed from the logits (the default model's, opt-in: ``unknown=True``);
        #: None: the model's own (a trained bundle's known-score output, or its top-probability threshold)
        self.known_rule = None
        self._backend = None

    # ---- construction -------------------------------------------------------------------------
    @classmethod
    def load(cls, name: str | os.PathLike = "default", device: str = "auto",
             threads: int | None = None, backend: str = "auto", streams: int | None = None, *,
             classes: Sequence[str] | str | None = None, templates: Sequence[str] | None = None,
             unknown_threshold: float | None = None, unknown: bool = False, precision: str = "auto",
             tta: bool = False) -> Classifier:
        """Load a model by name: ``default``, a bundle directory, ``hf:<id>``, a timm name, ...

        ``classes``: label with these names instead, by text prompts (``templates``, default
        :data:`~imclass.models.zero_shot.DEFAULT_TEMPLATES`): zero-shot, with a CLIP-style ``hf:`` model.
        ``unknown_threshold``: a top score (or, for a model with a known-class score, that score) below it is
        ``unknown``, instead of the model's own rule (0: never; zero-shot models have no threshold unless given).
        ``unknown``: also for the default model, which says ``unknown`` only when asked: its measured rule
        (:data:`~imclass.models.default.LITE0_UNKNOWN`; rows carry ``known_score``; with ``unknown_threshold``,
        that threshold applies to it). Models with their own rule keep it; others raise :class:`ParameterError`.

        ``backend``: ``auto`` (ONNX Runtime on CPU, exported and cached on first use; torch on CUDA),
        ``torch``, ``onnx``, ``onnx-int8`` (needs a bundle made by ``imclass export --int8``) or ``openvino``
        (extra ``imclass[openvino]``). ``precision``: ``auto`` (ONNX Runtime fp32 unless a verified, measured
        faster runtime is recorded for this model on this CPU: :mod:`imclass.engine.runtimes`), ``fp32``,
        ``bf16`` (OpenVINO, on CPUs with native bf16) or ``int8`` (a bundle's static INT8 file).
        ``threads``: CPU threads for the model (default: all usable cores). ``streams``: batches run at
        once when predicting many images, each with ``threads // streams`` threads (default: 2 for ONNX
        Runtime on CPU, else 1; 1 gives single calls all threads, best for latency). ``tta``: also run every
        image mirrored and average the two outputs (test-time augmentation: twice the work; the model's
        calibration and "unknown" threshold were fitted without it).
        """
        from .models.registry import resolve, resolve_zero_shot

        if unknown_threshold is not None and not 0.0 <= unknown_threshold <= 1.0:
            raise ParameterError("unknown_threshold", "must be between 0 and 1 (0: never 'unknown')")
        if classes is not None:
            model, spec = resolve_zero_shot(name, classes, templates, unknown_threshold or None)
            return cls(model, spec, device=device, threads=threads, backend=backend, streams=streams,
                       precision=precision, tta=tta)._with_unknown(None, unknown)
        if backend in ("auto", "onnx", "onnx-int8", "openvino") and resolve_device(device) == "cpu":
            int8 = backend == "onnx-int8" or precision == "int8"
            fast = _fast_onnx_start(name, int8=int8)
            if fast is not None:  # a verified ONNX export exists: no torch import needed to predict
                spec, onnx_path, loader = fast
                clf = cls(None, spec, device=device, threads=threads, backend=backend, streams=streams,
                          precision=precision, tta=tta)
                clf._model_loader = loader
                if not int8:  # an INT8 file is always taken from the bundle's manifest (spec.bundle_dir)
                    clf._onnx_path = onnx_path
                return clf._with_unknown(unknown_threshold, unknown)
        model, spec = resolve(name)
        return cls(model, spec, device=device, threads=threads, backend=backend, streams=streams,
                   precision=precision, tta=tta)._with_unknown(unknown_threshold, unknown)

    def with_tta(self, tta: bool = True) -> Classifier:
        """A copy (sharing the model and its runtime) that does or does not use test-time augmentation."""
        import copy

        other = copy.copy(self)
        other.tta = bool(tta)
        return other

    def _with_unknown(self, threshold: float | None, unknown: bool = False) -> Classifier:
        if unknown:
            from .models.default import embedded

            m = embedded(self.spec.source)
            if m is not None and m.unknown is not None:
                self.known_rule = m.unknown
                self.spec.unknown_threshold = m.unknown.threshold
            elif not self.spec.open_set and self.spec.unknown_threshold is None and threshold is None:
                raise ParameterError("unknown", "is a measured rule of the default model only, not of "
                                                f"{self.spec.source or self.spec.model_id!r}: give a threshold on its "
                                                "top score with {unknown_threshold}")
        if threshold is not None:
            self.spec.unknown_threshold = threshold or None
        return self

    @property
    def model(self):
        """The torch module (built on first use when the classifier was loaded from an ONNX export)."""
        if self._model is None and self._model_loader is not None:
            self._model = self._model_loader()
        return self._model

    @model.setter
    def model(self, value) -> None:
        self._model = value

    def save(self, path: str | os.PathLike) -> Path:
        """Write a bundle directory (``model.safetensors`` + ``imclass.json``)."""
        if self.known_rule is not None:
            raise ImclassError("the default model's 'unknown' rule is not saved in bundles: load it without "
                               "unknown=True to save it")
        from .models.bundle import save_bundle

        return save_bundle(self.model.cpu(), self.spec, path)

    # ---- facts --------------------------------------------------------------------------------
    @property
    def labels(self) -> list[str]:
        return self.spec.labels

    @property
    def backend(self):
        """The runtime that executes the model (built on first use)."""
        if self._backend is None:
            self._backend = self._make_backend()
        return self._backend

    @property
    def runtime(self) -> dict[str, str]:
        """What runs the model: ``{"backend": torch | onnx | openvino, "precision": fp32 | bf16 | int8 | fp16}``
        (builds the backend)."""
        b = self.backend
        return {"backend": b.name, "precision": getattr(b, "precision", "fp32")}

    def _make_backend(self):
        choice, precision = _runtime_request(self.backend_name, self.precision)
        if choice == "auto":
            if resolve_device(self.device) != "cpu" or importlib.util.find_spec("onnxruntime") is None:
                choice = "torch"
            else:
                try:
                    path = self._onnx_path_for(int8=False)
                except Exception as e:
                    log.warning("ONNX Runtime backend unavailable for %s (%s); using torch", self.spec.model_id, e)
                    choice = "torch"
                else:
                    return self._auto_backend(path, precision)
        if choice == "torch":
            return TorchBackend(self.model, self.spec.preprocess, device=self.device, threads=self.threads)
        if choice == "openvino":
            if resolve_device(self.device) != "cpu":
                raise ImclassError(f"backend 'openvino' runs on the CPU, not {self.device!r}; use --device cpu")
            return self._openvino_backend(precision)
        if resolve_device(self.device) not in ("cpu", "cuda"):
            raise ImclassError(f"backend {choice!r} runs on CPU or CUDA, not {self.device!r}")
        return self._onnx_backend(int8=precision == "int8")

    def _auto_backend(self, fp32_path: Path, precision: str):
        """``auto`` on CPU: ONNX Runtime fp32, unless this model's record for this CPU picks a verified, faster
        runtime (:mod:`imclass.engine.runtimes`); a recorded choice that cannot be built falls back with a
        warning."""
        from .engine.runtimes import recorded_choice

        picked = None
        pinned = self.spec.exports.get("runtime") if precision == "auto" else None
        if isinstance(pinned, dict) and pinned.get("backend") and pinned.get("precision"):
            picked = (pinned["backend"], pinned["precision"])  # imclass export --openvino --precision P
        else:
            try:
                picked = recorded_choice(fp32_path, precision=None if precision == "auto" else precision)
            except Exception as e:  # a broken record never stops a run
                log.warning("runtime record for %s unreadable (%s); using ONNX Runtime fp32", self.spec.model_id, e)
        if picked is not None and picked != ("onnx", "fp32"):
            backend, prec = picked
            try:
                if backend == "openvino":
                    return self._openvino_backend(prec)
                return self._onnx_backend(int8=prec == "int8")
            except Exception as e:
                log.warning("%s %s %s for %s but unavailable here (%s); using ONNX Runtime fp32", backend, prec,
                            "pinned" if pinned else "recorded as fastest", self.spec.model_id, e)
        return self._onnx_backend(int8=False, path=fp32_path)

    def _onnx_path_for(self, int8: bool) -> Path:
        """The verified ONNX file: fp32 (the bundle's, or the cached export) or a bundle's INT8 file."""
        exported = self.spec.exports.get("onnx") or {}
        key = "int8" if int8 else "fp32"
        if self._onnx_path and not int8:
            return Path(self._onnx_path)
        if self.spec.bundle_dir and exported.get(key):
            path = Path(self.spec.bundle_dir) / exported[key]
            if not path.is_file():
                raise ImclassError(
                    f"{self.spec.bundle_dir}: its manifest lists {exported[key]} ({key} ONNX model) but the "
                    "file is missing; copy the whole bundle folder, or export again with `imclass export`")
            return path
        if int8:
            raise ImclassError(
                f"{self.spec.source or self.spec.model_id} has no INT8 export: run "
                "`imclass export MODEL --int8 --calibration IMAGES` and use the exported bundle")
        from .engine.onnx_cache import cached_onnx, remember_default
        from .models.default import embedded

        path = cached_onnx(self.model, self.spec)
        if embedded(self.spec.source) is not None:  # default, lite1, lite2: start without torch next time
            remember_default(self.spec, path)
        return path

    def _onnx_backend(self, int8: bool, path: Path | None = None):
        from .engine.onnx_backend import OnnxBackend, default_streams

        path = path or self._onnx_path_for(int8)
        streams = self.streams or default_streams(resolve_device(self.device), self.threads)
        return OnnxBackend(path, self.spec.preprocess, threads=self.threads, streams=streams,
                           precision="int8" if int8 else "fp32")

    def _openvino_backend(self, precision: str):
        """OpenVINO on the CPU; ``auto``: the record's fastest verified precision for this model, else fp32."""
        from .engine.onnx_backend import default_streams
        from .engine.openvino_backend import OpenVinoBackend, core

        core()  # a one-line error without the openvino package, before any export work
        fp32 = None
        if precision == "auto":
            from .engine.runtimes import recorded_choice

            fp32 = self._onnx_path_for(int8=False)
            picked = recorded_choice(fp32, backend="openvino")
            precision = picked[1] if picked else "fp32"
        ir = (self.spec.exports.get("openvino") or {}).get("fp32")
        if precision != "int8" and self.spec.bundle_dir and ir and (Path(self.spec.bundle_dir) / ir).is_file():
            path = Path(self.spec.bundle_dir) / ir  # the IR written by imclass export --openvino
        elif precision == "int8":
            path = self._onnx_path_for(int8=True)
        else:
            path = fp32 or self._onnx_path_for(int8=False)
        streams = self.streams or default_streams("cpu", self.threads)
        return OpenVinoBackend(path, self.spec.preprocess, precision=precision, threads=self.threads,
                               streams=streams)

    def __repr__(self) -> str:
        return (f"Classifier({self.spec.model_id}, {self.spec.num_classes} labels, "
                f"task={self.spec.task}, source={self.spec.source!r})")

    # ---- prediction ---------------------------------------------------------------------------
    def decode(self, item: Any) -> np.ndarray:
        """One image (path, bytes, stream or PIL image) -> ``uint8`` model-input array."""
        return self.spec.preprocess.load(item)

    def logits(self, batch: np.ndarray) -> np.ndarray:
        """``uint8`` NHWC batch -> raw class logits."""
        return self.outputs(batch)[0]

    def outputs(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """``uint8`` NHWC batch -> ``(logits, known_score)``; ``known_score`` is None for models without an
        open-set score (:mod:`imclass.models.open_set`). With :attr:`tta`, the mean of the outputs for the batch
        and for its mirror image. With :attr:`known_rule`, ``known_score`` is computed from the logits."""
        out = self.backend(batch)
        if self.tta:
            out = (out + self.backend(np.ascontiguousarray(batch[:, :, ::-1]))) / 2
        logits, known = split_outputs(out, self.spec)
        if known is None and self.known_rule is not None:
            known = self.known_rule.known_score(logits)
        return logits, known

    def decide_batch(self, batch: np.ndarray, names: list[str], top_k: int = 5,
                     reject_unknown: bool = True) -> list[Prediction]:
        """A decoded ``uint8`` batch -> its :class:`Prediction` rows (the one step every labeller shares)."""
        logits, known = self.outputs(batch)
        return decide(probabilities(logits, self.spec), names, self.spec, top_k, reject_unknown, known)

    def _require_labels(self) -> None:
        if not self.spec.labels:
            raise ImclassError(f"{self.spec.source or 'this model'} has no classes to predict: it is a backbone "
                               f"(features only). Train a probe on it (imclass train DATA --model "
                               f"{self.spec.source or 'NAME'} --out RUN), then predict with --model RUN")

    def predict_iter(self, images: Iterable[Any] | str | os.PathLike, *, top_k: int = 5,
                     batch_size: int | None = None, workers: int | None = None,
                     reject_unknown: bool = True) -> Iterator[Prediction]:
        """Stream predictions one by one, in input order, with flat memory (any iterable works)."""
        for batch in self.predict_batches(images, top_k=top_k, batch_size=batch_size, workers=workers,
                                          reject_unknown=reject_unknown):
            yield from batch

    def predict_batches(self, images: Iterable[Any] | str | os.PathLike, *, top_k: int = 5,
                        batch_size: int | None = None, workers: int | None = None,
                        reject_unknown: bool = True) -> Iterator[list[Prediction]]:
        """Stream predictions batch by batch. ``images``: paths, folders, PIL images or bytes.

        ``batch_size``: images per model call (default: 16 shared by the backend's streams, so 8 with two).
        """
        self._require_labels()
        items = _expand(images)
        return run_batches(
            items,
            decode=self.decode,
            infer=lambda batch, names: self.decide_batch(batch, names, top_k, reject_unknown),
            name_of=source_name,
            batch_size=batch_size,
            workers=workers,
            infer_workers=self.backend.streams,
        )

    def predict(self, images: Iterable[Any] | str | os.PathLike, *, top_k: int = 5,
                batch_size: int | None = None, workers: int | None = None,
                reject_unknown: bool = True) -> list[Prediction]:
        """Predict a list of images (or a folder). Unreadable images give rows with ``error`` set."""
        return list(self.predict_iter(images, top_k=top_k, batch_size=batch_size, workers=workers,
                                      reject_unknown=reject_unknown))

    def predict_proba(self, images: Iterable[Any], *, batch_size: int | None = None,
                      workers: int | None = None, return_errors: bool = False,
                      progress: Callable[[int, int], None] | None = None):
        """Calibrated probabilities ``(N, classes)``; rows of unreadable images are NaN.

        ``return_errors=True`` returns ``(probabilities, errors)`` with why each NaN row failed;
        ``progress(done, total)`` is called after every batch.
        """
        self._require_labels()
        items = list(_expand(images))
        done = 0

        def tick(_ok: list[int], _rows: np.ndarray, size: int) -> None:
            nonlocal done
            done += size
            progress(done, len(items))

        probs, errors = map_arrays(items, lambda batch: probabilities(self.logits(batch), self.spec),
                                   decode=self.decode, width=self.spec.num_classes, batch_size=batch_size,
                                   workers=workers, infer_workers=self.backend.streams,
                                   on_batch=None if progress is None else tick)
        return (probs, errors) if return_errors else probs

    def predict_scores(self, images: Iterable[Any], *, batch_size: int | None = None,
                       workers: int | None = None, progress: Callable[[int, int], None] | None = None
                       ) -> tuple[np.ndarray, np.ndarray | None, list[str | None]]:
        """``(probabilities, known_scores, errors)``: as :meth:`predict_proba`, plus what ``unknown`` is
        decided on (the open-set score, else the top probability; None for multi-label models without one)."""
        self._require_labels()
        items = list(_expand(images))
        done = 0
        width = self.spec.num_classes + 1

        def tick(_ok: list[int], _rows: np.ndarray, size: int) -> None:
            nonlocal done
            done += size
            progress(done, len(items))

        def run(batch: np.ndarray) -> np.ndarray:
            logits, known = self.outputs(batch)
            p = probabilities(logits, self.spec)
            k = known_scores(p, known, self.spec)
            return np.concatenate([p, (np.full(len(p), np.nan) if k is None else k)[:, None]], axis=1)

        rows, errors = map_arrays(items, run, decode=self.decode, width=width, batch_size=batch_size,
                                  workers=workers, infer_workers=self.backend.streams,
                                  on_batch=None if progress is None else tick)
        known = rows[:, -1]
        none = self.spec.task == "multi_label" and not self.spec.open_set
        return rows[:, :-1], (None if none else known), errors


def _runtime_request(backend: str, precision: str) -> tuple[str, str]:
    """``(backend, precision)`` asked for, with the spellings folded (``onnx-int8`` = ``onnx`` + ``int8``;
    ``auto`` + ``bf16`` = OpenVINO bf16, the one runtime with bf16; ``auto`` + ``int8`` = ``onnx-int8``)."""
    if backend == "onnx-int8":
        if precision not in ("auto", "int8"):
            raise ImclassError(f"backend 'onnx-int8' runs INT8, not {precision}; use --backend onnx or openvino")
        return "onnx", "int8"
    if backend == "torch" and precision not in ("auto", "fp32"):
        need = "--backend openvino" if precision == "bf16" else "--backend onnx or openvino (and an INT8 export)"
        raise ImclassError(f"backend 'torch' runs fp32; --precision {precision} needs {need}")
    if backend == "onnx" and precision == "bf16":
        raise ImclassError("ONNX Runtime has no bf16 CPU path; use --backend openvino --precision bf16")
    if backend == "auto" and precision == "bf16":
        return "openvino", "bf16"
    if backend == "auto" and precision == "int8":
        return "onnx", "int8"
    if backend == "onnx" and precision == "auto":
        return "onnx", "fp32"
    return backend, precision


def _fast_onnx_start(name: str | os.PathLike, int8: bool = False):
    """``(spec, onnx path, torch loader)`` when ``name`` can run from an existing ONNX export, else None."""
    from .engine.onnx_cache import ready_export
    from .models import default
    from .models.bundle import load_bundle

    found = ready_export(name, int8=int8)
    if found is None:
        return None
    spec, path = found
    name = os.fspath(name)
    folder = spec.bundle_dir or name  # mlflow:<run id>: the downloaded bundle
    loader = (lambda: default.build(name)[0]) if default.embedded(name) else (lambda: load_bundle(folder)[0])
    return spec, path, loader


def _expand(images: Iterable[Any] | str | os.PathLike) -> Iterable[Any]:
    if isinstance(images, (str, os.PathLike)):
        return iter_image_paths([images])
    if isinstance(images, (Image.Image, bytes)):
        return [images]
    return _expand_each(images)


def _expand_each(images: Iterable[Any]) -> Iterator[Any]:
    for im in images:
        if isinstance(im, (str, os.PathLike)) and os.path.isdir(im):
            yield from iter_image_paths([im])
        else:
            yield im
