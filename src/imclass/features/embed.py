"""Backbone embeddings (the features before the classifier layer), through the one engine and the cache.

``Embedder("default")`` knows its cache key without importing torch (it hashes the weights file), so a
run whose embeddings are all cached never builds a model. Missing embeddings are computed with ONNX Runtime
on CPU (the feature graph is exported once and cached, checked against torch) or torch otherwise.
"""

from __future__ import annotations

import copy
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
from ..engine.pipeline import DEFAULT_BATCH_SIZE, run_batches
from ..errors import ImclassError
from ..images import load_image
from ..prediction import Prediction
from .cache import EmbeddingCache

log = logging.getLogger("imclass")
KEY_VERSION = "features-v1"  # bump when what an embedding *is* changes (pooling, preprocessing code)


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

    feats = copy.deepcopy(model).eval()
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
    ``torch`` or ``onnx``.
    """

    def __init__(self, backbone: Any = "default", *, device: str = "auto", backend: str = "auto",
                 threads: int | None = None, cache: EmbeddingCache | bool = True):
        self.name = backbone if isinstance(backbone, str) else getattr(getattr(backbone, "spec", None), "source", "")
        self._clf = None if isinstance(backbone, (str, os.PathLike)) else backbone
        self._name_or_path = os.fspath(backbone) if isinstance(backbone, (str, os.PathLike)) else None
        self.device, self.backend_name, self.threads = device, backend, threads
        self.cache = EmbeddingCache() if cache is True else (cache or None)
        self._key: str | None = None
        self._run: Callable[[np.ndarray], np.ndarray] | None = None
        self._spec = None

    # ---- identity -------------------------------------------------------------------------------
    @property
    def spec(self):
        """The backbone's :class:`~imclass.models.spec.ModelSpec` (read without building the model when possible)."""
        if self._spec is None:
            self._spec = self._light_spec() or self.classifier.spec
        return self._spec

    @property
    def classifier(self):
        if self._clf is None:
            from ..classifier import Classifier

            self._clf = Classifier.load(self._name_or_path, device=self.device, backend="torch")
        return self._clf

    @property
    def key(self) -> str:
        """Cache key: hash of the backbone's weights, architecture, preprocessing and :data:`KEY_VERSION`."""
        if self._key is None:
            self._key = self._light_key() or self._model_key()
        return self._key

    def _light_spec(self):
        from ..models import default
        from ..models.bundle import is_bundle, manifest_to_spec, read_manifest

        name = self._name_or_path
        if name is None:
            return None
        if name in default.NAMES:
            from ..export.cache import recall_default

            found = recall_default()
            return found[0] if found else None
        if is_bundle(name):
            return manifest_to_spec(read_manifest(name), source=name)
        return None

    def _light_key(self) -> str | None:
        """A key from the weights *file* (no torch import) for the default model and bundles."""
        from ..models import default
        from ..models.bundle import WEIGHTS, is_bundle, read_manifest

        name = self._name_or_path
        if name is None:
            return None
        if name in default.NAMES:
            return _key("default", _file_sha256(default.weights_path()), {"arch": default.ARCH})
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
    def _runner(self) -> Callable[[np.ndarray], np.ndarray]:
        if self._run is None:
            model = feature_module(self.classifier.model)
            spec = self.classifier.spec
            use_onnx = self.backend_name == "onnx" or (
                self.backend_name == "auto" and resolve_device(self.device) == "cpu")
            if use_onnx:
                try:
                    from ..engine.onnx_backend import OnnxBackend

                    self._run = OnnxBackend(cached_feature_onnx(model, spec, self.key), spec.preprocess,
                                            threads=self.threads)
                except Exception as e:
                    if self.backend_name == "onnx":
                        raise
                    log.warning("ONNX Runtime unavailable for embeddings (%s); using torch", e)
            if self._run is None:
                from ..engine.backends import TorchBackend

                self._run = TorchBackend(model, spec.preprocess, device=self.device, threads=self.threads)
        return self._run

    def decode(self, item: Any) -> np.ndarray:
        pre = self.spec.preprocess
        return pre.to_array(load_image(item, draft_size=pre.draft_size()))

    def embed(self, items: Sequence[Any], shas: Sequence[str | None] | None = None, *,
              batch_size: int = DEFAULT_BATCH_SIZE, workers: int | None = None,
              progress: Callable[[int], None] | None = None) -> Embeddings:
        """Embeddings of ``items`` (paths, PIL images, bytes). With ``shas`` (content hashes), cached vectors
        are reused and new ones stored; items with the same hash are computed once. ``progress(n)`` is called
        with the number of items finished (cached ones at once)."""
        from ..classifier import default_workers

        n = len(items)
        errors: list[str | None] = [None] * n
        found: dict[str, np.ndarray] = {}
        if shas is not None and self.cache is not None:
            found = self.cache.get(self.key, [s for s in shas if s])
        todo: list[int] = []
        first_of: dict[str, int] = {}
        for i in range(n):
            sha = shas[i] if shas is not None else None
            if sha and sha in found:
                continue
            if sha and sha in first_of:
                continue  # same content as an earlier item: computed once
            if sha:
                first_of[sha] = i
            todo.append(i)
        if progress is not None and n - len(todo):
            progress(n - len(todo))
        computed: dict[int, np.ndarray] = {}
        if todo:
            run = self._runner()

            def infer(batch: np.ndarray, names: list[str]) -> list[Prediction]:
                feats = np.asarray(run(batch), dtype=np.float32)
                return [_Row(nm, f) for nm, f in zip(names, feats)]

            indexed = [(i, items[i]) for i in todo]
            for batch in run_batches(indexed, decode=lambda it: self.decode(it[1]), infer=infer,
                                     name_of=lambda it: str(it[0]),
                                     batch_size=batch_size, workers=default_workers() if workers is None else workers):
                new = []
                for row in batch:
                    i = int(row.path)
                    if isinstance(row, _Row):
                        computed[i] = row.vector
                        if shas is not None and shas[i]:
                            new.append((shas[i], row.vector))
                    else:
                        errors[i] = row.error
                if new and self.cache is not None:
                    self.cache.put(self.key, new)
                if progress is not None:
                    progress(len(batch))
        dim = next(iter(computed.values())).size if computed else (next(iter(found.values())).size if found else 0)
        vectors = np.full((n, dim), np.nan, dtype=np.float32)
        for i in range(n):
            sha = shas[i] if shas is not None else None
            if i in computed:
                vectors[i] = computed[i]
            elif sha and sha in found:
                vectors[i] = found[sha]
            elif sha and sha in first_of and first_of[sha] in computed:
                vectors[i] = computed[first_of[sha]]
            elif sha and sha in first_of and errors[first_of[sha]] is not None and errors[i] is None:
                errors[i] = errors[first_of[sha]]
            elif errors[i] is None:
                errors[i] = "not embedded"
        return Embeddings(vectors, errors, self.key, computed=len(computed))


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


class _Row(Prediction):
    def __init__(self, path: str, vector: np.ndarray):
        super().__init__(path)
        self.vector = vector


def _key(kind: str, weights: str, extra: dict[str, Any]) -> str:
    blob = json.dumps({"kind": kind, "weights": weights, "extra": extra, "v": KEY_VERSION}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def _file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def cached_feature_onnx(model, spec, key: str) -> Path:
    """A verified ONNX export of a feature module, cached under ``<cache dir>/onnx/features-<key>.onnx``."""
    from ..engine.backends import TorchBackend
    from ..engine.onnx_backend import OnnxBackend
    from ..export.cache import ExportError, cache_dir, synthetic_batch
    from ..export.onnx import export_onnx

    path = cache_dir() / "onnx" / f"features-{key}.onnx"
    if path.is_file():
        return path
    tmp = path.with_name(f"{path.stem}.{os.getpid()}.onnx")
    try:
        export_onnx(model, spec.preprocess, tmp)
        batch = synthetic_batch(spec, 4)
        ref = TorchBackend(model, spec.preprocess, device="cpu")(batch)
        got = OnnxBackend(tmp, spec.preprocess)(batch)
        diff = float(np.abs(ref - got).max()) / max(1.0, float(np.abs(ref).max()))
        if ref.shape != got.shape or diff > 1e-3:
            raise ExportError(f"feature export disagrees with torch (relative difference {diff:.2e})")
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path
