"""``imclass serve``: a real uvicorn server on a loopback port the OS picks, driven over HTTP by httpx.

Most tests use a tiny random timm model (fast); one uses the default model on real photos. The slow ones
start ``python -m imclass serve`` in a subprocess (the port comes from its "listening on" log line) and send
it SIGTERM with requests in flight. Nothing here waits for a clock: batches close on ``max_batch`` (or the
stop marker) with ``max_wait_ms`` far out of reach, and the tests wait on events, log lines and states.
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import os
import queue
import re
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
from imclass.errors import ParameterError  # noqa: E402
from imclass.models.spec import ModelSpec  # noqa: E402
from imclass.preprocess import Preprocess  # noqa: E402
from imclass.serve import ServeSettings, create_app, run_server  # noqa: E402
from imclass.serve.batcher import MicroBatcher, Overloaded, ShuttingDown  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "samples"
LABELS = ["cat", "dog", "owl"]
MAX_BODY_MB = 2
MAX_BODY = MAX_BODY_MB * 1024 * 1024
MAX_FILES = 4
CATS = {"tabby", "tiger cat", "Egyptian cat"}
NEVER_MS = 600_000  # a max_wait_ms no test reaches: batches close on max_batch or on the stop marker
STARTUP_S = 120  # generous: only ever waited in full when something is broken


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


class LiveServer:
    """uvicorn serving ``app`` in a thread on 127.0.0.1, on a port the OS picks, with lifespan events.

    The port is read from uvicorn's own socket once it listens (no port is picked and released first);
    when ``app`` is :func:`create_app`'s, entering also waits for its model to be warmed up.
    """

    def __init__(self, app):
        import uvicorn

        config = uvicorn.Config(app, host="127.0.0.1", port=0, log_config=None, log_level="warning",
                                access_log=False, lifespan="on", timeout_graceful_shutdown=10)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True, name="live-server")
        self.batcher = getattr(app.state, "batcher", None)
        self.url = ""

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + STARTUP_S
        while not self.server.started:  # uvicorn has no event for "listening": a readiness wait
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("server did not start")
            time.sleep(0.01)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        if self.batcher is not None:
            assert self.batcher.wait_ready(STARTUP_S), self.batcher.error
        return self

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
    app = create_app(tiny, max_batch=8, max_wait_ms=10, max_body_mb=MAX_BODY_MB, max_files=MAX_FILES)
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
    assert set(body) == {"model", "request_id", "predictions"}  # `detail` only when no image was classified
    assert body["model"] == "timm:test_efficientnet"
    assert body["request_id"] == r.headers["x-request-id"]
    preds = body["predictions"]
    assert all(set(p) == {"filename", "label", "score", "error", "topk", "status"} for p in preds)  # no `labels`
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
    # the query is checked before the body is read
    r = client.post("/v1/predict", params={"top_k": 0}, content=b"hello", headers={"Content-Type": "text/plain"})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["query", "top_k"]


def test_multi_label_results_carry_labels(tiny):
    from fastapi.testclient import TestClient

    spec = dataclasses.replace(tiny.spec, task="multi_label", label_thresholds=[0.0, 0.0, 1.1])
    with TestClient(create_app(Classifier(tiny.model, spec, device="cpu", threads=1))) as c:
        r = c.post("/v1/predict", content=jpeg(), headers={"Content-Type": "image/jpeg"})
    assert r.status_code == 200, r.text
    p = r.json()["predictions"][0]
    assert sorted(p["labels"]) == ["cat", "dog"] and sorted(p["label"].split(";")) == ["cat", "dog"]


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
    models = {path: spec["paths"][path]["get" if path != "/v1/predict" else "post"]["responses"]["200"]["content"]
              ["application/json"]["schema"]["$ref"].rsplit("/", 1)[1]
              for path in ("/v1/predict", "/v1/model", "/healthz", "/readyz")}
    assert models == {"/v1/predict": "PredictResponse", "/v1/model": "ModelInfo", "/healthz": "Health",
                      "/readyz": "Readiness"}
    assert set(h.json()) == set(spec["components"]["schemas"]["Health"]["properties"])


class _AccessLog(logging.Handler):
    """Collects the access-log records; :meth:`wait_for` blocks until a request's line was written (the
    middleware writes it after the response went out, so the client can be first)."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.records: dict[str, dict] = {}
        self.cond = threading.Condition()

    def emit(self, record: logging.LogRecord) -> None:
        line = json.loads(record.getMessage())
        with self.cond:
            self.records[line["request_id"]] = line
            self.cond.notify_all()

    def wait_for(self, request_id: str, timeout: float = 30) -> dict:
        with self.cond:
            assert self.cond.wait_for(lambda: request_id in self.records, timeout), request_id
            return self.records[request_id]


@pytest.fixture
def access_log():
    logger = logging.getLogger("imclass.serve.access")
    handler, level = _AccessLog(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(level)


def test_request_id_echoed_or_generated_and_access_log(client, access_log):
    r = client.post("/v1/predict", files=files(("a.jpg", jpeg()), ("b.jpg", jpeg())),
                    headers={"X-Request-ID": "req-42"})
    g = client.get("/healthz")
    bad = client.get("/healthz", headers={"X-Request-ID": "no spaces or \x7f allowed"})
    assert r.headers["x-request-id"] == "req-42" and r.json()["request_id"] == "req-42"
    assert len(g.headers["x-request-id"]) == 32
    assert bad.headers["x-request-id"] != "no spaces or \x7f allowed"
    mine = access_log.wait_for("req-42")
    assert mine["method"] == "POST" and mine["path"] == "/v1/predict" and mine["status"] == 200
    assert mine["n_images"] == 2 and mine["duration_ms"] > 0
    assert {"ts", "client"} <= set(mine)
    assert access_log.wait_for(bad.headers["x-request-id"])["path"] == "/healthz"


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

    def multipart_chunks():  # the same for a multipart upload
        yield b'--b\r\nContent-Disposition: form-data; name="files"; filename="big.jpg"\r\n\r\n'
        yield from chunks()
        yield b"\r\n--b--\r\n"

    r = client.post("/v1/predict", content=multipart_chunks(),
                    headers={"Content-Type": "multipart/form-data; boundary=b"})
    assert r.status_code == 413 and "too large" in r.json()["detail"]
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
    for form in ({"note": (None, b"x" * 70_000)}, [(f"n{i}", (None, b"x")) for i in range(40)]):
        r = client.post("/v1/predict", files=form)  # a long text field, too many text fields
        assert r.status_code == 400 and "malformed multipart body" in r.json()["detail"]
    r = client.post("/v1/predict", content=b"\x00--b--", headers={"Content-Type": "multipart/form-data; boundary=b"})
    assert r.status_code == 400
    assert client.get("/v1/predict").status_code == 405


# ---- micro-batching ------------------------------------------------------------------------------------------

def test_concurrent_requests_are_batched_and_routed_back(tiny):
    n = 12
    # one inference thread (tiny has 1 CPU thread: one stream) whose batch closes when it holds all n images
    app = create_app(tiny, max_batch=n, max_wait_ms=NEVER_MS)
    blobs = [jpeg(color=(15 * i, 255 - 15 * i, (70 * i) % 256), size=(64 + i, 48 + i)) for i in range(n)]
    direct = tiny.predict(blobs, top_k=3)
    with LiveServer(app) as srv, httpx.Client(base_url=srv.url, timeout=60) as c:
        before = c.get("/healthz").json()
        assert before["inference_threads"] == 1

        def post(i: int):
            return c.post("/v1/predict", params={"top_k": 3}, files=files((f"{i}.jpg", blobs[i])))

        with ThreadPoolExecutor(n) as pool:
            responses = list(pool.map(post, range(n)))
        after = c.get("/healthz").json()
    for i, r in enumerate(responses):
        assert r.status_code == 200
        p = r.json()["predictions"][0]
        assert p["filename"] == f"{i}.jpg"
        assert p["label"] == direct[i].label
        assert [t["score"] for t in p["topk"]] == pytest.approx([s for _, s in direct[i].topk], abs=1e-5)
    assert after["images"] - before["images"] == n
    assert after["batches"] - before["batches"] == 1 and after["largest_batch"] == n  # n requests, one model call


def test_batcher_admission_and_drain(tiny):
    b = MicroBatcher(tiny, max_batch=4, max_wait_ms=NEVER_MS, max_pending=3, decode_workers=1).start()
    assert b.wait_ready(STARTUP_S)
    b.admit(2)
    with pytest.raises(Overloaded):
        b.admit(2)
    b.release(2)
    arr = np.zeros((64, 64, 3), dtype=np.uint8)
    futures = [b.submit(arr, f"x{i}", top_k=2) for i in range(6)]  # a batch of 4, then 2 waiting for more
    bad = b.submit_bytes(b"not an image", "bad")
    b.close()  # finishes everything already queued: the stop marker closes the second batch
    assert [f.result(0).path for f in futures] == [f"x{i}" for i in range(6)]
    assert all(f.result(0).label in LABELS for f in futures)
    assert "not an image" in bad.result(0).error
    assert (b.batches, b.largest_batch) == (2, 4)
    with pytest.raises(ShuttingDown):
        b.admit(1)
    with pytest.raises(ShuttingDown):
        b.submit(arr)


def test_batcher_runs_one_inference_thread_per_stream(tiny):
    two = Classifier(tiny.model, tiny.spec, device="cpu", threads=2, streams=2)
    barrier = threading.Barrier(2, timeout=60)  # only passes when two batches are in the model at once
    real = two.logits

    def logits(batch):
        barrier.wait()
        return real(batch)

    b = MicroBatcher(two, max_batch=2, max_wait_ms=NEVER_MS, decode_workers=1, warmup=True)
    b.start()
    assert b.wait_ready(STARTUP_S)
    assert b.streams == 2 and b.device == "cpu"
    two.logits = logits  # after the warm-up (one call, which would wait alone)
    arr = np.zeros((64, 64, 3), dtype=np.uint8)
    futures = [b.submit(arr + i, f"x{i}", top_k=2) for i in range(4)]  # each thread closes a batch at 2
    results = [f.result(60) for f in futures]
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
        assert c.post("/v1/predict", content=b"x", headers={"Content-Type": "text/plain"}).status_code == 401
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

    with LiveServer(outer) as srv, httpx.Client(base_url=srv.url, timeout=60) as c:
        assert c.get("/").json() == {"hello": "world"}
        r = c.post("/ml/v1/predict", files=files(("a.jpg", jpeg())))  # waits for the warm-up
        assert r.status_code == 200 and r.json()["predictions"][0]["label"] in LABELS
        assert c.get("/ml/readyz").status_code == 200


# ---- settings ------------------------------------------------------------------------------------------------

def test_settings_and_run_server_validate_before_loading_anything():
    with pytest.raises(ParameterError, match="port"):
        run_server("no-such-model", port=70000)
    with pytest.raises(ParameterError, match="streams"):
        run_server("no-such-model", streams=0)
    with pytest.raises(ParameterError, match="max_batch"):
        ServeSettings(max_batch=0)
    with pytest.raises(ParameterError, match="max_body_mb"):
        ServeSettings().replace(max_body_mb=0)


def test_create_app_takes_settings_and_overrides(tiny):
    app = create_app(tiny, ServeSettings(max_files=3, max_batch=4), max_batch=2)
    assert app.state.settings == ServeSettings(max_files=3, max_batch=2)
    assert app.state.batcher.max_batch == 2


# ---- the command: ``imclass serve`` in a subprocess -------------------------------------------------------------

class ServeProcess:
    """``python -m imclass serve ARGS``; its stderr (one JSON log record per line) is read by a thread."""

    def __init__(self, *args: str):
        self.proc = subprocess.Popen([sys.executable, "-m", "imclass", "serve", *args], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self.lines: list[str] = []
        self._new: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True, name="serve-stderr")
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line.rstrip("\n"))
            self._new.put(line)
        self._new.put(None)

    def wait_for_log(self, pattern: str, timeout: float = STARTUP_S) -> re.Match:
        """The first match of ``pattern`` in a log record's ``msg`` not read yet (blocks until it is logged)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self._new.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no log line matching {pattern!r}:\n" + "\n".join(self.lines)) from None
            if line is None:
                raise AssertionError(f"the server exited ({self.proc.wait()}) before logging {pattern!r}:\n"
                                     + "\n".join(self.lines))
            m = re.search(pattern, json.loads(line).get("msg", "")) if line.startswith("{") else None
            if m:
                return m

    def finish(self, timeout: float = 60) -> int:
        rc = self.proc.wait(timeout)
        self._reader.join(timeout)
        return rc

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def _post_raw_until_100_continue(port: int, body: bytes, request_id: str) -> socket.socket:
    """Send a request's headers with ``Expect: 100-continue`` and return once the server answered
    ``100 Continue``, i.e. once the app is reading this request's body: the request is in flight."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=60)
    sock.sendall((f"POST /v1/predict HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: image/jpeg\r\n"
                  f"Content-Length: {len(body)}\r\nExpect: 100-continue\r\nX-Request-ID: {request_id}\r\n"
                  "Connection: close\r\n\r\n").encode())
    interim = b""
    while b"\r\n\r\n" not in interim:
        chunk = sock.recv(4096)
        assert chunk, "connection closed before 100 Continue"
        interim += chunk
    assert interim.startswith(b"HTTP/1.1 100 "), interim
    return sock


def _read_response(sock: socket.socket) -> tuple[int, dict]:
    data = b""
    while chunk := sock.recv(65536):  # Connection: close -> the server closes after the response
        data += chunk
    sock.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), json.loads(body)


@pytest.mark.slow
def test_imclass_serve_drains_in_flight_requests_on_sigterm(tiny, tmp_path):
    bundle = tiny.save(tmp_path / "bundle")
    n = 6
    # one inference thread whose batches close only when they hold n images: the requests below stay in
    # flight until the last one's body arrives, which the test sends after the server began shutting down
    srv = ServeProcess("--model", str(bundle), "--port", "0", "--device", "cpu", "--log-level", "info",
                       "--threads", "1", "--streams", "1", "--max-batch", str(n), "--max-wait-ms", str(NEVER_MS))
    try:
        port = int(srv.wait_for_log(r"listening on http://127\.0\.0\.1:(\d+)").group(1))
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + STARTUP_S
        while (ready := httpx.get(url + "/readyz", timeout=30)).status_code != 200:  # warming up: 503
            assert ready.json()["status"] == "starting" and time.monotonic() < deadline, ready.text
            time.sleep(0.05)
        assert httpx.get(url + "/v1/model", timeout=30).json()["labels"] == LABELS
        first = httpx.post(url + "/v1/predict", files=files(*[(f"{i}.jpg", jpeg()) for i in range(n)]), timeout=60)
        assert first.status_code == 200 and [p["label"] in LABELS for p in first.json()["predictions"]] == [True] * n

        def post(i: int):
            return httpx.post(url + "/v1/predict", files=files((f"{i}.jpg", jpeg(color=(30 * i, 90, 10)))),
                              headers={"X-Request-ID": f"drain-{i}"}, timeout=60)

        with ThreadPoolExecutor(n - 1) as pool:
            futures = [pool.submit(post, i) for i in range(n - 1)]
            deadline = time.monotonic() + STARTUP_S
            while httpx.get(url + "/healthz", timeout=30).json()["pending"] < n - 1:  # admitted, in the batcher
                assert time.monotonic() < deadline and not any(f.done() for f in futures)
                time.sleep(0.02)
            last_image = jpeg(color=(0, 90, 200))
            last = _post_raw_until_100_continue(port, last_image, f"drain-{n - 1}")
            assert not any(f.done() for f in futures)  # the batch cannot close before the last image
            srv.proc.send_signal(signal.SIGTERM)
            srv.wait_for_log(r"^Shutting down$")  # uvicorn stopped accepting; in-flight requests go on
            last.sendall(last_image)
            responses = [f.result() for f in futures]
            last_status, last_body = _read_response(last)
        rc = srv.finish()
    finally:
        srv.kill()
    assert [r.status_code for r in responses] == [200] * (n - 1) and last_status == 200
    assert all(r.json()["predictions"][0]["label"] in LABELS for r in responses)
    assert last_body["predictions"][0]["label"] in LABELS and last_body["request_id"] == f"drain-{n - 1}"
    assert rc == 0, "\n".join(srv.lines)
    records = [json.loads(line) for line in srv.lines]  # every line on stderr is one JSON object
    access = {r["request_id"]: r for r in records if "request_id" in r}
    for i in range(n):
        a = access[f"drain-{i}"]
        assert (a["method"], a["path"], a["status"], a["n_images"]) == ("POST", "/v1/predict", 200, 1)
    assert any(r.get("msg", "").startswith("batcher drained") for r in records)


@pytest.mark.slow
def test_imclass_serve_bad_model_exits_1_with_one_line(tmp_path):
    r = subprocess.run([sys.executable, "-m", "imclass", "serve", "--model", str(tmp_path), "--port", "0"],
                       capture_output=True, text=True, timeout=STARTUP_S)
    assert r.returncode == 1
    assert "Traceback" not in r.stderr
    errors = [line for line in r.stderr.splitlines() if line.strip() and not line.startswith("{")]
    assert len(errors) == 1 and "not a model" in errors[0], r.stderr
