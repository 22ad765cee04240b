"""``imclass serve``: a real uvicorn server on a free loopback port, driven over HTTP by httpx.

Most tests use a tiny random timm model (fast); one uses the default model on real photos. The
graceful-shutdown test runs ``python -m imclass.serve.cli`` in a subprocess and sends it SIGTERM.
"""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

from imclass.classifier import Classifier  # noqa: E402
from imclass.errors import ImclassError  # noqa: E402
from imclass.models.spec import ModelSpec  # noqa: E402
from imclass.preprocess import Preprocess  # noqa: E402
from imclass.serve import create_app  # noqa: E402
from imclass.serve.batcher import MicroBatcher, Overloaded, ShuttingDown  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "samples"
LABELS = ["cat", "dog", "owl"]
MAX_BODY = 2 * 1024 * 1024
MAX_FILES = 4
CATS = {"tabby", "tiger cat", "Egyptian cat"}


# ---- helpers ---------------------------------------------------------------------------------------------

def tiny_classifier() -> Classifier:
    import timm
    import torch

    torch.manual_seed(0)
    model = timm.create_model("test_efficientnet", pretrained=False, num_classes=len(LABELS)).eval()
    spec = ModelSpec(
        architecture={"family": "timm", "name": "test_efficientnet", "kwargs": {}},
        labels=list(LABELS),
        preprocess=Preprocess(input_size=(64, 64), interpolation="bilinear", crop_pct=0.9),
        source="test",
        provenance={"name": "tiny test model", "weights": "random"},
        metrics={"val_accuracy": 0.5, "confusion": [[1, 0], [0, 1]], "per_split": {"val": {"top1": 0.5}}},
    )
    return Classifier(model, spec, device="cpu", threads=1)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LiveServer:
    """uvicorn serving ``app`` in a thread on 127.0.0.1:<free port>, with lifespan events."""

    def __init__(self, app):
        import uvicorn

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_config=None, log_level="warning",
                                access_log=False, lifespan="on", timeout_graceful_shutdown=10)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url + "/readyz", timeout=5).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        raise RuntimeError("server did not become ready")

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(30)


def jpeg(color=(200, 30, 30), size=(80, 60), quality=90) -> bytes:
    arr = np.zeros((size[1], size[0], 3), dtype=np.uint8)
    arr[:] = color
    arr[size[1] // 4: size[1] // 2, size[0] // 4: size[0] // 2] = 255
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def huge_png(width: int = 20000, height: int = 20000) -> bytes:
    """A valid 1-bit PNG of width x height (400 MP) in ~60 KB: all-zero rows compress to nothing."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    row = b"\x00" * (1 + (width + 7) // 8)
    comp = zlib.compressobj(9)
    idat = b"".join(comp.compress(row) for _ in range(height)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def files(*blobs: tuple[str, bytes], field: str = "files") -> list:
    return [(field, (name, data, "application/octet-stream")) for name, data in blobs]


# ---- fixtures ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny():
    return tiny_classifier()


@pytest.fixture(scope="module")
def server(tiny):
    app = create_app(tiny, max_batch=8, max_wait_ms=10, max_body_bytes=MAX_BODY, max_files=MAX_FILES)
    with LiveServer(app) as s:
        yield s


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server.url, timeout=30) as c:
        yield c


BAD = {
    "zero-byte": (b"", 422, "empty file"),
    "text": (b"hello, this is not an image\n", 415, "not an image"),
    "truncated-jpeg": (jpeg(size=(400, 300))[:1500], 422, "corrupt image"),
    "huge-png": (None, 422, "too large"),  # built lazily (costs ~0.2 s)
}


def bad_blob(kind: str) -> bytes:
    data = BAD[kind][0]
    return huge_png() if data is None else data


# ---- the real model on real photos ------------------------------------------------------------------

def test_real_photos_through_http_match_the_cli_path(default_clf):
    coffee, cat = (SAMPLES / "coffee.jpg").read_bytes(), (SAMPLES / "cat.jpg").read_bytes()
    with LiveServer(create_app(default_clf, max_batch=8, max_wait_ms=5)) as srv, \
            httpx.Client(base_url=srv.url, timeout=60) as c:
        r = c.post("/v1/predict", params={"top_k": 3}, files=files(("coffee.jpg", coffee), ("cat.jpg", cat)))
        raw = c.post("/v1/predict", content=coffee, headers={"Content-Type": "image/jpeg"})
    assert r.status_code == 200, r.text
    preds = r.json()["predictions"]
    assert [p["filename"] for p in preds] == ["coffee.jpg", "cat.jpg"]
    assert preds[0]["label"] == "espresso"
    assert preds[1]["label"] in CATS
    assert all(len(p["topk"]) == 3 and p["error"] is None and p["status"] == 200 for p in preds)
    # the same decode -> logits -> probabilities -> decide path as Classifier.predict / imclass predict
    direct = default_clf.predict([str(SAMPLES / "coffee.jpg"), str(SAMPLES / "cat.jpg")], top_k=3)
    for p, d in zip(preds, direct):
        assert p["label"] == d.label
        assert p["score"] == pytest.approx(d.score, abs=1e-4)
        assert [t["label"] for t in p["topk"]] == [lab for lab, _ in d.topk]
    assert raw.status_code == 200
    assert raw.json()["predictions"][0]["label"] == "espresso"
    assert raw.json()["predictions"][0]["filename"] is None


# ---- the happy paths ------------------------------------------------------------------------------------

def test_multipart_several_files_in_order(client, tiny):
    blobs = [(f"img{i}.jpg", jpeg(color=(40 * i, 200 - 30 * i, 90))) for i in range(3)]
    r = client.post("/v1/predict", params={"top_k": 2}, files=files(*blobs))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == "timm:test_efficientnet"
    assert body["request_id"] == r.headers["x-request-id"]
    preds = body["predictions"]
    assert [p["filename"] for p in preds] == ["img0.jpg", "img1.jpg", "img2.jpg"]
    direct = tiny.predict([data for _, data in blobs], top_k=2)
    for p, d in zip(preds, direct):
        assert p["label"] in LABELS and p["label"] == d.label
        assert p["score"] == pytest.approx(d.score, abs=1e-5)
        assert len(p["topk"]) == 2 and p["topk"][0]["score"] >= p["topk"][1]["score"]
        assert p["error"] is None


def test_single_file_field_and_raw_bodies(client):
    r = client.post("/v1/predict", files=files(("one.jpg", jpeg()), field="file"))
    assert r.status_code == 200 and r.json()["predictions"][0]["filename"] == "one.jpg"
    for ctype in ("image/jpeg", "image/png", "application/octet-stream"):  # the loader sniffs the content
        r = client.post("/v1/predict", content=jpeg(), headers={"Content-Type": ctype})
        assert r.status_code == 200, (ctype, r.text)
        assert r.json()["predictions"][0]["label"] in LABELS


def test_top_k_default_clamp_and_validation(client):
    assert len(client.post("/v1/predict", content=jpeg(), headers={"Content-Type": "image/jpeg"})
               .json()["predictions"][0]["topk"]) == 3  # default 5, clamped to the 3 classes
    r = client.post("/v1/predict", params={"top_k": 1}, content=jpeg(), headers={"Content-Type": "image/jpeg"})
    assert len(r.json()["predictions"][0]["topk"]) == 1
    for bad in ("0", "-1", "abc"):
        r = client.post("/v1/predict", params={"top_k": bad}, content=jpeg(), headers={"Content-Type": "image/jpeg"})
        assert r.status_code == 422


def test_model_info(client):
    r = client.get("/v1/model")
    assert r.status_code == 200
    m = r.json()
    assert m["labels"] == LABELS and m["num_classes"] == 3
    assert m["task"] == "single_label"
    assert m["architecture"] == {"family": "timm", "name": "test_efficientnet"}
    assert m["provenance"]["name"] == "tiny test model"
    assert m["metrics"] == {"val_accuracy": 0.5}  # scalars only: no confusion matrix, nested dicts dropped
    assert m["input_size"] == [64, 64]
    assert m["serving"]["max_files"] == MAX_FILES and m["serving"]["max_body_bytes"] == MAX_BODY
    assert m["device"] == "cpu"


def test_health_ready_docs(client):
    h = client.get("/healthz")
    assert h.status_code == 200 and h.json()["status"] == "ok"
    assert client.get("/readyz").json() == {"status": "ready", "model": "timm:test_efficientnet"}
    docs = client.get("/docs")
    assert docs.status_code == 200 and "text/html" in docs.headers["content-type"]
    spec = client.get("/openapi.json").json()
    body = spec["paths"]["/v1/predict"]["post"]["requestBody"]["content"]
    assert "multipart/form-data" in body and "image/*" in body
    assert {"/v1/model", "/healthz", "/readyz"} <= set(spec["paths"])


def test_request_id_echoed_or_generated_and_access_log(client, caplog):
    with caplog.at_level("INFO", logger="imclass.serve.access"):
        r = client.post("/v1/predict", files=files(("a.jpg", jpeg()), ("b.jpg", jpeg())),
                        headers={"X-Request-ID": "req-42"})
        g = client.get("/healthz")
        bad = client.get("/healthz", headers={"X-Request-ID": "no spaces or \x7f allowed"})
    assert r.headers["x-request-id"] == "req-42" and r.json()["request_id"] == "req-42"
    assert len(g.headers["x-request-id"]) == 32
    assert bad.headers["x-request-id"] != "no spaces or \x7f allowed"
    lines = [json.loads(rec.getMessage()) for rec in caplog.records if rec.name == "imclass.serve.access"]
    mine = next(x for x in lines if x["request_id"] == "req-42")
    assert mine["method"] == "POST" and mine["path"] == "/v1/predict" and mine["status"] == 200
    assert mine["n_images"] == 2 and mine["duration_ms"] > 0
    assert {"ts", "client"} <= set(mine)


# ---- every bad input gets its own status, never a 500 -------------------------------------------------------

@pytest.mark.parametrize("kind", list(BAD))
def test_bad_image_as_multipart(client, kind):
    _, status, reason = BAD[kind]
    r = client.post("/v1/predict", files=files((f"{kind}.bin", bad_blob(kind))))
    assert r.status_code == status, r.text
    p = r.json()["predictions"][0]
    assert p["label"] is None and reason in p["error"] and p["status"] == status
    assert reason in r.json()["detail"]


@pytest.mark.parametrize("kind", ["text", "truncated-jpeg", "huge-png"])
def test_bad_image_as_raw_body(client, kind):
    _, status, reason = BAD[kind]
    r = client.post("/v1/predict", content=bad_blob(kind), headers={"Content-Type": "image/png"})
    assert r.status_code == status, r.text
    assert reason in r.json()["predictions"][0]["error"]


def test_garbage_never_gives_a_server_error(client):
    rng = np.random.default_rng(0)
    good = jpeg(size=(200, 150))
    blobs = [
        rng.integers(0, 256, 5000, dtype=np.uint8).tobytes(),
        b"\x89PNG\r\n\x1a\n" + rng.integers(0, 256, 300, dtype=np.uint8).tobytes(),
        b"GIF89a" + b"\xff" * 50,
        good[:20] + b"\x00" * 2000 + good[2020:],  # JPEG header, wiped scan data
        b"BM" + b"\x00" * 60,
        b"\xff\xd8\xff",
    ]
    for i, blob in enumerate(blobs):
        for req in ({"files": files((f"g{i}", blob))},
                    {"content": blob, "headers": {"Content-Type": "image/jpeg"}}):
            r = client.post("/v1/predict", **req)
            assert r.status_code in (200, 415, 422), (i, r.status_code, r.text)
            if r.status_code != 200:
                assert r.json()["predictions"][0]["error"]


def test_mixed_request_is_200_with_per_image_errors(client):
    r = client.post("/v1/predict", files=files(("ok.jpg", jpeg()), ("empty.jpg", b""), ("notes.txt", b"hi")))
    assert r.status_code == 200
    preds = r.json()["predictions"]
    assert [p["status"] for p in preds] == [200, 422, 415]
    assert preds[0]["label"] in LABELS and preds[0]["error"] is None
    assert preds[1]["label"] is None and "empty file" in preds[1]["error"]
    assert preds[2]["topk"] == []


def test_all_failed_with_different_reasons_is_422(client):
    r = client.post("/v1/predict", files=files(("empty.jpg", b""), ("notes.txt", b"hi")))
    assert r.status_code == 422
    assert [p["status"] for p in r.json()["predictions"]] == [422, 415]


def test_oversize_body_is_413(client):
    big = b"\xff\xd8" + b"\x00" * (MAX_BODY + 10)
    r = client.post("/v1/predict", files=files(("big.jpg", big)))  # Content-Length known: refused up front
    assert r.status_code == 413 and "too large" in r.json()["detail"]
    r = client.post("/v1/predict", content=big, headers={"Content-Type": "image/jpeg"})
    assert r.status_code == 413

    def chunks():  # chunked transfer, no Content-Length: counted while streaming
        for _ in range(MAX_BODY // 65536 + 2):
            yield b"\x00" * 65536

    r = client.post("/v1/predict", content=chunks(), headers={"Content-Type": "image/jpeg"})
    assert r.status_code == 413
    assert client.get("/healthz").status_code == 200  # and the server is fine afterwards


def test_too_many_files_is_413(client):
    r = client.post("/v1/predict", files=files(*[(f"{i}.jpg", jpeg()) for i in range(MAX_FILES + 1)]))
    assert r.status_code == 413 and f"at most {MAX_FILES}" in r.json()["detail"]
    r = client.post("/v1/predict", files=files(*[(f"{i}.jpg", jpeg()) for i in range(MAX_FILES)]))
    assert r.status_code == 200 and len(r.json()["predictions"]) == MAX_FILES


def test_empty_and_unsupported_requests(client):
    assert client.post("/v1/predict").status_code == 422
    assert client.post("/v1/predict", content=b"", headers={"Content-Type": "image/jpeg"}).status_code == 422
    r = client.post("/v1/predict", data={"note": "no files here"})
    assert r.status_code == 415  # a url-encoded form cannot carry images
    r = client.post("/v1/predict", files={"note": (None, b"just text")})
    assert r.status_code == 422 and "empty request" in r.json()["detail"]  # multipart, only a text field
    r = client.post("/v1/predict", files={"files": (None, b"just text")})
    assert r.status_code == 422 and "must be a file upload" in r.json()["detail"]
    r = client.post("/v1/predict", files=files(("a.jpg", jpeg()), field="image"))
    assert r.status_code == 422 and "unexpected file field 'image'" in r.json()["detail"]
    for ctype, data in (("text/plain", b"hello"), ("application/json", b'{"url": "x"}')):
        r = client.post("/v1/predict", content=data, headers={"Content-Type": ctype})
        assert r.status_code == 415 and "unsupported Content-Type" in r.json()["detail"]
    r = client.post("/v1/predict", content=b"--x\r\nbroken", headers={"Content-Type": "multipart/form-data"})
    assert r.status_code == 400  # no boundary
    assert client.get("/v1/predict").status_code == 405


# ---- micro-batching ------------------------------------------------------------------------------------------

def test_concurrent_requests_are_batched_and_routed_back(tiny):
    app = create_app(tiny, max_batch=16, max_wait_ms=300)
    blobs = [jpeg(color=(15 * i, 255 - 15 * i, (70 * i) % 256), size=(64 + i, 48 + i)) for i in range(12)]
    direct = tiny.predict(blobs, top_k=3)
    with LiveServer(app) as srv, httpx.Client(base_url=srv.url, timeout=30) as c:
        before = c.get("/healthz").json()

        def post(i: int):
            return c.post("/v1/predict", params={"top_k": 3}, files=files((f"{i}.jpg", blobs[i])))

        with ThreadPoolExecutor(len(blobs)) as pool:
            responses = list(pool.map(post, range(len(blobs))))
        after = c.get("/healthz").json()
    for i, r in enumerate(responses):
        assert r.status_code == 200
        p = r.json()["predictions"][0]
        assert p["filename"] == f"{i}.jpg"
        assert p["label"] == direct[i].label
        assert [t["score"] for t in p["topk"]] == pytest.approx([s for _, s in direct[i].topk], abs=1e-5)
    assert after["images"] - before["images"] == len(blobs)
    assert after["largest_batch"] >= 2  # several requests shared one model call
    assert after["batches"] - before["batches"] < len(blobs)


def test_batcher_admission_and_drain(tiny):
    b = MicroBatcher(tiny, max_batch=4, max_wait_ms=50, max_pending=3, decode_workers=1).start()
    assert b.wait_ready(30)
    b.admit(2)
    with pytest.raises(Overloaded):
        b.admit(2)
    b.release(2)
    arr = np.zeros((64, 64, 3), dtype=np.uint8)
    futures = [b.submit(arr, f"x{i}", top_k=2) for i in range(6)]
    bad = b.submit_bytes(b"not an image", "bad")
    b.close()  # finishes everything already queued
    assert [f.result(0).path for f in futures] == [f"x{i}" for i in range(6)]
    assert all(f.result(0).label in LABELS for f in futures)
    assert "not an image" in bad.result(0).error
    assert b.largest_batch == 4
    with pytest.raises(ShuttingDown):
        b.admit(1)
    with pytest.raises(ShuttingDown):
        b.submit(arr)


def test_batcher_runs_one_inference_thread_per_stream(tiny):
    two = Classifier(tiny.model, tiny.spec, device="cpu", threads=2)  # ONNX Runtime on CPU: 2 streams
    barrier = threading.Barrier(2, timeout=20)  # only passes when two batches are in the model at once
    real = two.logits

    def logits(batch):
        barrier.wait()
        return real(batch)

    b = MicroBatcher(two, max_batch=2, max_wait_ms=200, decode_workers=1, warmup=True)
    b.start()
    assert b.wait_ready(60)
    two.logits = logits  # after the warm-up (one call, which would wait alone)
    arr = np.zeros((64, 64, 3), dtype=np.uint8)
    futures = [b.submit(arr + i, f"x{i}", top_k=2) for i in range(4)]
    results = [f.result(30) for f in futures]
    assert [r.path for r in results] == [f"x{i}" for i in range(4)] and all(r.label in LABELS for r in results)
    assert b.stats()["inference_threads"] == 2 and b.batches == 2
    two.logits = real
    late = [b.submit(arr, f"y{i}") for i in range(5)]
    b.close()  # the stop marker reaches both threads; everything queued before it is predicted
    assert all(f.result(0).label in LABELS for f in late)
    assert not b._thread.is_alive()


# ---- API key ----------------------------------------------------------------------------------------------

def test_api_key(tiny, client):
    assert client.post("/v1/predict", files=files(("a.jpg", jpeg()))).status_code == 200  # off by default
    with LiveServer(create_app(tiny, api_key="s3cret")) as srv, httpx.Client(base_url=srv.url, timeout=30) as c:
        up = files(("a.jpg", jpeg()))
        for headers in ({}, {"X-API-Key": "wrong"}, {"Authorization": "Bearer wrong"},
                        {"Authorization": "Basic czNjcmV0"}):
            r = c.post("/v1/predict", files=up, headers=headers)
            assert r.status_code == 401, headers
            assert r.headers["www-authenticate"] == "Bearer"
        assert c.get("/v1/model").status_code == 401
        assert c.post("/v1/predict", files=up, headers={"X-API-Key": "s3cret"}).status_code == 200
        assert c.post("/v1/predict", files=up, headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert c.get("/v1/model", headers={"X-API-Key": "s3cret"}).status_code == 200
        # probes and docs stay open
        assert c.get("/healthz").status_code == 200 and c.get("/readyz").status_code == 200
        assert c.get("/docs").status_code == 200


# ---- embedding ---------------------------------------------------------------------------------------------

def test_create_app_mounted_in_another_app(tiny):
    from fastapi import FastAPI

    outer = FastAPI()
    outer.mount("/ml", create_app(tiny))  # sub-app lifespans do not run: the batcher starts on first use

    @outer.get("/")
    def root():
        return {"hello": "world"}

    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(outer, host="127.0.0.1", port=port, log_config=None, log_level="warning"))
    t = threading.Thread(target=server.run, daemon=True)
    t.start()
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        with httpx.Client(base_url=url, timeout=30) as c:
            assert c.get("/").json() == {"hello": "world"}
            r = c.post("/ml/v1/predict", files=files(("a.jpg", jpeg())))
            assert r.status_code == 200 and r.json()["predictions"][0]["label"] in LABELS
            assert c.get("/ml/readyz").status_code == 200
    finally:
        server.should_exit = True
        t.join(30)


# ---- the command: a subprocess, SIGTERM with requests in flight -------------------------------------------------

def test_serve_command_validates_options():
    from imclass.serve.cli import serve_command

    with pytest.raises(ImclassError, match="--port"):
        serve_command("default", port=70000)
    with pytest.raises(ImclassError, match="--max-batch"):
        serve_command("default", max_batch=0)
    with pytest.raises(ImclassError, match="--streams"):
        serve_command("default", streams=0)


def test_cli_process_logs_json_and_drains_in_flight_requests_on_sigterm(tiny, tmp_path):
    bundle = tiny.save(tmp_path / "bundle")
    port = free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    # max-wait 3 s: the requests below sit in the batcher when SIGTERM arrives
    proc = subprocess.Popen(
        [sys.executable, "-m", "imclass.serve.cli", str(bundle), "--port", str(port), "--device", "cpu",
         "--threads", "1", "--max-batch", "64", "--max-wait-ms", "3000"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.communicate()[1]
            try:
                if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "server did not become ready"
            time.sleep(0.1)
        assert httpx.get(url + "/v1/model").json()["labels"] == LABELS

        def post(i: int):
            return httpx.post(url + "/v1/predict", files=files((f"{i}.jpg", jpeg(color=(30 * i, 90, 10)))),
                              headers={"X-Request-ID": f"drain-{i}"}, timeout=30)

        with ThreadPoolExecutor(6) as pool:
            futures = [pool.submit(post, i) for i in range(6)]
            deadline = time.monotonic() + 20
            while httpx.get(url + "/healthz").json()["pending"] < 6:  # all admitted, waiting in the batcher
                assert time.monotonic() < deadline and not any(f.done() for f in futures)
                time.sleep(0.02)
            proc.send_signal(signal.SIGTERM)
            responses = [f.result() for f in futures]
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert [r.status_code for r in responses] == [200] * 6
    assert all(r.json()["predictions"][0]["label"] in LABELS for r in responses)
    assert proc.returncode == 0, err
    records = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    assert len(records) == len(err.splitlines())  # every log line is one JSON object
    access = {r["request_id"]: r for r in records if "request_id" in r}
    for i in range(6):
        a = access[f"drain-{i}"]
        assert (a["method"], a["path"], a["status"], a["n_images"]) == ("POST", "/v1/predict", 200, 1)
    assert any("drained" in r.get("msg", "") for r in records)


def test_cli_process_bad_model_exits_1(tmp_path):
    r = subprocess.run([sys.executable, "-m", "imclass.serve.cli", str(tmp_path), "--port", str(free_port())],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 1
    assert "not a model" in r.stderr
