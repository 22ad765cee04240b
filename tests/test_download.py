"""``imclass data download`` / ``imclass.download`` against a local HTTP server on loopback (port 0, a thread),
serving the real photos of samples/ and every bad case: each URL ends as a file or an error row; a rerun fetches
nothing new; kill -9 then rerun loses and duplicates nothing; server mode refuses private addresses (tested
without contacting any outside address)."""

from __future__ import annotations

import base64
import csv
import http.server
import json
import os
import socket
import struct
import threading
import time
import zlib
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

from conftest import SAMPLES, run_cli
from imclass.data import download, load_dataset
from imclass.data.download import read_url_list, redact, safe_name
from imclass.data.fetch_safety import AddressPolicy, GuardedBackend, RefusedAddress

PHOTOS = {p.name: p.read_bytes() for p in sorted(SAMPLES.iterdir()) if p.suffix in (".jpg", ".png")}
FAST = dict(delay=0, backoff=0.05, retries=2, deadline=2, parallel=4)


def variant(n: int, name: str = "cat.jpg") -> bytes:
    """A real JPEG made unique by a comment segment (same pixels, different bytes)."""
    data = PHOTOS[name]
    note = f"imclass test variant {n}".encode()
    return data[:2] + b"\xff\xfe" + struct.pack(">H", len(note) + 2) + note + data[2:]


def bomb_png() -> bytes:
    """A small PNG whose header claims 100,000 x 100,000 pixels (a decompression bomb by its header)."""
    data = bytearray(PHOTOS["cameraman.png"])
    assert data[12:16] == b"IHDR"
    data[16:24] = struct.pack(">II", 100_000, 100_000)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])) & 0xFFFFFFFF)
    return bytes(data)


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:  # quiet
        pass

    def send(self, code: int, body: bytes = b"", ctype: str = "image/jpeg", **headers: str) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in headers.items():
            self.send_header(k.replace("_", "-"), v)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        state = self.server.state  # type: ignore[attr-defined]
        parts = urlsplit(self.path)
        path = unquote(parts.path)
        with state["lock"]:
            state["log"].append((time.monotonic(), path + (f"?{parts.query}" if parts.query else "")))
            state["hits"][path] = state["hits"].get(path, 0) + 1
            hits = state["hits"][path]
        port = self.server.server_port
        if path.startswith("/img/") and path[5:] in PHOTOS:
            self.send(200, PHOTOS[path[5:]], "image/png" if path.endswith(".png") else "image/jpeg")
        elif path.startswith("/uniq/"):
            self.send(200, variant(int(Path(path).stem)))
        elif path == "/ünïcode/写真 1.jpg":
            self.send(200, variant(90_001))
        elif path.startswith("/flaky/"):  # 500, then the photo
            self.send(500, b"oops", "text/plain") if hits == 1 else self.send(200, variant(90_002))
        elif path.startswith("/busy/"):  # 429 with Retry-After: 1, then the photo
            self.send(429, b"slow down", "text/plain", Retry_After="1") if hits == 1 else \
                self.send(200, variant(90_003))
        elif path == "/busy-forever.jpg":
            self.send(503, b"down for maintenance", "text/plain", Retry_After="3600")
        elif path == "/page.jpg":
            self.send(200, b"<!doctype html><html><body>Not found</body></html>" * 20, "text/html; charset=utf-8")
        elif path == "/truncated.jpg":
            self.send(200, PHOTOS["palace.jpg"][: len(PHOTOS["palace.jpg"]) // 2])
        elif path == "/bomb.png":
            self.send(200, bomb_png(), "image/png")
        elif path == "/noise.jpg":
            self.send(200, os.urandom(5000))
        elif path == "/noindex.jpg":
            self.send(200, variant(90_004), X_Robots_Tag="noimageindex")
        elif path == "/big.jpg":  # honest Content-Length over the limit
            self.send(200, b"\xff\xd8" + b"\0" * 300_000)
        elif path == "/big-nolength.jpg":  # no Content-Length: the body itself runs over the limit
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Connection", "close")
            self.end_headers()
            try:
                for _ in range(40):
                    self.wfile.write(b"\0" * 10_000)
            except OSError:
                pass
            self.close_connection = True
        elif path == "/slow.jpg":  # a byte every 0.2 s, for ever (until the client gives up)
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Content-Length", "50000")
            self.end_headers()
            try:
                for _ in range(300):
                    self.wfile.write(b"\xff")
                    self.wfile.flush()
                    time.sleep(0.2)
            except OSError:
                pass
            self.close_connection = True
        elif path == "/loop/a":
            self.send(302, b"", "text/plain", Location="/loop/b")
        elif path == "/loop/b":
            self.send(302, b"", "text/plain", Location="/loop/a")
        elif path == "/moved.jpg":
            self.send(301, b"", "text/plain", Location="/img/coffee.jpg")
        elif path == "/to-private.jpg":  # another loopback address: refused in server mode
            self.send(302, b"", "text/plain", Location=f"http://127.0.0.2:{port}/img/cat.jpg")
        elif path == "/auth.jpg":
            want = "Basic " + base64.b64encode(b"user:s3cret-pw").decode()
            if self.headers.get("Authorization") == want:
                self.send(200, variant(90_005))
            else:
                self.send(401, b"who are you", "text/plain", WWW_Authenticate='Basic realm="x"')
        else:
            self.send(404, b"not here", "text/plain")


@pytest.fixture(scope="module")
def server():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    srv.daemon_threads = True
    srv.handle_error = lambda request, address: None  # clients that hang up on the slow cases: expected
    srv.state = {"lock": threading.Lock(), "log": [], "hits": {}}  # type: ignore[attr-defined]
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def base(server) -> str:
    return f"http://127.0.0.1:{server.server_port}"


def requests_since(server, mark: int) -> list[str]:
    return [p for _, p in server.state["log"][mark:]]


def bad_cases(b: str) -> dict[str, tuple[str, str]]:
    """URL -> (expected status, a piece of the expected error)."""
    return {
        f"{b}/img/cat.jpg": ("ok", ""),
        f"{b}/img/cameraman.png": ("ok", ""),
        f"{b}/img/cat.jpg?copy=2": ("dup", ""),  # the same bytes under another URL
        f"{b}/moved.jpg": ("ok", ""),  # a redirect that works (to coffee.jpg)
        f"{b}/img/coffee.jpg": ("dup", ""),
        f"{b}/missing.jpg": ("error", "HTTP 404"),
        f"{b}/flaky/1.jpg": ("ok", ""),
        f"{b}/busy/1.jpg": ("ok", ""),
        f"{b}/page.jpg": ("error", "served as text/html"),
        f"{b}/truncated.jpg": ("error", "truncated"),
        f"{b}/bomb.png": ("error", "decompression-bomb guard"),
        f"{b}/noise.jpg": ("error", "not an image"),
        f"{b}/noindex.jpg": ("error", "X-Robots-Tag: noimageindex"),
        f"{b}/slow.jpg": ("error", "deadline exceeded"),
        f"{b}/big.jpg": ("error", "too large"),
        f"{b}/big-nolength.jpg": ("error", "too large"),
        f"{b}/loop/a": ("error", "redirect loop"),
        f"{b}/ünïcode/写真 1.jpg": ("ok", ""),
        f"{b}/img/palace.jpg?pad=" + "x" * 6000: ("ok", ""),  # a very long URL
        "ftp://127.0.0.1/file.jpg": ("error", "only http and https"),
        "not a url": ("error", "only http and https"),
    }


def test_every_bad_case_ends_as_a_file_or_an_error_row(server, tmp_path):
    cases = bad_cases(base(server))
    mark = len(server.state["log"])
    res = download(list(cases), tmp_path / "out", max_bytes=200_000, **FAST)
    assert [r["url"] for r in res.rows] == list(cases)  # one row per URL, in list order
    by_url = {r["url"]: r for r in res.rows}
    for url, (status, error) in cases.items():
        row = by_url[url]
        assert row["status"] == {"dup": "duplicate"}.get(status, status), row
        assert error in row["error"], row
        if row["status"] != "error":
            assert (tmp_path / "out" / row["path"]).is_file() and len(row["sha256"]) == 64
    # duplicates by content: one file each, the other URL reported as a duplicate of it
    for a, b in (("/img/cat.jpg", "/img/cat.jpg?copy=2"), ("/moved.jpg", "/img/coffee.jpg")):
        ra, rb = by_url[base(server) + a], by_url[base(server) + b]
        assert ra["path"] == rb["path"] and (ra["status"], rb["status"]) == ("ok", "duplicate")  # the first listed
    files = sorted(p for p in (tmp_path / "out").iterdir() if p.name not in ("manifest.csv",))
    assert len(files) == res.counts["files"] == 7 and res.counts["duplicates"] == 2
    assert res.counts["failed"] == sum(s == "error" for s, _ in cases.values())
    # retried: 500 then success, 429 then success after its Retry-After (1 s)
    log = server.state["log"][mark:]
    busy = [t for t, p in log if p == "/busy/1.jpg"]
    assert len(busy) == 2 and busy[1] - busy[0] >= 0.95
    assert sum(p == "/flaky/1.jpg" for _, p in log) == 2
    assert sum(p == "/missing.jpg" for _, p in log) == 1  # a 404 is not retried
    # the manifest is the rows
    with open(tmp_path / "out" / "manifest.csv", newline="", encoding="utf-8") as f:
        assert list(csv.DictReader(f)) == res.rows
    assert res.timings["verify"] > 0 and res.bytes > 0


def test_second_run_downloads_nothing_new(server, tmp_path):
    b = base(server)
    urls = [f"{b}/uniq/{i}.jpg" for i in range(6)] + [f"{b}/missing.jpg", f"{b}/img/cat.jpg", f"{b}/img/cat.jpg#x"]
    first = download(urls, tmp_path / "out", **FAST)
    assert first.counts["files"] == 7 and first.counts["duplicates"] == 1 and first.counts["failed"] == 1
    mark = len(server.state["log"])
    second = download(urls, tmp_path / "out", **FAST)
    assert requests_since(server, mark) == ["/missing.jpg"]  # only the failed URL is tried again
    assert second.counts["new_files"] == 0 and second.counts["skipped"] == 8 and second.counts["fetched"] == 1
    assert second.rows == first.rows
    manifest = (tmp_path / "out" / "manifest.csv").read_text(encoding="utf-8").splitlines()
    assert len(manifest) == 1 + len(urls)  # one row per URL, not one per attempt


def test_labels_splits_filenames_and_dataset_csv(server, tmp_path):
    b = base(server)
    listing = tmp_path / "urls.csv"
    with open(listing, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["URL", "Label", "split", "filename"])
        w.writerow([f"{b}/uniq/10.jpg", "cat", "train", ""])
        w.writerow([f"{b}/uniq/11.jpg", "cat", "val", "../../escape.jpg"])
        w.writerow([f"{b}/uniq/12.jpg", "a/../b", "test", "sub/dir\\name"])
        w.writerow([f"{b}/uniq/13.jpg", "dog", "training", "same.jpg"])
        w.writerow([f"{b}/uniq/14.jpg", "dog", "", "same.jpg"])  # another photo, the same name
        w.writerow([f"{b}/uniq/15.jpg", "", "", ""])  # no label: an error row
        w.writerow([f"{b}/uniq/16.jpg", "dog", "holdout", ""])  # an unknown split: an error row
    res = download(listing, tmp_path / "out", **FAST)
    out = (tmp_path / "out").resolve()
    by_url = {r["url"]: r for r in res.rows}
    assert by_url[f"{b}/uniq/15.jpg"]["error"] == "empty label"
    assert "unknown split" in by_url[f"{b}/uniq/16.jpg"]["error"]
    kept = [r for r in res.rows if r["status"] == "ok"]
    assert len(kept) == 5
    for r in kept:
        p = (out / r["path"]).resolve()
        assert p.is_file() and p.is_relative_to(out) and ".." not in r["path"]
    assert by_url[f"{b}/uniq/10.jpg"]["path"].startswith("cat/")
    assert by_url[f"{b}/uniq/11.jpg"]["path"] == "cat/escape.jpg"
    assert by_url[f"{b}/uniq/12.jpg"]["path"] == "a_b/sub_dir_name.jpg"  # label folder + a flat name
    same = {by_url[f"{b}/uniq/13.jpg"]["path"], by_url[f"{b}/uniq/14.jpg"]["path"]}
    assert len(same) == 2 and "dog/same.jpg" in same  # a name clash never overwrites another photo
    ds = load_dataset(res.dataset_csv)
    got = zip(ds.table["sha256"], ds.table["labels"], ds.table["split"])
    assert sorted((s, tuple(lab), sp) for s, lab, sp in got) == sorted((r["sha256"], (r["label"],), r["split"])
                                                                        for r in kept)
    assert set(ds.classes) == {"cat", "dog", "a/../b"}  # labels as given; folders sanitised


def test_multi_label_list_stays_flat(server, tmp_path):
    b = base(server)
    res = download([{"url": f"{b}/uniq/20.jpg", "labels": "sky;sea"}, {"url": f"{b}/uniq/21.jpg", "labels": "sky"},
                    {"url": f"{b}/uniq/22.jpg", "labels": ""}], tmp_path / "out", **FAST)
    assert all(r["status"] == "ok" and "/" not in r["path"] for r in res.rows)
    ds = load_dataset(res.dataset_csv)
    assert ds.multi_label and sorted(map(tuple, ds.table["labels"])) == [(), ("sea", "sky"), ("sky",)]


def test_server_mode_refuses_private_addresses_and_redirects(server, tmp_path):
    b = base(server)
    own = f"127.0.0.1:{server.server_port}"
    urls = [f"{b}/img/cat.jpg", f"{b}/to-private.jpg", f"http://localhost:{server.server_port}/img/coffee.jpg"]
    mark = len(server.state["log"])
    res = download(urls, tmp_path / "a", private_ok=False, allow_hosts=[own], **FAST)
    rows = {r["url"]: r for r in res.rows}
    assert rows[urls[0]]["status"] == "ok"  # the exact host:port allowed
    assert rows[urls[1]]["status"] == "error" and "refused: 127.0.0.2 is a loopback address" in rows[urls[1]]["error"]
    assert rows[urls[2]]["status"] == "ok"  # the check is on the resolved address: localhost -> 127.0.0.1:port
    assert requests_since(server, mark).count("/img/cat.jpg") == 1  # the direct request only
    # the user's own CLI (private_ok=True) follows the same redirect: it fails only because nothing listens there
    res = download(urls[1:2], tmp_path / "c", **{**FAST, "retries": 0})
    assert res.rows[0]["error"].startswith("connection failed")
    res = download(urls[:1], tmp_path / "b", private_ok=False, **FAST)  # nothing allowed
    assert res.rows[0]["status"] == "error" and "loopback" in res.rows[0]["error"]
    assert "(after" not in res.rows[0]["error"]  # a refusal is not retried


@pytest.mark.parametrize("address, kind", [
    ("10.1.2.3", "private"), ("172.16.0.1", "private"), ("192.168.1.1", "private"), ("127.0.0.2", "loopback"),
    ("169.254.169.254", "link-local"), ("::1", "loopback"), ("fe80::1", "link-local"), ("fc00::1", "private"),
    ("::ffff:127.0.0.1", "loopback"), ("0.0.0.0", "unspecified"), ("100.64.0.1", "non-global"),
    ("224.0.0.1", "multicast"), ("2002:a00:1::", "private"), ("93.184.216.34", None), ("2606:4700::1111", None),
])
def test_address_policy(address, kind):
    strict = AddressPolicy.make(private_ok=False, allow_hosts=["10.1.2.3:8080", "[::1]:9000"])
    why = strict.refusal("h.example", 80, address)
    assert (why is None) == (kind is None)
    if kind:
        assert f"is a {kind} address" in why
    assert strict.refusal("h.example", 8080, "10.1.2.3") is None
    assert strict.refusal("h.example", 9000, "::1") is None and strict.refusal("h.example", 9001, "::1")
    assert AddressPolicy.make(private_ok=True).refusal("h.example", 80, address) is None


def test_the_transport_connects_to_the_address_it_checked(monkeypatch):
    """Name resolution happens in the transport and the socket connects to that checked address, not to the name
    again (no window for a second DNS answer). No outside address is contacted: resolution is faked."""
    import httpcore

    answers = iter([[(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("203.0.113.9", 80))],  # documentation range
                    [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", 80))]])
    monkeypatch.setattr(socket, "getaddrinfo", lambda *a, **k: next(answers))
    seen = []
    monkeypatch.setattr(httpcore.SyncBackend, "connect_tcp", lambda self, host, port, *a, **k: seen.append(host))
    backend = GuardedBackend(AddressPolicy.make(private_ok=False))
    with pytest.raises(RefusedAddress, match=r"rebind.test \(203.0.113.9\) is a private address"):
        backend.connect_tcp("rebind.test", 80)
    with pytest.raises(RefusedAddress, match="loopback"):
        backend.connect_tcp("rebind.test", 80)
    assert seen == []
    answers = iter([[(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", 80))]])
    GuardedBackend(AddressPolicy.make(private_ok=True)).connect_tcp("rebind.test", 80)
    assert seen == ["127.0.0.1"]


def test_credentials_in_urls_are_sent_but_never_written(server, tmp_path):
    port = server.server_port
    urls = [f"http://user:s3cret-pw@127.0.0.1:{port}/auth.jpg", f"http://user:wrong-pw@127.0.0.1:{port}/auth.jpg?2",
            f"http://user:s3cret-pw@127.0.0.1:{port}/missing.jpg"]
    seen = []
    res = download(urls, tmp_path / "out", progress=lambda *a: seen.append(a), **FAST)
    assert [r["status"] for r in res.rows] == ["ok", "error", "error"]
    assert res.rows[0]["url"] == f"http://***@127.0.0.1:{port}/auth.jpg"
    text = (tmp_path / "out" / "manifest.csv").read_text(encoding="utf-8") + json.dumps(res.to_dict())
    assert "s3cret" not in text and "wrong-pw" not in text
    assert seen[-1][:2] == (3, 3) and seen[-1][2] > 0  # progress: done, total, bytes
    assert redact("https://a:b@h/x") == "https://***@h/x" and redact("https://h/x@y") == "https://h/x@y"


def test_retry_after_beyond_the_limit_fails_at_once(server, tmp_path):
    t = time.monotonic()
    res = download([f"{base(server)}/busy-forever.jpg"], tmp_path / "out", **FAST)
    assert time.monotonic() - t < 2 and res.rows[0]["status"] == "error"
    assert res.rows[0]["error"].startswith("HTTP 503; Retry-After 3600 s exceeds the 60 s limit")


def test_retry_after_and_robots_headers():
    from email.utils import formatdate

    from imclass.data.download import _retry_after, _robots_refusal

    assert _retry_after("120") == 120 and _retry_after(None) is None and _retry_after("soon") is None
    assert 25 <= _retry_after(formatdate(time.time() + 30, usegmt=True)) <= 31
    assert _robots_refusal(["noindex, nofollow"]) and _robots_refusal(["imclass: noimageindex"])
    assert _robots_refusal(["none"]) and _robots_refusal(["nofollow", "noarchive"]) is None
    assert _robots_refusal(["googlebot: noindex"]) is None  # another robot's rule
    assert _robots_refusal(["unavailable_after: 25 Jun 2010 15:00:00 PST"]) is None


def test_url_lists(tmp_path):
    text = tmp_path / "urls.txt"
    text.write_text("# photos\nhttp://h/a.jpg\n\n  http://h/b.jpg  \nhttp://h/a.jpg\n", encoding="utf-8")
    records, kind = read_url_list(text)
    assert [r["url"] for r in records] == ["http://h/a.jpg", "http://h/b.jpg", "http://h/a.jpg"] and kind is None
    tsv = tmp_path / "urls.tsv"
    tsv.write_text("url\tlabels\nhttp://h/a.jpg\t\n", encoding="utf-8")
    records, kind = read_url_list(tsv)
    assert records == [{"url": "http://h/a.jpg", "labels": ""}] and kind == "labels"
    lone = tmp_path / "lone.csv"
    lone.write_text("url\nhttp://h/a,b.jpg\nhttp://h/c;d.jpg\n", encoding="utf-8")
    assert read_url_list(lone) == ([{"url": "http://h/a,b.jpg"}, {"url": "http://h/c;d.jpg"}], None)
    bad = tmp_path / "bad.csv"
    bad.write_text("link,label\nhttp://h/a.jpg,cat\n", encoding="utf-8")
    from imclass.data import DatasetError

    with pytest.raises(DatasetError, match="no url column"):
        read_url_list(bad)


def test_repeated_and_empty_urls(server, tmp_path):
    b = base(server)
    res = download([f"{b}/uniq/30.jpg", f"{b}/uniq/30.jpg", ""], tmp_path / "out", **FAST)
    assert res.counts["repeated"] == 1 and [r["status"] for r in res.rows] == ["ok", "error"]
    assert res.rows[1]["error"] == "empty URL"


@pytest.mark.parametrize("name, safe", [
    ("../../etc/passwd", "etc_passwd"), ("a/b\\c", "a_b_c"), ("..", ""), (".hidden.jpg", "hidden.jpg"),
    ("a..b.jpg", "a.b.jpg"), ("C:\\x\\..\\y.png", "C__x_y.png"),
    ("ok name.jpg", "ok name.jpg"), ("x\x00y.png", "x_y.png"), ("ä" * 200 + ".jpg", None),
])
def test_safe_name(name, safe):
    got = safe_name(name)
    assert "/" not in got and "\\" not in got and ".." not in got
    if safe is not None:
        assert got == safe
    else:
        assert len(got.encode()) <= 150 and got.endswith(".jpg")


def test_parameters_are_checked(tmp_path):
    from imclass.errors import ParameterError

    with pytest.raises(ParameterError, match="parallel"):
        download([], tmp_path, parallel=0)
    with pytest.raises(ParameterError, match="allow_hosts"):
        download([], tmp_path, allow_hosts=["http://h:1/"])


# ---- in a fresh process: the CLI, kill -9 ----------------------------------------------------------------

def _write_list(path: Path, urls: list[str]) -> Path:
    path.write_text("url\n" + "".join(u + "\n" for u in urls), encoding="utf-8")
    return path


@pytest.mark.slow
@pytest.mark.parametrize("point", ["download.row:4", "download.saved:3"])
def test_kill_9_then_rerun_loses_and_duplicates_nothing(server, tmp_path, point):
    b = base(server)
    urls = [f"{b}/uniq/{100 + i}.jpg" for i in range(12)] + [f"{b}/img/cat.jpg", f"{b}/img/cat.jpg?again"]
    listing = _write_list(tmp_path / "urls.csv", urls)
    out = tmp_path / "out"
    args = ("data", "download", str(listing), "--out", str(out), "--delay", "0", "--parallel", "2", "-q")
    mark = len(server.state["log"])
    r = run_cli(*args, env_extra={"IMCLASS_KILL_AT": point}, timeout=120)
    assert r.returncode == -9, r.stderr  # killed by SIGKILL where the point said
    before = set(requests_since(server, mark))
    # what the killed run recorded is kept; its rows are complete lines
    with open(out / "manifest.csv", newline="", encoding="utf-8") as f:
        recorded = {row["url"] for row in csv.DictReader(f) if row.get("status") in ("ok", "duplicate")}
    assert recorded and len(recorded) < len(urls)
    mark = len(server.state["log"])
    r = run_cli(*args, "--json", timeout=120)
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    again = requests_since(server, mark)
    assert not {f"{b}{p}" for p in again} & recorded  # what was recorded is not fetched again
    assert {f"{b}{p}" for p in before | set(again)} >= set(urls)
    rows = res["rows"]
    assert [row["url"] for row in rows] == urls and all(row["status"] in ("ok", "duplicate") for row in rows)
    assert res["counts"]["files"] == 13 and res["counts"]["duplicates"] == 1
    files = sorted(p.name for p in out.iterdir() if p.name != "manifest.csv")
    assert len(files) == 13 and not [n for n in files if n.endswith(".tmp")]  # no copies, no temporaries
    assert sorted(row["path"] for row in rows if row["status"] == "ok") == files
    lines = (out / "manifest.csv").read_text(encoding="utf-8").splitlines()
    assert len(lines) == 1 + len(urls)  # rewritten with one row per URL


@pytest.mark.slow
def test_cli_exit_codes_json_and_progress(server, tmp_path):
    b = base(server)
    listing = _write_list(tmp_path / "urls.csv", [f"{b}/uniq/200.jpg", f"{b}/missing.jpg"])
    r = run_cli("data", "download", str(listing), "-o", str(tmp_path / "out"), "--delay", "0", "--retries", "0",
                "--json", timeout=120)
    assert r.returncode == 2, r.stderr  # finished, some URLs failed
    res = json.loads(r.stdout)
    assert res["counts"]["failed"] == 1 and res["rows"][1]["error"].startswith("HTTP 404")
    ok = _write_list(tmp_path / "ok.csv", [f"{b}/uniq/201.jpg"])
    r = run_cli("data", "download", str(ok), "-o", str(tmp_path / "out2"), "--delay", "0",
                env_extra={"COLUMNS": "200"}, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "files/s" in r.stderr and "MB/s" in r.stderr and "1 file," in r.stderr and not r.stdout.strip()
    r = run_cli("data", "download", str(tmp_path / "nope.csv"), "-o", str(tmp_path / "out3"), timeout=120)
    assert r.returncode == 1 and "no such file" in r.stderr and "Traceback" not in r.stderr
