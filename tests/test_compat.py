"""Bundles written by an earlier release keep loading and predicting the same.

``tests/fixtures/bundle-0.1.0`` was written by release 0.1.0 (commit in its ``expected.json``), with the
probabilities and labels that release gave on four seeded random images.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import imclass

OLD = Path(__file__).parent / "fixtures" / "bundle-0.1.0"


def _images() -> list[Image.Image]:
    rng = np.random.default_rng(7)
    return [Image.fromarray(rng.integers(0, 256, (48 + 8 * i, 80 - 8 * i, 3), dtype=np.uint8)) for i in range(4)]


@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_old_bundle_loads_and_predicts_the_same(backend):
    expected = json.loads((OLD / "expected.json").read_text())
    clf = imclass.load(OLD, device="cpu", backend=backend)
    assert clf.labels == ["cat", "coffee", "other"] and clf.spec.temperature == pytest.approx(1.3)
    probs = clf.predict_proba(_images())
    np.testing.assert_allclose(probs, np.asarray(expected["probabilities"]), atol=1e-5)
    assert [p.label for p in clf.predict(_images())] == expected["labels"]
