"""The OpenVINO backend: fp32 / bf16 / INT8 against ONNX Runtime, the forced f32 path, the auto rule's record,
`imclass export --openvino`, and the runtime recorded in the summary."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import SAMPLES, run_cli

pytest.importorskip("openvino")

from imclass.classifier import Classifier
from imclass.engine import openvino_backend as ovb
from imclass.engine import runtimes
from imclass.errors import ImclassError

PHOTOS = sorted(str(p) for p in SAMPLES.iterdir() if p.suffix.lower() in (".jpg", ".png"))
needs_bf16 = pytest.mark.skipif(not ovb.bf16_supported(), reason="this CPU has no native bf16")


@pytest.fixture(scope="module")
def reference():
    """ONNX Runtime fp32 on the sample photos: the numbers every OpenVINO precision is compared with."""
    clf = Classifier.load("default", device="cpu", backend="onnx")
    return clf.predict_proba(PHOTOS)


@pytest.fixture(autouse=True)
def _no_records_left():
    """Runtime records written here never reach other tests (they would change what ``auto`` runs)."""
    import shutil

    from imclass.paths import cache_dir

    yield
    shutil.rmtree(cache_dir() / "runtimes", ignore_errors=True)


def load(backend="openvino", precision="auto", name="default", **kw) -> Classifier:
    return Classifier.load(name, device="cpu", backend=backend, precision=precision, **kw)


def test_fp32_matches_onnx_runtime(reference):
    clf = load(precision="fp32")
    assert clf.runtime == {"backend": "openvino", "precision": "fp32"}
    assert clf.backend.inference_precision == "f32"  # set explicitly: OpenVINO picks bf16 itself on AMX CPUs
    probs = clf.predict_proba(PHOTOS)
    assert (probs.argmax(1) == reference.argmax(1)).all()
    assert np.abs(probs - reference).max() < 1e-4


@needs_bf16
def test_bf16_agrees_on_the_top_class(reference):
    clf = load(precision="bf16")
    assert clf.runtime == {"backend": "openvino", "precision": "bf16"}
    assert clf.backend.inference_precision == "bf16"
    probs = clf.predict_proba(PHOTOS)
    assert (probs.argmax(1) == reference.argmax(1)).all()
    assert np.abs(probs - reference).max() < 0.05  # bf16 keeps 8 bits of mantissa: ~1e-2 here


def test_forced_f32_path(monkeypatch, reference):
    """IMCLASS_OPENVINO_NO_BF16=1 behaves as a CPU without bf16: an explicit bf16 is refused, auto never picks it."""
    monkeypatch.setenv(ovb.NO_BF16_ENV, "1")
    assert ovb.bf16_supported() is False
    with pytest.raises(ImclassError, match="--precision fp32"):
        load(precision="bf16").backend  # noqa: B018
    onnx_path = load(backend="onnx").backend.path
    fake_record(onnx_path, bf16_speed=300.0)  # bf16 verified and 3x faster, but not usable here
    assert load(backend="auto").runtime == {"backend": "onnx", "precision": "fp32"}
    clf = load(precision="auto")  # openvino's own default without bf16: f32
    assert clf.runtime == {"backend": "openvino", "precision": "fp32"}
    assert clf.backend.inference_precision == "f32"
    assert np.abs(clf.predict_proba(PHOTOS) - reference).max() < 1e-4


def test_bad_inputs_give_error_rows(tmp_path):
    good = PHOTOS[:2]
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "text.png").write_text("not an image")
    full = tmp_path / "trunc.jpg"
    Image.new("RGB", (120, 90), (10, 200, 30)).save(full, quality=90)
    full.write_bytes(full.read_bytes()[:200])
    items = [good[0], str(tmp_path / "empty.jpg"), str(tmp_path / "text.png"), str(full), good[1]]
    preds = load(precision="fp32").predict(items)
    assert [p.path for p in preds] == items
    assert preds[0].error is None and preds[-1].error is None
    assert all(p.error for p in preds[1:4])
    ref = load(backend="onnx").predict(good)
    assert [preds[0].label, preds[-1].label] == [p.label for p in ref]


def fake_record(onnx_path, bf16_speed: float, agreement: float = 0.9975, accuracy_drop: float = 0.0,
                ref_speed: float = 100.0) -> dict:
    record = {"runtimes": {
        "onnx-fp32": {"top1_agreement": 1.0, "accuracy": 0.98, "img_per_s": ref_speed},
        "openvino-fp32": {"top1_agreement": 1.0, "accuracy": 0.98, "img_per_s": ref_speed * 1.02},
        "openvino-bf16": {"top1_agreement": agreement, "accuracy": 0.98 - accuracy_drop, "img_per_s": bf16_speed}}}
    record["choice"] = runtimes.choose(record)
    path = runtimes.record_path(onnx_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record))
    return record


def test_the_auto_rule(monkeypatch):
    monkeypatch.setattr(runtimes, "usable", lambda key: True)
    ok = {"onnx-fp32": {"top1_agreement": 1.0, "accuracy": 0.980, "img_per_s": 100.0}}

    def pick(agreement=0.9975, drop=0.0, speed=200.0, fp32_speed=102.0, **kw):
        rec = {"runtimes": {**ok, "openvino-fp32": {"top1_agreement": 1.0, "accuracy": 0.98, "img_per_s": fp32_speed},
                            "openvino-bf16": {"top1_agreement": agreement, "accuracy": 0.98 - drop,
                                              "img_per_s": speed}}}
        return runtimes.choose(rec, **kw)

    assert pick() == "openvino-bf16"
    assert pick(agreement=0.994) == "onnx-fp32"  # below 99.5% agreement: stays opt-in
    assert pick(drop=0.004) == "onnx-fp32"  # accuracy more than 0.3 points lower
    assert pick(drop=0.003) == "openvino-bf16"
    assert pick(speed=120.0) == "onnx-fp32"  # not 1.25x faster: within what load changes, not worth a switch
    assert pick(agreement=0.99, fp32_speed=116.0) == "onnx-fp32"
    assert pick(agreement=0.99, fp32_speed=130.0) == "openvino-fp32"  # f32 passes, and is 1.3x
    assert pick(agreement=0.99, backend="openvino") == "openvino-fp32"  # openvino's own default
    assert pick(precision="fp32") == "onnx-fp32"  # --precision fp32: fp32 runtimes only
    assert runtimes.choose({}) == "onnx-fp32"


@needs_bf16
def test_auto_follows_a_verified_faster_record_and_falls_back_without_one(reference):
    onnx_path = load(backend="onnx").backend.path
    runtimes.record_path(onnx_path).unlink(missing_ok=True)
    assert load(backend="auto").runtime == {"backend": "onnx", "precision": "fp32"}  # no record: today's runtime
    fake_record(onnx_path, bf16_speed=90.0)  # verified but slower
    assert load(backend="auto").runtime == {"backend": "onnx", "precision": "fp32"}
    fake_record(onnx_path, bf16_speed=250.0, agreement=0.99)  # faster but below the agreement bar
    assert load(backend="auto").runtime == {"backend": "onnx", "precision": "fp32"}
    fake_record(onnx_path, bf16_speed=250.0)
    clf = load(backend="auto")
    assert clf.runtime == {"backend": "openvino", "precision": "bf16"}
    assert (clf.predict_proba(PHOTOS).argmax(1) == reference.argmax(1)).all()
    assert load(backend="auto", precision="fp32").runtime == {"backend": "onnx", "precision": "fp32"}
    assert load(precision="auto").runtime == {"backend": "openvino", "precision": "bf16"}


def test_verify_measures_and_records(reference):
    onnx_path = load(backend="onnx").backend.path
    clf = load(backend="onnx")
    batch = np.stack([clf.decode(p) for p in PHOTOS])
    labels = reference.argmax(1)  # "truth" = fp32's answers: every runtime that agrees is 100% accurate
    rec = runtimes.verify(onnx_path, clf.spec.preprocess, [batch], labels, rounds=1, seconds=0.2)
    assert runtimes.read_record(onnx_path) == json.loads(json.dumps(rec))
    keys = {"onnx-fp32", "openvino-fp32"} | ({"openvino-bf16"} if ovb.bf16_supported() else set())
    assert set(rec["runtimes"]) == keys
    assert rec["runtimes"]["openvino-fp32"]["top1_agreement"] == 1.0
    assert all(e["img_per_s"] > 0 for e in rec["runtimes"].values())
    assert rec["choice"] in keys and rec["cpu"] == ovb.cpu_name()


@pytest.fixture(scope="module")
def tiny_photos(tmp_path_factory):
    rng = np.random.default_rng(1)
    folder = tmp_path_factory.mktemp("ov-photos")
    out = []
    for i in range(72):
        arr = np.zeros((80, 96, 3), np.uint8)
        arr[..., i % 3] = 160 + rng.integers(0, 90)
        arr[20:50, 30:70] = rng.integers(0, 255, size=3)
        p = folder / f"p{i:02d}.jpg"
        Image.fromarray(arr).save(p, quality=92)
        out.append(str(p))
    return out


def tiny(seed=0) -> Classifier:
    import timm
    import torch

    from imclass.models.spec import ModelSpec
    from imclass.preprocess import Preprocess

    torch.manual_seed(seed)
    model = timm.create_model("test_efficientnet", pretrained=False, num_classes=3).eval()
    spec = ModelSpec(architecture={"family": "timm", "name": "test_efficientnet", "kwargs": {}},
                     labels=["red", "green", "blue"], preprocess=Preprocess(input_size=(64, 64), crop_pct=1.0))
    return Classifier(model, spec, device="cpu", backend="torch")


def test_export_openvino_writes_ir_that_loads_and_matches(tiny_photos, tmp_path, monkeypatch, caplog):
    from imclass.export.bundle import export_bundle

    exp = tmp_path / "exp"
    res = export_bundle(tiny(), exp, int8=True, images=tiny_photos, force=True, openvino=True, precision="fp32",
                        int8_candidates=[{"method": "minmax", "exclude_first_convs": 1}])
    assert (exp / "model.xml").is_file() and (exp / "model.bin").is_file()
    manifest = json.loads((exp / "imclass.json").read_text())
    ov = manifest["exports"]["openvino"]
    assert ov["fp32"] == "model.xml" and ov["int8"] == "model.int8.onnx"
    kinds = {"openvino-fp32", "openvino-int8"} | ({"openvino-bf16"} if ovb.bf16_supported() else set())
    assert set(ov["parity"]) == kinds and set(res.parity) == kinds | {"fp32", "int8"}
    assert set(manifest["exports"]["onnx"]["parity"]) == {"fp32", "int8"}  # the ONNX record is unchanged
    p = ov["parity"]["openvino-fp32"]
    assert p["top1_agreement"] == 1.0 and p["max_abs_prob_diff"] < 1e-4 and p["images"] == "photos"
    assert manifest["exports"]["runtime"] == {"backend": "openvino", "precision": "fp32"} == res.runtime

    ref = tiny().predict_proba(tiny_photos)
    clf = Classifier.load(exp, device="cpu", backend="openvino", precision="fp32")
    assert clf.backend.path == str(exp / "model.xml")  # the IR, with the preprocessing recorded in it
    assert ovb.OpenVinoBackend(exp / "model.xml").preprocess.input_size == (64, 64)
    assert np.abs(clf.predict_proba(tiny_photos) - ref).max() < 1e-4
    auto = Classifier.load(exp, device="cpu")  # the pinned runtime
    assert auto.runtime == {"backend": "openvino", "precision": "fp32"}
    manifest["exports"]["runtime"]["precision"] = "bf16"  # a bundle pinned to bf16, on a CPU without it
    (exp / "imclass.json").write_text(json.dumps(manifest))
    monkeypatch.setenv(ovb.NO_BF16_ENV, "1")
    with caplog.at_level("WARNING", logger="imclass"):
        assert Classifier.load(exp, device="cpu").runtime == {"backend": "onnx", "precision": "fp32"}
    assert "pinned" in caplog.text and "using ONNX Runtime fp32" in caplog.text
    q = Classifier.load(exp, device="cpu", backend="openvino", precision="int8")
    assert q.runtime == {"backend": "openvino", "precision": "int8"} and q.backend.path.endswith("model.int8.onnx")
    assert q.predict_proba(tiny_photos).shape == ref.shape


def test_export_refuses_pins_it_cannot_honour(tmp_path):
    from imclass.engine.onnx_cache import ExportError
    from imclass.export.bundle import export_bundle

    with pytest.raises(ExportError, match="--openvino"):
        export_bundle(tiny(), tmp_path / "a", precision="bf16")
    with pytest.raises(ExportError, match="--int8"):
        export_bundle(tiny(), tmp_path / "b", openvino=True, precision="int8")


@pytest.mark.slow
def test_cli_records_the_pinned_runtime(tmp_path):
    out = tmp_path / "labels.csv"
    r = run_cli("predict", str(SAMPLES), "--backend", "openvino", "--precision", "fp32", "-o", str(out))
    assert r.returncode == 0, r.stderr
    assert "(openvino fp32)" in r.stderr
    assert len(out.read_text().splitlines()) == 1 + len(PHOTOS)
    # the torch-free start works for OpenVINO too (the default model's export is cached by now)
    code = ("import sys, imclass; c = imclass.load('default', device='cpu', backend='openvino', precision='fp32'); "
            f"c.predict({PHOTOS[:1]!r}); print(c.runtime['backend'], 'torch' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.split() == ["openvino", "False"], r.stderr
    r = run_cli("predict", str(SAMPLES), "--backend", "onnx", "--precision", "bf16")
    assert r.returncode == 1 and "openvino" in r.stderr and "Traceback" not in r.stderr
    r = run_cli("predict", str(SAMPLES), "--precision", "fp16")
    assert r.returncode != 0 and "fp16" in r.stderr
