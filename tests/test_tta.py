"""Test-time augmentation (``--tta``): each image is also run mirrored and the two outputs are averaged."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import SAMPLES
from imclass.cli import main


def test_tta_outputs_are_the_mean_of_the_image_and_its_mirror(default_clf):
    batch = np.stack([default_clf.decode(p) for p in sorted(SAMPLES.iterdir()) if p.suffix in (".jpg", ".png")])
    plain = default_clf.backend(batch)
    mirrored = default_clf.backend(np.ascontiguousarray(batch[:, :, ::-1]))
    assert not np.allclose(plain, mirrored)  # the mirror really is another input
    tta = default_clf.with_tta()
    assert tta.tta and not default_clf.tta and tta.backend is default_clf.backend  # a copy sharing the runtime
    logits, known = tta.outputs(batch)
    np.testing.assert_allclose(logits, (plain + mirrored) / 2, rtol=1e-5, atol=1e-5)
    assert known is None
    # a symmetric image gives the same output with and without
    sym = np.ascontiguousarray(np.concatenate([batch[:1, :, :112], batch[:1, :, :112][:, :, ::-1]], axis=2))
    np.testing.assert_allclose(tta.outputs(sym)[0], default_clf.outputs(sym)[0], rtol=1e-4, atol=1e-4)


def test_predict_and_evaluate_take_tta(tmp_path, capsys):
    assert main(["predict", str(SAMPLES), "--tta", "--json", "-q"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["label"] for r in rows] == ["tripod", "Egyptian cat", "espresso", "palace"]
    data = tmp_path / "data"
    for label, name in [("espresso", "coffee.jpg"), ("palace", "palace.jpg")]:
        (data / label).mkdir(parents=True)
        (data / label / name).write_bytes((SAMPLES / name).read_bytes())
    assert main(["evaluate", str(data), "--split", "all", "--tta", "--json", "-q"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["tta"] == "flip" and metrics["accuracy"] == 1.0


def test_tta_with_ray_is_refused(capsys):
    pytest.importorskip("ray")
    assert main(["predict", str(SAMPLES), "--tta", "--ray"]) == 1
    assert "--tta does not work with --ray" in capsys.readouterr().err
