"""Fine-tuning precision: bf16 autocast of the forward pass on CPUs with native bf16, fp32 forced by
``precision="fp32"`` or ``IMCLASS_NO_BF16=1``; weights, checkpoints and bundles stay float32."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

COLOURS = {"red": (215, 40, 40), "green": (40, 190, 60), "blue": (40, 60, 215)}


@pytest.fixture(scope="module")
def blobs(tmp_path_factory) -> Path:
    """Three colour classes, 12 small images each."""
    root = tmp_path_factory.mktemp("blobs")
    rng = np.random.default_rng(0)
    for name, colour in COLOURS.items():
        (root / name).mkdir()
        for i in range(12):
            arr = rng.normal(120, 25, (48, 64, 3)).clip(0, 255).astype(np.uint8)
            img = Image.fromarray(arr)
            x, y = int(rng.integers(2, 30)), int(rng.integers(2, 14))
            ImageDraw.Draw(img).ellipse([x, y, x + 30, y + 30], fill=colour)
            img.save(root / name / f"{name}_{i:02d}.jpg", quality=92)
    return root


def test_resolve_rules(monkeypatch):
    from imclass.training import precision as prec

    monkeypatch.delenv(prec.NO_BF16_ENV, raising=False)
    monkeypatch.setattr(prec, "bf16_supported", lambda: True)
    assert prec.resolve("auto", "cpu") == "bf16"
    assert prec.resolve("auto", "cpu", cpu_auto=False) == "fp32"  # from scratch: auto stays fp32
    assert prec.resolve("fp32", "cpu") == "fp32"
    assert prec.resolve("auto", "cuda") == "fp16" and prec.resolve("auto", "cuda:1") == "fp16"  # CUDA as before
    assert prec.resolve("fp32", "cuda") == "fp32"
    assert prec.resolve("auto", "mps") == "fp32"
    monkeypatch.setenv(prec.NO_BF16_ENV, "1")  # the forced fp32 path
    assert prec.resolve("auto", "cpu") == "fp32"
    assert prec.resolve("bf16", "cpu") == "bf16"  # asked for explicitly
    monkeypatch.setenv(prec.NO_BF16_ENV, "0")
    assert prec.resolve("auto", "cpu") == "bf16"
    monkeypatch.delenv(prec.NO_BF16_ENV)
    monkeypatch.setattr(prec, "bf16_supported", lambda: False)  # a CPU without native bf16
    assert prec.resolve("auto", "cpu") == "fp32"


def test_config_rejects_an_unknown_precision():
    from imclass.errors import ParameterError
    from imclass.training.config import TrainConfig

    assert TrainConfig().precision == "auto"
    with pytest.raises(ParameterError, match="precision"):
        TrainConfig(precision="fp16")


def _tiny_fit(precision: str):
    import torch

    from imclass.training.loop import fit

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
                                torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 2))
    seen = []
    model[0].register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    x = torch.randn(16, 3, 12, 12)
    y = (x.mean((1, 2, 3)) > 0).long()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    run = fit(model, opt, torch.nn.CrossEntropyLoss(), lambda e: [(x[:8], y[:8]), (x[8:], y[8:])], epochs=2,
              steps_per_epoch=2, precision=precision)
    return model, run, seen


def test_fit_autocasts_only_the_forward_pass():
    import torch

    model, run, seen = _tiny_fit("bf16")
    assert run.precision == "bf16" and not run.amp
    assert set(seen) == {torch.bfloat16}  # the convolution ran in bf16
    assert all(p.dtype == torch.float32 for p in model.parameters())  # weights (and so checkpoints) stay fp32
    assert all(np.isfinite(h["train_loss"]) for h in run.history)
    _, run32, seen32 = _tiny_fit("fp32")
    assert set(seen32) == {torch.float32} and run32.precision == "fp32"
    _, default, seen_default = _tiny_fit(None)  # on the CPU the default is fp32, as before
    assert default.precision == "fp32" and set(seen_default) == {torch.float32}


def test_bf16_training_writes_an_fp32_bundle_that_loads(blobs, tmp_path):
    import imclass

    clf, result = imclass.train(blobs, out=tmp_path / "bf16", mode="scratch", epochs=2, image_size=32,
                                batch_size=12, loader_workers=0, precision="bf16", calibrate=False)
    manifest = json.loads((tmp_path / "bf16" / "imclass.json").read_text())
    assert manifest["training"]["train_precision"] == "bf16"
    assert manifest["training"]["precision"] == "bf16"
    assert any("bfloat16" in n for n in result.metrics["notes"])
    from safetensors.numpy import load_file

    weights = load_file(str(tmp_path / "bf16" / "model.safetensors"))
    assert {str(w.dtype) for w in weights.values() if w.dtype.kind == "f"} == {"float32"}
    again = imclass.load(str(tmp_path / "bf16"), backend="torch")
    x = np.stack([again.decode(p) for p in sorted((blobs / "red").iterdir())[:3]])
    np.testing.assert_allclose(again.logits(x), imclass.Classifier(clf.model, clf.spec, backend="torch").logits(x),
                               rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("no_bf16", ["1", None])
def test_finetune_auto_and_the_forced_fp32_path(blobs, tmp_path, monkeypatch, no_bf16):
    """Fine-tuning under ``auto`` on a bf16 CPU runs bf16; with IMCLASS_NO_BF16=1 fp32 (as on a CPU without bf16),
    and the bundle says which."""
    import imclass
    from imclass.training import precision as prec

    monkeypatch.setattr(prec, "bf16_supported", lambda: True)  # as if this CPU had bf16, whatever it has
    if no_bf16:
        monkeypatch.setenv(prec.NO_BF16_ENV, no_bf16)
    else:
        monkeypatch.delenv(prec.NO_BF16_ENV, raising=False)
    _, result = imclass.train(blobs, out=tmp_path / "ft", mode="finetune", epochs=1, image_size=32,
                              batch_size=12, loader_workers=0, calibrate=False, unknown_coverage=None)
    manifest = json.loads((tmp_path / "ft" / "imclass.json").read_text())
    assert manifest["training"]["precision"] == "auto"
    assert manifest["training"]["train_precision"] == ("fp32" if no_bf16 else "bf16")
    assert any("bfloat16" in n for n in result.metrics["notes"]) is not bool(no_bf16)
    assert imclass.load(str(tmp_path / "ft"), backend="torch").spec.labels == sorted(COLOURS)


def test_cli_option(blobs, tmp_path, capsys):
    from imclass.cli import main

    assert main(["train", str(blobs), "--mode", "scratch", "--train-precision", "fp8", "--out",
                 str(tmp_path / "x")]) != 0
    assert "--train-precision" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
