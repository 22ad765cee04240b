"""ONNX export, the ONNX Runtime backend, static INT8 quantisation and the parity check, on a tiny model."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
torch = pytest.importorskip("torch")
timm = pytest.importorskip("timm")

from imclass.engine.backends import TorchBackend  # noqa: E402
from imclass.engine.onnx_backend import OnnxBackend  # noqa: E402
from imclass.export import export_onnx, freeze_same_padding, parity, quantize_int8, read_metadata  # noqa: E402
from imclass.preprocess import Preprocess  # noqa: E402

PRE = Preprocess(input_size=(64, 64))


def tiny_model():
    # TF-style "same" padding (as in the default tf_efficientnet_lite0) exercises freeze_same_padding.
    torch.manual_seed(0)
    return timm.create_model("test_efficientnet", pretrained=False, num_classes=4, pad_type="same").eval()


@pytest.fixture(scope="module")
def model():
    return tiny_model()


@pytest.fixture(scope="module")
def fp32(model, tmp_path_factory):
    return export_onnx(model, PRE, tmp_path_factory.mktemp("onnx") / "model.onnx")


def torch_logits(model, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()


def ort_logits(path, x: np.ndarray, fused: bool = True) -> np.ndarray:
    """``fused=False``: the graph as written (Q/DQ pairs around float operators, no int8 kernels)."""
    options = ort.SessionOptions()
    if not fused:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return sess.run(None, {"pixels": x})[0]


def normalised(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 3, *PRE.input_size)).astype(np.float32)


def test_freeze_same_padding_is_exact_and_leaves_the_model_alone(model):
    frozen = freeze_same_padding(model, PRE.input_size)
    assert frozen is not model
    assert not any("Same" in type(m).__name__ for m in frozen.modules())
    assert sum("Same" in type(m).__name__ for m in model.modules()) > 0
    x = normalised(2)
    np.testing.assert_allclose(torch_logits(frozen, x), torch_logits(model, x), atol=1e-6)
    plain = timm.create_model("test_efficientnet", pretrained=False, num_classes=4)
    assert freeze_same_padding(plain, PRE.input_size) is plain  # nothing to freeze: no copy


@pytest.mark.parametrize("batch", [1, 5])
def test_onnx_logits_equal_torch_at_any_batch_size(model, fp32, batch):
    x = normalised(batch, seed=batch)
    out = ort_logits(fp32, x)
    assert out.shape == (batch, 4) and out.dtype == np.float32
    np.testing.assert_allclose(out, torch_logits(model, x), atol=1e-4, rtol=0)


def test_exported_graph_is_valid_and_self_describing(fp32):
    proto = onnx.load(str(fp32))
    onnx.checker.check_model(proto)
    assert [i.name for i in proto.graph.input] == ["pixels"]
    assert [o.name for o in proto.graph.output] == ["logits"]
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    assert not any(n.op_type == "Shape" for n in proto.graph.node)  # "same" padding was frozen
    meta = read_metadata(fp32)
    assert Preprocess.from_dict(json.loads(meta["imclass.preprocess"])) == PRE
    assert meta["imclass.input"] == "normalized_nchw_float32"


def test_onnx_backend_equals_torch_backend_on_uint8(model, fp32):
    batch = np.random.default_rng(1).integers(0, 256, (3, *PRE.input_size, 3), dtype=np.uint8)
    onnx_be = OnnxBackend(fp32, PRE, threads=1)
    torch_be = TorchBackend(copy.deepcopy(model), PRE, device="cpu", threads=1)
    assert (onnx_be.name, onnx_be.device) == ("onnx", "cpu")
    out = onnx_be(batch)
    assert out.shape == (3, 4) and out.dtype == np.float32
    np.testing.assert_allclose(out, torch_be(batch), atol=1e-4, rtol=0)
    np.testing.assert_allclose(onnx_be.normalize(batch), PRE.normalize(batch), atol=1e-5)
    assert OnnxBackend(fp32, threads=1).preprocess == PRE  # read back from the file's metadata


def test_parity_catches_a_broken_export(model, fp32, tmp_path):
    proto = onnx.load(str(fp32))
    gemm = next(n for n in proto.graph.node if n.op_type == "Gemm")
    for init in proto.graph.initializer:
        if init.name in gemm.input[1:]:  # negate the classifier: arg-max becomes arg-min
            arr = -onnx.numpy_helper.to_array(init)
            init.CopyFrom(onnx.numpy_helper.from_array(arr, init.name))
    broken = tmp_path / "broken.onnx"
    onnx.save(proto, str(broken))

    batches = [normalised(8, seed=s) for s in range(3)]
    ref = lambda x: torch_logits(model, x)  # noqa: E731
    good = parity(ref, lambda x: ort_logits(fp32, x), batches)
    bad = parity(ref, lambda x: ort_logits(broken, x), batches)
    assert good["n"] == bad["n"] == 24
    assert good["top1_agreement"] == 1.0 and good["max_abs_prob_diff"] < 1e-4
    assert bad["top1_agreement"] < 0.5 and bad["max_abs_prob_diff"] > 0.01
    assert good["mean_kl"] < 1e-8 < 1e-5 < bad["mean_kl"]  # this random model is nearly uniform: small KLs


def test_parity_mean_kl_matches_its_definition():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(5, 4)), rng.normal(size=(5, 4))
    p, q = (np.exp(x) / np.exp(x).sum(1, keepdims=True) for x in (a, b))
    expected = float((p * np.log(p / q)).sum(1).mean())
    assert parity(lambda x: a, lambda x: b, [None])["mean_kl"] == pytest.approx(expected, rel=1e-9)
    sa, sb = 1 / (1 + np.exp(-a)), 1 / (1 + np.exp(-b))
    bern = float((sa * np.log(sa / sb) + (1 - sa) * np.log((1 - sa) / (1 - sb))).sum(1).mean())
    assert parity(lambda x: a, lambda x: b, [None], multi_label=True)["mean_kl"] == pytest.approx(bern, rel=1e-9)


def test_parity_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="shapes differ"):
        parity(lambda x: np.zeros((2, 3)), lambda x: np.zeros((2, 4)), [None])


def test_int8_static_quantisation_runs_and_shrinks_the_model(model, fp32, tmp_path):
    calib = [normalised(8, seed=10 + s) for s in range(2)]
    int8 = quantize_int8(fp32, tmp_path / "model.int8.onnx", iter(calib), per_channel=True, method="minmax",
                         exclude_first_convs=1)
    assert int8.stat().st_size < fp32.stat().st_size
    proto = onnx.load(str(int8))
    assert any(n.op_type == "QuantizeLinear" for n in proto.graph.node)
    producer = {o: n.op_type for n in proto.graph.node for o in n.output}
    convs = [n for n in proto.graph.node if n.op_type == "Conv"]
    assert producer.get(convs[0].input[1]) is None  # the stem kept its float weights
    assert all(producer.get(c.input[1]) == "DequantizeLinear" for c in convs[1:])
    meta = read_metadata(int8)
    info = json.loads(meta["imclass.quantization"])
    assert "imclass.preprocess" in meta and info["per_channel"] is True
    assert info["excluded"] == [convs[0].name] and info["bias_corrected"] == len(convs)  # other convs + Gemm
    batch = np.random.default_rng(2).integers(0, 256, (5, *PRE.input_size, 3), dtype=np.uint8)
    out = OnnxBackend(int8, PRE, threads=1)(batch)
    assert out.shape == (5, 4) and np.isfinite(out).all()
    report = parity(OnnxBackend(fp32, PRE, threads=1), OnnxBackend(int8, PRE, threads=1), [batch])
    assert report["n"] == 5 and 0.0 <= report["top1_agreement"] <= 1.0


def test_calibration_runs_a_few_images_at_a_time_whatever_the_batches(fp32, tmp_path, monkeypatch):
    from imclass.export import quantize as onnx_mod

    seen: list[int] = []
    real = onnx_mod._BatchReader.get_next

    def spy(self):
        feed = real(self)
        if feed:
            seen.append(len(next(iter(feed.values()))))
        return feed

    monkeypatch.setattr(onnx_mod._BatchReader, "get_next", spy)
    calib = [normalised(10, seed=30), normalised(3, seed=31)]
    int8 = quantize_int8(fp32, tmp_path / "q.onnx", calib, method="minmax", exclude_first_convs=1)
    assert seen == [4, 4, 2, 3] and onnx_mod.CALIBRATION_RUN == 4
    assert json.loads(read_metadata(int8)["imclass.quantization"])["calibration_images"] == 13


def test_work_dir_reuses_setting_independent_work_and_drops_it_for_other_inputs(fp32, tmp_path):
    calib = [normalised(8, seed=20 + s) for s in range(2)]
    work = tmp_path / "work"
    fresh = quantize_int8(fp32, tmp_path / "fresh.onnx", calib, method="minmax", exclude_first_convs=1)
    first = quantize_int8(fp32, tmp_path / "a.onnx", calib, method="minmax", exclude_first_convs=1, work_dir=work)
    made = {p.name: p.stat().st_mtime_ns for p in work.iterdir()}
    assert {"key.txt", "pre.onnx", "means-pre.json"} <= set(made) and any(n.startswith("ranges-minmax") for n in made)
    # another setting on the same model and batches: nothing is recomputed, and the result is the same
    # as quantising from scratch
    quantize_int8(fp32, tmp_path / "b.onnx", calib, method="minmax", exclude_first_convs=2, work_dir=work)
    assert {p.name: p.stat().st_mtime_ns for p in work.iterdir()} == made
    batch = np.random.default_rng(3).integers(0, 256, (4, *PRE.input_size, 3), dtype=np.uint8)
    np.testing.assert_array_equal(OnnxBackend(first, PRE, threads=1)(batch), OnnxBackend(fresh, PRE, threads=1)(batch))
    # other calibration batches: the cached work no longer applies and is rebuilt
    (work / "unrelated.txt").write_text("the caller's own file")
    key = (work / "key.txt").read_text()
    quantize_int8(fp32, tmp_path / "c.onnx", [normalised(8, seed=99)], method="minmax", work_dir=work)
    assert (work / "key.txt").read_text() != key and (work / "unrelated.txt").exists()
    assert (work / "means-pre.json").stat().st_mtime_ns != made["means-pre.json"]


def test_bias_correction_cancels_the_mean_error_of_weight_rounding(tmp_path):
    # One conv on inputs with a large mean: weight rounding shifts every output channel by (W_q - W) @ mean.
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.AdaptiveAvgPool2d(1),
                              torch.nn.Flatten(), torch.nn.Linear(8, 4)).eval()
    pre = Preprocess(input_size=(16, 16))
    fp32 = export_onnx(net, pre, tmp_path / "conv.onnx")
    x = (3.0 + 0.3 * np.random.default_rng(0).standard_normal((32, 3, 16, 16))).astype(np.float32)
    ref = ort_logits(fp32, x)
    err = {}
    for corrected in (False, True):
        path = quantize_int8(fp32, tmp_path / f"q{corrected}.onnx", [x], bias_correction=corrected)
        # the quantised model's arithmetic, not the CPU's int8 kernels: on x86 CPUs without VNNI (AVX2 only)
        # ONNX Runtime's u8s8 kernels saturate 16-bit sums, an error of their own, 20x this rounding's here
        err[corrected] = float(np.abs((ort_logits(path, x, fused=False) - ref).mean(axis=0)).mean())
    assert err[True] < 0.5 * err[False]


def test_quantize_int8_refuses_bad_arguments(fp32, tmp_path):
    calib = [normalised(2)]
    with pytest.raises(ValueError, match="calibration method"):
        quantize_int8(fp32, tmp_path / "q.onnx", calib, method="magic")
    with pytest.raises(ValueError, match="no such nodes"):
        quantize_int8(fp32, tmp_path / "q.onnx", calib, nodes_to_exclude=["not-a-node"])
    with pytest.raises(ValueError, match="at least one"):
        quantize_int8(fp32, tmp_path / "q.onnx", [])
