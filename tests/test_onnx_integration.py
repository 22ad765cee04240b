"""The ONNX Runtime backend inside Classifier and `imclass export` bundles."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import timm
from PIL import Image

from conftest import SAMPLES, run_cli
from imclass.classifier import Classifier
from imclass.engine.onnx_cache import ExportError
from imclass.engine.onnx_export import read_metadata
from imclass.errors import ImclassError
from imclass.export import bundle as export_mod
from imclass.export.bundle import export_bundle
from imclass.models.spec import ModelSpec
from imclass.preprocess import Preprocess


def tiny(backend="auto", seed=0) -> Classifier:
    import torch

    torch.manual_seed(seed)
    model = timm.create_model("test_efficientnet", pretrained=False, num_classes=3).eval()
    spec = ModelSpec(architecture={"family": "timm", "name": "test_efficientnet", "kwargs": {}},
                     labels=["red", "green", "blue"], preprocess=Preprocess(input_size=(64, 64), crop_pct=1.0))
    return Classifier(model, spec, device="cpu", backend=backend)


@pytest.fixture
def photos(tmp_path):
    rng = np.random.default_rng(1)
    out = []
    for i in range(80):
        arr = np.zeros((80, 96, 3), np.uint8)
        arr[..., i % 3] = 160 + rng.integers(0, 90)
        arr[20:50, 30:70] = rng.integers(0, 255, size=3)
        p = tmp_path / "photos" / f"p{i:02d}.jpg"
        p.parent.mkdir(exist_ok=True)
        Image.fromarray(arr).save(p, quality=92)
        out.append(str(p))
    return out


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("IMCLASS_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_auto_on_cpu_uses_a_cached_onnx_export_that_matches_torch(photos, cache):
    auto, ref = tiny("auto"), tiny("torch")
    assert auto.backend.name == "onnx" and ref.backend.name == "torch"
    files = list((cache / "onnx").glob("*.onnx"))
    assert len(files) == 1
    a, b = auto.predict_proba(photos), ref.predict_proba(photos)
    assert np.abs(a - b).max() < 1e-4
    mtime = files[0].stat().st_mtime_ns
    assert tiny("onnx").backend.path == str(files[0]) and files[0].stat().st_mtime_ns == mtime  # reused
    other = tiny("onnx", seed=1)  # other weights -> another export
    assert other.backend.path != str(files[0])


def test_int8_backend_needs_an_export():
    with pytest.raises(ImclassError, match="imclass export"):
        tiny("onnx-int8").backend  # noqa: B018
    with pytest.raises(ImclassError, match="unknown backend"):
        tiny("tensorrt")


def test_export_bundle_with_int8_round_trip(photos, tmp_path):
    res = export_bundle(tiny("torch"), tmp_path / "exp", int8=True, images=photos, force=True)
    manifest = json.loads((tmp_path / "exp" / "imclass.json").read_text())
    onnx = manifest["exports"]["onnx"]
    assert onnx["fp32"] == "model.onnx" and onnx["int8"] == "model.int8.onnx"
    assert onnx["parity"]["fp32"]["top1_agreement"] == 1.0 and onnx["parity"]["fp32"]["images"] == "photos"
    assert onnx["parity"]["fp32"]["n"] == 40  # the alternate half of the photos, never the calibration half
    assert onnx["parity"]["int8"]["calibration_images"] == 40
    assert (tmp_path / "exp" / "model.int8.onnx").stat().st_size < (tmp_path / "exp" / "model.onnx").stat().st_size
    assert res.parity == onnx["parity"]
    # every candidate setting was tried and scored on the calibration photos; the lowest mean KL was kept
    quant = onnx["quantization"]
    search = quant["search"]
    assert len(search) == len(export_mod.INT8_CANDIDATES) >= 2 and res.quantization == quant
    best = min(search, key=lambda c: c["calibration_mean_kl"])
    assert all(quant[k] == best[k] for k in ("method", "exclude_first_convs", "per_channel"))
    assert all(c["calibration_mean_kl"] >= 0 and 0 <= c["calibration_top1_agreement"] <= 1 for c in search)
    recorded = json.loads(read_metadata(tmp_path / "exp" / "model.int8.onnx")["imclass.quantization"])
    assert recorded["method"] == quant["method"] and recorded["calibration_images"] == 40
    fp32 = Classifier.load(tmp_path / "exp", device="cpu", backend="onnx")
    assert fp32.backend.path.endswith("model.onnx")
    ref = tiny("torch").predict_proba(photos)
    assert np.abs(fp32.predict_proba(photos) - ref).max() < 1e-4
    q = Classifier.load(tmp_path / "exp", device="cpu", backend="onnx-int8")
    assert q.backend.path.endswith("model.int8.onnx")
    assert q.predict_proba(photos).shape == ref.shape


# Loads a bundle with one backend in a fresh process, predicts, and reports whether torch was imported.
TORCH_FREE_PREDICT = textwrap.dedent("""
    import json, sys
    from imclass.classifier import Classifier

    clf = Classifier.load(sys.argv[1], device="cpu", backend=sys.argv[2])
    preds = clf.predict(sys.argv[3:], top_k=1)
    print(json.dumps({"onnx": clf.backend.path, "labels": [p.label for p in preds],
                      "errors": [p.error for p in preds], "torch_imported": "torch" in sys.modules}))
""")


def predict_in_fresh_process(bundle, backend: str, photos: list[str]) -> dict:
    r = subprocess.run([sys.executable, "-c", TORCH_FREE_PREDICT, str(bundle), backend, *photos],
                       capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_int8_bundle_starts_and_predicts_without_importing_torch(photos, tmp_path):
    exp = tmp_path / "exp"
    export_bundle(tiny("torch"), exp, int8=True, images=photos, force=True)
    some = photos[:12]
    for backend, onnx_file in (("onnx-int8", "model.int8.onnx"), ("onnx", "model.onnx")):
        out = predict_in_fresh_process(exp, backend, some)
        assert out["torch_imported"] is False, backend
        assert out["onnx"] == str(exp / onnx_file)
        assert out["errors"] == [None] * len(some)
        # Same labels as the same backend loaded in this (torch-importing) process.
        ref = Classifier.load(exp, device="cpu", backend=backend)
        assert out["labels"] == [p.label for p in ref.predict(some, top_k=1)]
    q = Classifier.load(exp, device="cpu", backend="onnx-int8")
    assert q._model is None  # fast start: the torch module is only built on demand
    assert isinstance(q.model, __import__("torch").nn.Module) and q.model.training is False


def test_int8_backend_refuses_a_bundle_without_an_int8_export(tmp_path):
    exp = tmp_path / "fp32-only"
    export_bundle(tiny("torch"), exp)  # no --int8: model.onnx only
    clf = Classifier.load(exp, device="cpu", backend="onnx-int8")
    with pytest.raises(ImclassError, match=r"no INT8 export: run `imclass export MODEL --int8"):
        clf.backend  # noqa: B018
    (exp / "model.int8.onnx").write_bytes(b"stray file the manifest does not list")
    with pytest.raises(ImclassError, match="no INT8 export"):
        Classifier.load(exp, device="cpu", backend="onnx-int8").backend  # noqa: B018


def test_a_bundle_missing_its_onnx_file_says_so(tmp_path):
    exp = tmp_path / "copied-without-onnx"
    export_bundle(tiny("torch"), exp)
    (exp / "model.onnx").unlink()
    with pytest.raises(ImclassError, match=r"lists model.onnx \(fp32 ONNX model\) but the file is missing"):
        Classifier.load(exp, device="cpu", backend="onnx").backend  # noqa: B018


def test_export_refuses_below_threshold_unless_forced(photos, tmp_path, monkeypatch):
    monkeypatch.setitem(export_mod.MIN_AGREEMENT, "fp32", 1.01)  # nothing can pass
    with pytest.raises(ExportError, match="refusing"):
        export_bundle(tiny("torch"), tmp_path / "a", images=photos)
    res = export_bundle(tiny("torch"), tmp_path / "b", images=photos, force=True)
    assert not res.passed and "agrees with torch" in res.warnings[0]
    assert json.loads((tmp_path / "b" / "imclass.json").read_text())["exports"]["onnx"]["passed"] is False


def test_int8_without_calibration_photos_is_refused(tmp_path):
    with pytest.raises(ExportError, match="--calibration"):
        export_bundle(tiny("torch"), tmp_path / "x", int8=True, images=None)


@pytest.mark.slow
def test_cli_export_then_predict_with_the_exported_bundle(tmp_path):
    out = tmp_path / "default-onnx"
    r = run_cli("export", "default", "--out", str(out), "--json", env_extra={"IMCLASS_CACHE_DIR": str(tmp_path)})
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["passed"] and info["parity"]["fp32"]["top1_agreement"] == 1.0
    r = run_cli("predict", str(SAMPLES), "--model", str(out), "--backend", "onnx", "--json", "-q")
    assert r.returncode == 0, r.stderr
    rows = {json.loads(line)["path"].rsplit("/", 1)[-1]: json.loads(line) for line in r.stdout.splitlines()}
    assert rows["coffee.jpg"]["label"] == "espresso"


def test_streams_split_the_threads_and_change_nothing_but_speed(photos):
    two = Classifier(tiny().model, tiny().spec, device="cpu", threads=2)  # default: 2 streams on CPU
    one = Classifier(two.model, two.spec, device="cpu", threads=2, streams=1)
    assert two.backend.streams == 2 and one.backend.streams == 1
    assert two.backend.session.get_session_options().intra_op_num_threads == 1
    assert one.backend.session.get_session_options().intra_op_num_threads == 2
    assert [len(b) for b in two.predict_batches(photos[:20])] == [8, 8, 4]  # 16 images shared by 2 calls
    assert [len(b) for b in one.predict_batches(photos[:20])] == [16, 4]
    np.testing.assert_allclose(two.predict_proba(photos), one.predict_proba(photos), atol=1e-6)
    assert [p.label for p in two.predict(photos)] == [p.label for p in one.predict(photos)]
    assert tiny("torch").backend.streams == 1


@pytest.mark.parametrize("without_vnni", [True, False])
def test_int8_on_an_x86_cpu_without_vnni_warns_once(without_vnni, monkeypatch, caplog):
    """ONNX Runtime's u8s8 kernels saturate on AVX2-only CPUs: INT8 then agrees with fp32 far less than its
    recorded parity, and the run says so (once); fp32 never warns."""
    import logging

    from imclass.engine import onnx_backend as ob

    path = tiny(backend="onnx").backend.path
    monkeypatch.setattr(ob, "x86_without_vnni", lambda: without_vnni)
    ob._warn_saturation.cache_clear()
    with caplog.at_level(logging.WARNING, logger="imclass"):
        ob.OnnxBackend(path, precision="fp32")
        assert not [r for r in caplog.records if "VNNI" in r.getMessage()]
        ob.OnnxBackend(path, precision="int8")
        ob.OnnxBackend(path, precision="int8")
    warned = [r for r in caplog.records if "VNNI" in r.getMessage()]
    assert len(warned) == (1 if without_vnni else 0)


def test_vnni_is_read_from_the_cpu_flags(monkeypatch, tmp_path):
    from imclass.engine import onnx_backend as ob

    flags = {"avx2 fma": True, "avx2 avx512f avx512_vnni": False, "avx2 avx_vnni": False, "amx_int8 avx2": False}
    info = tmp_path / "cpuinfo"
    monkeypatch.setattr(ob, "CPUINFO", str(info))
    monkeypatch.setattr(ob.platform, "machine", lambda: "x86_64")
    try:
        for line, expected in flags.items():
            info.write_text(f"processor\t: 0\nflags\t\t: fpu sse2 {line}\n")
            ob.x86_without_vnni.cache_clear()
            assert ob.x86_without_vnni() is expected, line
        monkeypatch.setattr(ob.platform, "machine", lambda: "aarch64")
        ob.x86_without_vnni.cache_clear()
        assert ob.x86_without_vnni() is False
    finally:
        monkeypatch.undo()
        ob.x86_without_vnni.cache_clear()
