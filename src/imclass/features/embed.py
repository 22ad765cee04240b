"""Backbone embeddings (the features before the classifier layer), through the one engine and the cache.

``Embedder("default")`` knows its cache key without importing torch (it hashes the weights file), so a
run whose embeddings are all cached never builds a model. Missing embeddings are computed with ONNX Runtime
on CPU (the feature graph is exported once and cached, checked against torch) or torch otherwise.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..engine.backends import resolve_device
from ..engine.pipeline import map_arrays
from ..errors import ImclassError
from ..models.concat import parts_of
from ..preprocess import Preprocess
from .cache import EmbeddingCache

log = logging.getLogger("imclass")
PRE_LOGITS = "pre_logits"  # imclass.models.open_set.PRE_LOGITS (that module imports torch)
KEY_VERSION = "features-v1"  # bump when what an embedding *is* changes (pooling, preprocessing code)
#: Augmented views of an image (each cached under its own key): the model input mirrored (``flip``), its
#: central 80% enlarged back to the input size (``zoom``), or both (``zoomflip``). The probe of a time budget
#: adds them to its training rows (:mod:`imclass.training.budget`).
VIEWS = ("", "flip", "zoom", "zoomflip")


@dataclass
class Embeddings:
    """``vectors`` ``(N, D)`` float32 (NaN rows where ``errors[i]`` is set), in input order."""

    vectors: np.ndarray
    errors: list[str | None]
    backbone: str  # the cache key of the backbone
    computed: int = 0  # how many were computed (the rest came from the cache)

    @property
    def ok(self) -> np.ndarray:
        return np.array([e is None for e in self.errors], dtype=bool)


def feature_module(model):
    """A copy of ``model`` whose forward returns pooled pre-classifier features."""
    import torch

    from ..models.open_set import unwrap

    feats = copy.deepcopy(unwrap(model)).eval()
    if hasattr(feats, "reset_classifier") and hasattr(feats, "get_classifier"):  # timm
        feats.reset_classifier(0)
        return feats
    last = None
    for name, mod in feats.named_modules():
        if isinstance(mod, torch.nn.Linear):
            last = name
    if last is None:
        raise ImclassError("cannot find the classifier layer of this model to take features from")
    parent_name, _, attr = last.rpartition(".")
    parent = feats.get_submodule(parent_name) if parent_name else feats
    setattr(parent, attr, torch.nn.Identity())
    return feats


class Embedder:
    """Turns images into backbone embeddings, with the on-disk cache in front.

    ``backbone``: a model name (``default``, a bundle folder, a timm or ``hf:`` name) or a
    :class:`~imclass.classifier.Classifier`. ``backend``: ``auto`` (ONNX Runtime on CPU, torch on GPU),
    ``torch`` or ``onnx``. ``taps``: instead of the pre-classifier features, the concatenated pooled
    features of these layers (see :func:`imclass.models.open_set.candidate_taps`), cached under their own key.
    ``view``: one of :data:`VIEWS`, an augmented view of every image instead of the model input itself.
    """

    def __init__(self, backbone: Any = "default", *, device: str = "auto", backend: str = "auto",
                 threads: int | None = None, cache: EmbeddingCache | bool = True, taps: tuple[str, ...] = (),
                 view: str = "", preprocess: Preprocess | None = None):
        if view not in VIEWS:
            raise ImclassError(f"unknown view {view!r}; use one of {', '.join(repr(v) for v in VIEWS)}")
        self.view = view
        self._clf = None if isinstance(backbone, (str, os.PathLike)) else backbone
        self._name_or_path = os.fspath(backbone) if isinstance(backbone, (str, os.PathLike)) else None
        self.device, self.backend_name, self.threads = device, backend, threads
        self.cache = EmbeddingCache() if cache is True else (cache or None)
        self.taps = tuple(taps)
        self._preprocess = preprocess  # instead of the model's own (a part of a concatenation)
        self._key: str | None = None
        self._run: Callable[[np.ndarray], np.ndarray] | None = None
        self._spec = None
        # a concatenation (lite0+lite1): each part embedded by its own embedder (and cache), side by side
        self._parts: list[Embedder] | None = None
        if self._name_or_path is not None and parts_of(self._name_or_path) is not None:
            if self.taps not in ((), (PRE_LOGITS,)) or preprocess is not None:
                raise ImclassError(f"{self._name_or_path}: a concatenation of backbones offers its concatenated "
                                   f"features only (the {PRE_LOGITS} tap)")
            self._parts = _part_embedders(self._name_or_path, device=device, backend=backend, threads=threads,
                                          cache=self.cache or False, view=view)

    # ---- identity -------------------------------------------------------------------------------
    @property
    def spec(self):
        """The backbone's :class:`~imclass.models.spec.ModelSpec` (read without building the model when possible)."""
        if self._spec is None:
            spec = self._light_spec() or self.classifier.spec
            self._spec = spec if self._preprocess is None else dataclasses.replace(spec, preprocess=self._preprocess)
        return self._spec

    @property
    def classifier(self):
        if self._clf is None:
            from ..classifier import Classifier

            clf = Classifier.load(self._name_or_path, device=self.device, backend="torch")
            if self._preprocess is not None:
                clf = Classifier(clf.model, dataclasses.replace(clf.spec, preprocess=self._preprocess),
                                 device=self.device, backend="torch")
            self._clf = clf
        return self._clf

    @property
    def key(self) -> str:
        """Cache key: hash of the backbone's weights, architecture, preprocessing and :data:`KEY_VERSION`."""
        if self._key is None:
            if self._parts is not None:  # the parts' keys carry the view; the only tap is the features themselves
                self._key = hashlib.sha256(("concat|" + ",".join(p.key for p in self._parts)).encode()).hexdigest()[:32]
                return self._key
            key = self._light_key() or self._model_key()
            if self._preprocess is not None:
                pre = json.dumps(self._preprocess.to_dict(), sort_keys=True, default=str)
                key = hashlib.sha256(f"{key}|preprocess={pre}".encode()).hexdigest()[:32]
            if self.taps:
                key = hashlib.sha256(f"{key}|taps={','.join(self.taps)}".encode()).hexdigest()[:32]
            if self.view:
                key = hashlib.sha256(f"{key}|view={self.view}".encode()).hexdigest()[:32]
            self._key = key
        return self._key

    def _light_spec(self):
        if self._name_or_path is None:
            return None
        from ..engine.onnx_cache import light_spec

        return light_spec(self._name_or_path)

    def _light_key(self) -> str | None:
        """A key from the weights *file* (no torch import) for the embedded models and bundles."""
        from ..models import default
        from ..models.bundle import WEIGHTS, is_bundle, read_manifest

        name = self._name_or_path
        if name is None:
            return None
        m = default.embedded(name)
        if m is not None:  # default (Lite0), lite1, lite2: their weights file and architecture
            return _key("default", _file_sha256(default.weights_path(name)), {"arch": m.arch})
        if is_bundle(name):
            m = read_manifest(name)
            return _key("bundle", _file_sha256(Path(name) / WEIGHTS),
                        {"architecture": m.get("architecture"), "preprocess": m.get("preprocess")})
        return None

    def _model_key(self) -> str:
        h = hashlib.sha256()
        for name, tensor in self.classifier.model.state_dict().items():
            h.update(name.encode())
            h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        spec = self.classifier.spec
        return _key("model", h.hexdigest(),
                    {"architecture": spec.architecture, "preprocess": spec.preprocess.to_dict()})

    # ---- computing ------------------------------------------------------------------------------
    def _feature_model(self):
        """The torch module that computes this embedder's vectors (a copy of the backbone)."""
        if self.taps:
            from ..models.open_set import TapFeatures, unwrap

            return TapFeatures(copy.deepcopy(unwrap(self.classifier.model)).eval(), list(self.taps))
        return feature_module(self.classifier.model)

    def _onnx_tag(self) -> str:
        return "taps" + hashlib.sha256(",".join(self.taps).encode()).hexdigest()[:8] if self.taps else ""

    def exported_graph(self) -> Path | None:
        """The verified ONNX file of this embedder's feature graph if an earlier run exported it (builds the
        torch model to fingerprint it), else None."""
        from ..engine.onnx_cache import cache_path

        if self._parts is not None:
            return None
        path = cache_path(self._feature_model(), self.classifier.spec, features=True, tag=self._onnx_tag())
        return path if path.is_file() else None

    def _runner(self) -> Callable[[np.ndarray], np.ndarray]:
        if self._run is None:
            spec = self.classifier.spec
            model = self._feature_model()
            use_onnx = self.backend_name == "onnx" or (
                self.backend_name == "auto" and resolve_device(self.device) == "cpu")
            if use_onnx:
                try:
                    from ..engine.onnx_backend import OnnxBackend, default_streams
                    from ..engine.onnx_cache import cached_onnx

                    self._run = OnnxBackend(cached_onnx(model, spec, features=True, tag=self._onnx_tag()),
                                            spec.preprocess,
                                            threads=self.threads, streams=default_streams("cpu", self.threads))
                except Exception as e:
                    if self.backend_name == "onnx":
                        raise
                    log.warning("ONNX Runtime unavailable for embeddings (%s); using torch", e)
            if self._run is None:
                from ..engine.backends import TorchBackend

                self._run = TorchBackend(model, spec.preprocess, device=self.device, threads=self.threads)
        return self._run

    def with_view(self, view: str) -> Embedder:
        """This embedder for another of :data:`VIEWS` (same model, runtime and cache; its own cache key)."""
        if view not in VIEWS:
            raise ImclassError(f"unknown view {view!r}; use one of {', '.join(repr(v) for v in VIEWS)}")
        other = copy.copy(self)
        other.view, other._key = view, None
        if self._parts is not None:
            other._parts = [p.with_view(view) for p in self._parts]
        return other

    def plain(self) -> Embedder:
        """This embedder for the plain pre-classifier features (no taps, no view)."""
        other = copy.copy(self)
        other.taps, other.view, other._key, other._run = (), "", None, None
        if self._parts is not None:
            other._parts = [p.plain() for p in self._parts]
        return other

    @property
    def parts(self) -> list[Embedder] | None:
        """The embedders of a concatenation's parts (their vectors side by side are this one's), else None."""
        return self._parts

    def prepare(self) -> Embedder:
        """Build the runtime now (an ONNX export on first use) rather than at the first :meth:`embed`."""
        if self._parts is not None:
            for p in self._parts:
                p.prepare()
            return self
        self._runner()
        return self

    def decode(self, item: Any) -> np.ndarray:
        arr = self.spec.preprocess.load(item)
        return arr if not self.view else augmented_view(arr, self.view)

    def embed(self, items: Sequence[Any], shas: Sequence[str | None] | None = None, *,
              batch_size: int | None = None, workers: int | None = None,
              progress: Callable[[int], None] | None = None) -> Embeddings:
        """Embeddings of ``items`` (paths, PIL images, bytes). With ``shas`` (content hashes), cached vectors
        are reused and new ones stored; items with the same hash are computed once. ``progress(n)`` is called
        with the number of items finished (cached ones at once)."""
        if self._parts is not None:
            return self._embed_parts(items, shas, batch_size=batch_size, workers=workers, progress=progress)
        n = len(items)
        # one key per distinct content (items without a hash are their own key)
        keys: list[Any] = [shas[i] if shas is not None and shas[i] else i for i in range(n)]
        hashed = [k for k in keys if isinstance(k, str)]
        vectors_of: dict[Any, np.ndarray] = (self.cache.get(self.key, hashed)
                                             if hashed and self.cache is not None else {})
        error_of: dict[Any, str] = {}
        todo_seen: set[Any] = set()
        todo: list[int] = []  # the first item of each key that is not cached
        for i, k in enumerate(keys):
            if k not in vectors_of and k not in todo_seen:
                todo_seen.add(k)
                todo.append(i)
        if progress is not None and n - len(todo):
            progress(n - len(todo))
        if todo:
            todo_keys = [keys[i] for i in todo]

            def store(done: list[int], rows: np.ndarray, size: int) -> None:
                if self.cache is not None:
                    self.cache.put(self.key, [(todo_keys[j], r) for j, r in zip(done, rows)
                                              if isinstance(todo_keys[j], str)])
                if progress is not None:
                    progress(size)

            run = self._runner()
            rows, errs = map_arrays([items[i] for i in todo], lambda b: np.asarray(run(b), np.float32),
                                    decode=self.decode, batch_size=batch_size, workers=workers,
                                    infer_workers=run.streams, on_batch=store)
            for j, k in enumerate(todo_keys):
                if errs[j] is None:
                    vectors_of[k] = rows[j]
                else:
                    error_of[k] = errs[j]
        dim = next(iter(vectors_of.values())).size if vectors_of else 0
        vectors = np.full((n, dim), np.nan, dtype=np.float32)
        errors: list[str | None] = [None] * n
        for i, k in enumerate(keys):
            if k in vectors_of:
                vectors[i] = vectors_of[k]
            else:
                errors[i] = error_of.get(k, "not embedded")
        return Embeddings(vectors, errors, self.key, computed=len(todo) - len(error_of))

    def _embed_parts(self, items, shas, *, batch_size, workers, progress) -> Embeddings:
        """A concatenation: each part's embeddings (its own cache key), side by side; a row that failed in any
        part is an error. ``progress`` counts images, each part's share weighted equally."""
        assert self._parts is not None
        k = len(self._parts)
        counts = [0] * k
        shown = 0

        def tick(i: int, m: int) -> None:
            nonlocal shown
            counts[i] += m
            now = sum(counts) // k
            if progress is not None and now > shown:
                progress(now - shown)
                shown = now

        got = [p.embed(items, shas, batch_size=batch_size, workers=workers,
                       progress=lambda m, i=i: tick(i, m)) for i, p in enumerate(self._parts)]
        if progress is not None and len(items) > shown:
            progress(len(items) - shown)
        errors: list[str | None] = [next((g.errors[i] for g in got if g.errors[i] is not None), None)
                                    for i in range(len(items))]
        vectors = np.concatenate([g.vectors for g in got], axis=1) if items else np.zeros((0, 0), np.float32)
        vectors[[e is not None for e in errors]] = np.nan
        return Embeddings(vectors, errors, self.key, computed=max(g.computed for g in got))


def embed_dataset(dataset, backbone: Any = "default", **kwargs) -> Embeddings:
    """Embeddings of every row of a :class:`~imclass.data.Dataset` (cached by content hash)."""
    progress = kwargs.pop("progress", None)
    embedder = backbone if isinstance(backbone, Embedder) else Embedder(
        backbone, **{k: kwargs.pop(k) for k in ("device", "backend", "threads", "cache") if k in kwargs})
    table = dataset.table
    shas = [s if isinstance(s, str) else None for s in table["sha256"]]
    out = embedder.embed(table["path"].tolist(), shas, progress=progress, **kwargs)
    for i, err in enumerate(table["error"]):  # files the importer could not open stay errors
        if isinstance(err, str) and out.errors[i] is None:
            out.errors[i] = err
            out.vectors[i] = np.nan
    return out


def _part_embedders(name: str, **kwargs) -> list[Embedder]:
    """One embedder per part of a concatenation, each computing on the shared input (the largest part's
    geometry) normalised as that part expects (:mod:`imclass.models.concat`)."""
    from ..models import default
    from ..models.concat import part_preprocess, parts_of, shared_preprocess

    names = parts_of(name) or []
    plain = [Embedder(n, **kwargs) for n in names]
    own = []
    for n, e in zip(names, plain):
        m = default.embedded(n)
        own.append(m.preprocess if m is not None else e.spec.preprocess)  # the embedded ones: no model built
    shared = shared_preprocess(own)
    out = []
    for n, e, pre in zip(names, plain, own):
        mine = part_preprocess(shared, pre)
        out.append(e if mine == pre else Embedder(n, preprocess=mine, **kwargs))
    return out


def augmented_view(arr: np.ndarray, view: str) -> np.ndarray:
    """A model input (``uint8`` HWC) seen another way: ``flip`` mirrors it, ``zoom`` enlarges its central 80%
    back to the full size (bicubic), ``zoomflip`` does both."""
    if "zoom" in view:
        from PIL import Image

        h, w = arr.shape[:2]
        dh, dw = int(round(h * 0.1)), int(round(w * 0.1))
        img = Image.fromarray(np.ascontiguousarray(arr[dh:h - dh, dw:w - dw]))
        arr = np.asarray(img.resize((w, h), Image.Resampling.BICUBIC), dtype=np.uint8)
    if "flip" in view:
        arr = arr[:, ::-1]
    return np.ascontiguousarray(arr)


def _key(kind: str, weights: str, extra: dict[str, Any]) -> str:
    blob = json.dumps({"kind": kind, "weights": weights, "extra": extra, "v": KEY_VERSION}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def _file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
