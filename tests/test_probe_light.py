"""Torch-free probe retraining: once a backbone is recorded (imclass.features.frozen), a probe on cached embeddings
writes its bundle from arrays and a composed ONNX graph; that bundle is the same network the torch path makes."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from test_train import COLOURS, blob_image, blobs  # noqa: F401 (blobs: a fixture)


def _outputs(path, images):
    """(torch outputs, ONNX Runtime outputs) of the bundle at ``path`` on ``images``."""
    import imclass
    from imclass.engine.backends import TorchBackend
    from imclass.models.bundle import load_bundle

    model, spec = load_bundle(path)
    batch = np.stack([spec.preprocess.load(p) for p in images])
    clf = imclass.load(path, device="cpu")
    assert clf.runtime["backend"] == "onnx"
    return TorchBackend(model, spec.preprocess, device="cpu")(batch), clf.backend(batch)


def _light_run(data, out, **options):
    """Train twice: the first run records the backbone (when no earlier test did), the second is the light one."""
    import imclass
    from imclass.features import Embedder
    from imclass.features.frozen import recall

    if recall(Embedder("default").key) is None:
        imclass.train(data, out=out.parent / f"{out.name}-first", seed=0, **options)
    assert recall(Embedder("default").key) is not None
    clf, result = imclass.train(data, out=out, seed=0, **options)
    manifest = json.loads((out / "imclass.json").read_text())
    assert manifest["exports"]["onnx"]["fp32"] == "model.onnx" and (out / "model.onnx").is_file()
    return clf, result


@pytest.mark.slow
def test_a_light_probe_is_the_network_the_torch_path_makes(blobs, tmp_path):  # noqa: F811
    import imclass

    clf, result = _light_run(blobs, tmp_path / "light")
    assert result.metrics["unknown"]["parts"]  # the known-class score is part of the network
    images = sorted(str(p) for p in blobs.rglob("*.jpg"))[::3]
    torch_out, onnx_out = _outputs(tmp_path / "light", images)
    n_cal = json.loads((tmp_path / "light" / "imclass.json").read_text())["open_set"]["calibration"]
    np.testing.assert_allclose(onnx_out[:, :-1], torch_out[:, :-1], atol=1e-3)
    # the known score is a p-value over n_cal images: float rounding may move it by a step or two
    assert np.abs(onnx_out[:, -1] - torch_out[:, -1]).max() <= 2.5 / (n_cal + 1)
    # the torch path (no out: never light) fits the same head on the same embeddings
    reference, _ = imclass.train(blobs, seed=0)
    from imclass.engine.backends import TorchBackend

    batch = np.stack([reference.spec.preprocess.load(p) for p in images])
    ref = TorchBackend(reference.model, reference.spec.preprocess, device="cpu")(batch)
    np.testing.assert_allclose(torch_out[:, :-1], ref[:, :-1], atol=1e-3)
    assert np.abs(torch_out[:, -1] - ref[:, -1]).max() <= 2.5 / (n_cal + 1)
    assert [p.label for p in clf.predict(images)] == [p.label for p in reference.predict(images)]


def test_a_light_multi_label_probe(tmp_path):
    rng = np.random.default_rng(3)
    rows = ["filename,labels"]
    for i in range(48):
        red, square = i % 2 == 0, (i // 2) % 2 == 0
        blob_image(tmp_path / "img" / f"{i}.jpg", COLOURS["red"] if red else COLOURS["blue"], rng, square=square)
        rows.append(f"img/{i}.jpg," + " ".join(lab for lab, on in (("red", red), ("square", square)) if on))
    (tmp_path / "tags.csv").write_text("\n".join(rows) + "\n")
    _clf, result = _light_run(tmp_path / "tags.csv", tmp_path / "run")
    assert result.metrics["task"] == "multi_label"
    torch_out, onnx_out = _outputs(tmp_path / "run", [tmp_path / "img" / f"{i}.jpg" for i in range(12)])
    np.testing.assert_allclose(onnx_out[:, :-1], torch_out[:, :-1], atol=1e-3)
    import onnx

    onnx.checker.check_model(str(tmp_path / "run" / "model.onnx"))  # written without onnx's helpers


def test_onnx_messages_without_the_onnx_package():
    import onnx
    from onnx import helper, numpy_helper

    from imclass.engine import onnx_proto

    onnx_proto.pb.cache_clear()
    try:
        assert onnx_proto.pb().ModelProto is onnx.ModelProto
        w = np.arange(6, dtype=np.float32).reshape(2, 3)
        assert onnx_proto.tensor(w, "w") == numpy_helper.from_array(w, "w")
        assert onnx_proto.tensor(np.array([1, 2], np.int64), "i") == numpy_helper.from_array(np.array([1, 2]), "i")
        mine = onnx_proto.node("ReduceMin", ["x"], ["y"], "/n", axes=[1], keepdims=0)
        assert mine == helper.make_node("ReduceMin", ["x"], ["y"], name="/n", axes=[1], keepdims=0)
        assert onnx_proto.node("Cast", ["x"], ["y"], "/c", to=1) == helper.make_node("Cast", ["x"], ["y"], name="/c",
                                                                                    to=1)
        assert onnx_proto.float_output("logits", ["batch", 4]) == helper.make_tensor_value_info(
            "logits", onnx.TensorProto.FLOAT, ["batch", 4])
        with pytest.raises(TypeError):
            onnx_proto.node("X", [], [], "/x", bad="text")
    finally:
        onnx_proto.pb.cache_clear()


@pytest.mark.slow
def test_a_fresh_process_writes_the_head_without_importing_onnx(tmp_path):
    script = (
        "import sys\n"
        "from imclass.engine import onnx_proto as P\n"
        "m = P.pb().ModelProto(ir_version=8)\n"
        "m.graph.node.append(P.node('Identity', ['a'], ['b'], '/i'))\n"
        f"open({str(tmp_path / 'm.onnx')!r}, 'wb').write(m.SerializeToString())\n"
        "print('onnx' in sys.modules, 'ml_dtypes' in sys.modules)\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "False"]
    import onnx

    assert onnx.load(str(tmp_path / "m.onnx")).graph.node[0].op_type == "Identity"


@pytest.mark.slow
def test_retraining_and_predicting_a_probe_never_imports_torch_or_scikit_learn(blobs, tmp_path):  # noqa: F811
    import imclass

    imclass.train(blobs, out=tmp_path / "first", seed=0)  # records the backbone, fills the embedding cache
    script = (
        "import sys, imclass\n"
        f"clf, result = imclass.train({str(blobs)!r}, out={str(tmp_path / 'again')!r}, seed=1)\n"
        f"rows = imclass.load({str(tmp_path / 'again')!r}).predict({str(blobs)!r})\n"
        "assert len(rows) == 60 and all(r.error is None for r in rows), rows[:3]\n"
        "print('torch' in sys.modules or 'sklearn' in sys.modules, result.metrics['val']['accuracy'])\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    imported, accuracy = done.stdout.split()
    assert imported == "False"
    assert float(accuracy) >= 0.9


@pytest.mark.parametrize("classes,balanced", [(2, False), (2, True), (4, False), (4, True)])
def test_the_numpy_head_is_scikit_learns_logistic_regression(classes, balanced):
    """Same objective, scaling, solver settings and warm start as LogisticRegression(solver="lbfgs")."""
    import warnings

    from sklearn.linear_model import LogisticRegression

    from imclass.features.head import logistic_regression

    rng = np.random.default_rng(classes)
    y = np.r_[np.arange(classes), rng.integers(0, classes, 150) ** 2 % classes]  # unbalanced
    x = rng.normal(size=(len(y), 40)) + np.eye(classes, 40)[y] * 1.5
    ref = LogisticRegression(tol=1e-3, max_iter=2000, warm_start=True, class_weight="balanced" if balanced else None)
    target = (y == 1).astype(float) if classes == 2 else np.eye(classes)[y]
    weights = None
    if balanced:
        counts = np.bincount(y)
        weights = (len(y) / (classes * counts))[y]
    warm = None
    for c in (0.01, 0.3, 3.0):  # each C starts from the previous solution, as the C grid runs
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ref.set_params(C=c).fit(x, y)
        warm = logistic_regression(x, target, c, weights, warm=warm)
        want = np.c_[ref.coef_, ref.intercept_]
        assert warm.shape == want.shape
        assert np.abs(x @ warm[:, :-1].T + warm[:, -1] - (x @ want[:, :-1].T + want[:, -1])).max() < 1e-6
