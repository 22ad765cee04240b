"""Backbones side by side: ``lite0+lite1`` is one network whose features are its parts' pooled features, concatenated.

A probe on two backbones' features can beat either alone (flowers5: Lite0 0.726, Lite1 0.722, Lite0|Lite1 0.754;
``bench/probe_features.py``), and the result stays one ordinary network
(:class:`~imclass.models.concat_net.ConcatNet`): every part runs on the same input, their pre-logit features are
concatenated and one classifier sits on top, so bundles, ONNX export, the known-class score (its ``pre_logits``
tap) and serving work as for one backbone.

One input for all parts: the preprocessing (size, crop, interpolation) of the part with the largest input, so no
part sees fewer pixels than it was trained on; each part gets the input normalised with its own mean and
standard deviation (an affine map inside the network when they differ). A bundle's architecture entry lists the
parts' entries::

    {"family": "concat", "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5],
     "parts": [{"family": "timm", "name": "tf_efficientnet_lite0", "kwargs": {},
                "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}, ...]}

Only timm-style backbones (``forward_features`` / ``forward_head``) can be parts. The network itself is
:class:`imclass.models.concat_net.ConcatNet` (this module does not import torch: embedding caches use it).
"""

from __future__ import annotations

import os
from dataclasses import replace

from ..preprocess import Preprocess
from .spec import ModelSpec

SEP = "+"


def parts_of(name: str | os.PathLike) -> list[str] | None:
    """The part names of a concatenation name (``lite0+lite1`` -> ``["lite0", "lite1"]``), else None. A path that
    exists is never a concatenation (a bundle folder may have ``+`` in its name)."""
    text = os.fspath(name).strip()
    if SEP not in text or os.path.exists(text) or text.startswith(("hf:", "mlflow:")):
        return None
    parts = [p.strip() for p in text.split(SEP)]
    if len(parts) < 2 or not all(parts):
        return None
    return parts


def shared_preprocess(preprocesses: list[Preprocess]) -> Preprocess:
    """The one input of a concatenation: the geometry of the part with the largest input (the first on ties),
    with that part's normalisation (each part renormalises inside the network)."""
    return max(preprocesses, key=lambda p: p.input_size[0] * p.input_size[1])


def part_preprocess(shared: Preprocess, own: Preprocess) -> Preprocess:
    """What a part computes on inside the network: the shared geometry with the part's own normalisation."""
    return replace(shared, mean=own.mean, std=own.std)


def concat_spec(name: str, parts: list[ModelSpec]) -> ModelSpec:
    """The spec of a concatenation of ``parts`` (a backbone: its labels are empty until a head is trained)."""
    pre = shared_preprocess([p.preprocess for p in parts])
    arch = {"family": "concat", "mean": list(pre.mean), "std": list(pre.std), "parts": [
        {**p.architecture, "mean": list(p.preprocess.mean), "std": list(p.preprocess.std)} for p in parts]}
    return ModelSpec(architecture=arch, labels=[], preprocess=pre, source=name,
                     provenance={"name": " + ".join(str(p.provenance.get("name") or p.model_id) for p in parts),
                                 "weights": [p.provenance.get("weights") for p in parts],
                                 "parts": [p.source for p in parts]})
