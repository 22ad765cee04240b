"""ONNX export of a torch classifier (the graph every ONNX Runtime backend runs).

The exported graph takes the *normalised* float32 NCHW batch ``pixels`` (dynamic batch axis) and returns
``logits``; :class:`~imclass.engine.onnx_backend.OnnxBackend` normalises ``uint8`` NHWC batches itself,
exactly as :class:`~imclass.engine.backends.TorchBackend` does. The preprocessing is recorded in the
graph's metadata (``imclass.preprocess``) so an ``.onnx`` file is self-describing.

timm's TensorFlow-style ``same`` padding (``Conv2dSame``, ``MaxPool2dSame``, ``AvgPool2dSame``, used by all
``tf_*`` models including the default EfficientNet-Lite0) computes its padding from the input size at run
time, which exports as ~150 shape-arithmetic nodes and an explicit ``Pad`` before every strided conv. The
input size is fixed by the preprocessing, so those pads are frozen to constants before export; ONNX Runtime
then fuses them into the convolutions.
"""

from __future__ import annotations

import copy
import json
import os
import warnings
from pathlib import Path

from ..fileio import atomic_path

INPUT_NAME = "pixels"
OUTPUT_NAME = "logits"
#: The ONNX opset every export uses.
OPSET = 17


def export_onnx(model, preprocess, path: str | os.PathLike, *, opset: int = OPSET) -> Path:
    """Export ``model`` (normalised float32 NCHW -> logits) to ``path`` and check the file.

    Uses the TorchScript exporter (``dynamo=False``): it needs no ``onnxscript`` and gives a plain,
    constant-folded graph. The model is not modified (a copy is exported when padding is frozen).
    """
    import onnx
    import torch

    path = Path(path)
    h, w = preprocess.input_size
    model = freeze_same_padding(model.eval(), (h, w))
    dummy = torch.zeros(1, 3, h, w)
    with atomic_path(path, suffix=".onnx") as tmp:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # "You are using the legacy TorchScript-based ..."
            warnings.filterwarnings("ignore", message="Constant folding - Only steps=1")  # reversed pads; ORT folds
            warnings.simplefilter("ignore", torch.jit.TracerWarning)  # shape checks in transformers models
            torch.onnx.export(
                model, (dummy,), str(tmp),
                input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
                opset_version=opset, do_constant_folding=True, dynamo=False,
            )
        proto = onnx.load(str(tmp))
        set_metadata(proto, {"imclass.preprocess": json.dumps(preprocess.to_dict()),
                              "imclass.input": "normalized_nchw_float32"})
        onnx.save(proto, str(tmp))
        onnx.checker.check_model(str(tmp), full_check=True)
    return path


def freeze_same_padding(model, input_size: tuple[int, int]):
    """Return ``model`` with timm's dynamic ``same`` padding replaced by constant padding for ``input_size``.

    Returns ``model`` itself when it has no such layers, otherwise a modified deep copy.
    """
    import torch
    from torch import nn

    try:
        from timm.layers.conv2d_same import Conv2dSame
        from timm.layers.padding import pad_same_arg
        from timm.layers.pool2d_same import AvgPool2dSame, MaxPool2dSame
    except ImportError:  # pragma: no cover - timm is a dependency
        return model
    same_types = (Conv2dSame, MaxPool2dSame, AvgPool2dSame)
    if not any(isinstance(m, same_types) for m in model.modules()):
        return model

    model = copy.deepcopy(model)
    sizes: dict[str, tuple[int, int]] = {}
    hooks = [m.register_forward_pre_hook(lambda _m, args, n=name: sizes.__setitem__(n, tuple(args[0].shape[-2:])))
             for name, m in model.named_modules() if isinstance(m, same_types)]
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, *input_size))
    finally:
        for hk in hooks:
            hk.remove()
    for name, size in sizes.items():
        m = model.get_submodule(name)
        if isinstance(m, Conv2dSame):
            plain = nn.Conv2d(m.in_channels, m.out_channels, m.kernel_size, m.stride, 0, m.dilation, m.groups,
                              bias=m.bias is not None)
            plain.weight, plain.bias = m.weight, m.bias
            pads, value = pad_same_arg(list(size), list(m.kernel_size), list(m.stride), list(m.dilation)), 0.0
        elif isinstance(m, MaxPool2dSame):
            plain = nn.MaxPool2d(m.kernel_size, m.stride, 0, m.dilation, ceil_mode=m.ceil_mode)
            pads, value = pad_same_arg(list(size), list(m.kernel_size), list(m.stride), list(m.dilation)), -float("inf")
        else:
            plain = nn.AvgPool2d(m.kernel_size, m.stride, 0, ceil_mode=m.ceil_mode,
                                 count_include_pad=m.count_include_pad)
            pads, value = pad_same_arg(list(size), list(m.kernel_size), list(m.stride), [1, 1]), 0.0
        pads = tuple(int(p) for p in pads)
        new = nn.Sequential(nn.ConstantPad2d(pads, value), plain) if any(pads) else plain
        parent_name, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, attr, new.train(m.training))
    return model


def set_metadata(proto, items: dict[str, str]) -> None:
    """Set ``metadata_props`` entries of an ONNX ``ModelProto`` (replacing entries with the same keys)."""
    keep = [p for p in proto.metadata_props if p.key not in items]
    del proto.metadata_props[:]
    proto.metadata_props.extend(keep)
    for k, v in items.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = k, v


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The ``metadata_props`` of an ONNX file (without loading the weights)."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    return {p.key: p.value for p in proto.metadata_props}
