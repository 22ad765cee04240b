"""The studio's JSON API: projects, classes, imports, labels, exports; bad input never gives a 500; keys and
cross-site requests; a studio killed during an import loses nothing and the import can be repeated."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import threading
import zipfile
from pathlib import Path

import pytest
from PIL import Image

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient

from conftest import SAMPLES, make_image
from imclass.studio import StudioSettings, create_app

PHOTOS = sorted(p for p in SAMPLES.iterdir() if p.suffix in (".jpg", ".png"))


@pytest.fixture()
def client(tmp_path):
    app = create_app(StudioSettings(data_dir=tmp_path / "studio", worker="none"))
    with TestClient(app) as c:
        yield c


def new_project(c, name="pets", classes=("cat", "coffee"), task="single_label") -> int:
    r = c.post("/api/v1/projects", json={"name": name, "task": task, "classes": list(classes)})
    assert r.status_code == 201, r.text
    return r.json()["id"]


def upload(c, pid, files, **kw):
    return c.post(f"/api/v1/projects/{pid}/imports", files=[("files", f) for f in files], **kw)


def photo_bytes(name: str) -> bytes:
    return (SAMPLES / name).read_bytes()


# ---- projects and classes --------------------------------------------------------------------------------

def test_projects_and_classes_lifecycle(client):
    pid = new_project(client)
    assert client.post("/api/v1/projects", json={"name": "PETS"}).status_code == 422  # names are unique
    assert client.post("/api/v1/projects", json={"name": ""}).status_code == 422
    assert client.post("/api/v1/projects", json={"name": "x", "task": "detection"}).status_code == 422
    r = upload(client, pid, [("cats/cat.jpg", photo_bytes("cat.jpg"), "image/jpeg"),
                             ("cats/palace.jpg", photo_bytes("palace.jpg"), "image/jpeg"),
                             ("coffee.jpg", photo_bytes("coffee.jpg"), "image/jpeg")])
    assert r.status_code == 200 and r.json()["added"] == 3
    info = client.get(f"/api/v1/projects/{pid}").json()
    assert {c["name"]: c["images"] for c in info["classes"]} == {"cat": 0, "coffee": 0, "cats": 2}
    assert info["labelled"] == 2 and info["unlabelled"] == 1
    r = client.post(f"/api/v1/projects/{pid}/classes/merge", json={"sources": ["cats"], "into": "cat"})
    assert {c["name"]: c["images"] for c in r.json()["classes"]} == {"cat": 2, "coffee": 0}
    r = client.patch(f"/api/v1/projects/{pid}/classes/cat", json={"name": "feline"})
    assert [c["name"] for c in r.json()["classes"]] == ["feline", "coffee"]
    r = client.delete(f"/api/v1/projects/{pid}/classes/feline")
    assert r.json()["unlabelled"] == 3 and [c["name"] for c in r.json()["classes"]] == ["coffee"]
    assert client.patch(f"/api/v1/projects/{pid}", json={"name": "renamed"}).json()["name"] == "renamed"
    stored = [p for p in (client.app.state.studio.store.root / "blobs").rglob("*") if p.is_file()]
    assert client.delete(f"/api/v1/projects/{pid}").status_code == 204
    assert client.get(f"/api/v1/projects/{pid}").status_code == 404
    assert all(p.exists() for p in stored)  # deleting a project never deletes image files


# ---- labels ----------------------------------------------------------------------------------------------

def test_labels_versions_conflicts_and_undo(client):
    pid = new_project(client)
    upload(client, pid, [("cat.jpg", photo_bytes("cat.jpg"), "image/jpeg")])
    iid = client.get(f"/api/v1/projects/{pid}/images").json()["items"][0]["id"]
    r = client.put(f"/api/v1/projects/{pid}/images/{iid}/labels", json={"labels": ["cat"], "version": 0})
    assert r.status_code == 200 and r.json()["version"] == 1
    stale = client.put(f"/api/v1/projects/{pid}/images/{iid}/labels", json={"labels": ["coffee"], "version": 0})
    assert stale.status_code == 409 and stale.json()["current"] == {"id": iid, "labels": ["cat"], "version": 1}
    assert client.put(f"/api/v1/projects/{pid}/images/{iid}/labels",
                      json={"labels": ["dog"]}).status_code == 422  # not a class of the project
    assert client.put(f"/api/v1/projects/{pid}/images/{iid}/labels",
                      json={"labels": ["cat", "coffee"]}).status_code == 422  # single-label
    r = client.post(f"/api/v1/projects/{pid}/images/{iid}/undo")
    assert r.json()["labels"] == [] and r.json()["version"] == 2


def test_concurrent_writes_to_one_image_lose_nothing(client):
    """Many writers at once, each with the version it read: exactly one wins per version, the others get 409
    with the current labels, and the history holds every accepted change."""
    pid = new_project(client, classes=("a", "b", "c", "d"))
    upload(client, pid, [("cat.jpg", photo_bytes("cat.jpg"), "image/jpeg")])
    iid = client.get(f"/api/v1/projects/{pid}/images").json()["items"][0]["id"]
    barrier = threading.Barrier(4)
    results = []

    def write(label):
        barrier.wait()
        r = client.put(f"/api/v1/projects/{pid}/images/{iid}/labels", json={"labels": [label], "version": 0})
        results.append((label, r.status_code, r.json()))

    threads = [threading.Thread(target=write, args=(x,)) for x in "abcd"]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    codes = sorted(code for _, code, _ in results)
    assert codes == [200, 409, 409, 409]
    winner = next(label for label, code, _ in results if code == 200)
    assert all(body["current"]["labels"] == [winner] for _, code, body in results if code == 409)
    events = client.app.state.studio.db.all("SELECT after FROM label_events WHERE image_id = ?", (iid,))
    assert [json.loads(e["after"]) for e in events] == [[winner]]


# ---- imports and bad input --------------------------------------------------------------------------------

def test_bad_files_are_rejected_with_reasons_and_duplicates_counted(client, tmp_path):
    pid = new_project(client)
    truncated = photo_bytes("coffee.jpg")[:2000]
    big = io.BytesIO()
    Image.new("1", (12_000, 12_000)).save(big, "PNG")  # 144 MP: over the decompression-bomb limit
    r = upload(client, pid, [("good.jpg", photo_bytes("cat.jpg"), "image/jpeg"),
                             ("again.jpg", photo_bytes("cat.jpg"), "image/jpeg"),
                             ("notes.jpg", b"just text, not a photo\n" * 20, "image/jpeg"),
                             ("truncated.jpg", truncated, "image/jpeg"),
                             ("empty.png", b"", "image/png"),
                             ("bomb.png", big.getvalue(), "image/png")])
    body = r.json()
    assert r.status_code == 200 and body["added"] == 1 and body["duplicates"] == 1
    reasons = {x["name"]: x["error"] for x in body["rejected"]}
    assert set(reasons) == {"notes.jpg", "truncated.jpg", "empty.png", "bomb.png"}
    assert "not an image" in reasons["notes.jpg"] and "truncat" in reasons["truncated.jpg"]
    again = upload(client, pid, [("good.jpg", photo_bytes("cat.jpg"), "image/jpeg")])
    assert again.json()["added"] == 0 and again.json()["duplicates"] == 1  # the same import twice
    assert client.get(f"/api/v1/projects/{pid}").json()["images"] == 1


def test_unsafe_zips_are_refused_and_good_ones_imported(client):
    pid = new_project(client)

    def zipped(entries, symlink=None) -> bytes:
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as z:
            for name, data in entries:
                z.writestr(name, data)
            if symlink:
                info = zipfile.ZipInfo(symlink)
                info.external_attr = (0o120777 << 16)
                z.writestr(info, "/etc/passwd")
        return buf.getvalue()

    good = zipped([("pets/cat/cat.jpg", photo_bytes("cat.jpg")), ("pets/coffee/coffee.jpg", photo_bytes("coffee.jpg")),
                   ("pets/readme.txt", b"ignored")])
    r = upload(client, pid, [("pets.zip", good, "application/zip")])
    assert r.json()["added"] == 2
    labels = {i["name"]: i["labels"] for i in client.get(f"/api/v1/projects/{pid}/images").json()["items"]}
    assert labels == {"pets/cat/cat.jpg": ["cat"], "pets/coffee/coffee.jpg": ["coffee"]}
    bomb = io.BytesIO()
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("zeros.jpg", b"\0" * (64 * 1024 * 1024))
    for data, why in ((zipped([("../escape.jpg", photo_bytes("cat.jpg"))]), "outside"),
                      (zipped([("/abs/escape.jpg", photo_bytes("cat.jpg"))]), "outside"),
                      (zipped([("a.jpg", photo_bytes("palace.jpg"))], symlink="link.jpg"), "symbolic link"),
                      (bomb.getvalue(), "zip bomb"), (b"PK\x03\x04 not really", "not a readable zip")):
        r = upload(client, pid, [("bad.zip", data, "application/zip")])
        assert r.status_code == 200 and r.json()["added"] == 0, r.text
        assert why in r.json()["rejected"][0]["error"], r.json()
    assert not (client.app.state.studio.settings.data_dir.parent / "escape.jpg").exists()


def test_request_limits_and_malformed_bodies(tmp_path):
    app = create_app(StudioSettings(data_dir=tmp_path / "s", worker="none", max_request_mb=0.1, max_files=2))
    with TestClient(app) as c:
        pid = new_project(c)
        r = c.post(f"/api/v1/projects/{pid}/imports", content=b"--x--",
                   headers={"content-type": "multipart/form-data; boundary=x",
                            "content-length": str(2 * 1024**3)})  # a declared 2 GB body
        assert r.status_code == 413
        r = upload(c, pid, [(f"{i}.jpg", photo_bytes("cat.jpg"), "image/jpeg") for i in range(3)])
        assert r.status_code == 413 and "too many files" in r.json()["detail"]
        assert c.get(f"/api/v1/projects/{pid}").json()["images"] == 1  # what arrived before the limit is kept
        r = c.post(f"/api/v1/projects/{pid}/imports", content=b"garbage", headers={"content-type": "text/plain"})
        assert r.status_code == 415
        r = c.post(f"/api/v1/projects/{pid}/imports", content=b"--x\r\nnonsense",
                   headers={"content-type": "multipart/form-data; boundary=x"})
        assert r.status_code in (400, 422)
        r = c.post(f"/api/v1/projects/{pid}/imports", files=[("photo", ("a.jpg", b"x", "image/jpeg"))])
        assert r.status_code == 422
        r = c.post(f"/api/v1/projects/{pid}/imports", json={"path": str(tmp_path / "missing")})
        assert r.status_code == 422 and "no such file" in r.json()["detail"]
        r = c.post(f"/api/v1/projects/{pid}/imports", content=b"{not json",
                   headers={"content-type": "application/json"})
        assert r.status_code == 422


@pytest.mark.parametrize("method, path, body", [
    ("get", "/api/v1/projects/999", None), ("get", "/api/v1/projects/{pid}/images/999", None),
    ("put", "/api/v1/projects/{pid}/images/999/labels", {"labels": []}),
    ("get", "/api/v1/projects/{pid}/images/999/thumb", None), ("get", "/api/v1/projects/{pid}/imports/999", None),
    ("delete", "/api/v1/projects/{pid}/classes/nope", None), ("post", "/api/v1/projects/{pid}/images/999/undo", None),
    ("get", "/api/v1/projects/{pid}/images?limit=5000", None), ("get", "/api/v1/projects/{pid}/images?status=x", None),
    ("get", "/api/v1/projects/abc", None),
    ("post", "/api/v1/projects/{pid}/labels/bulk", {"ids": [999], "label": "cat"}),
    ("get", "/api/v1/projects/999/imports", None), ("get", "/api/v1/projects/{pid}/imports?limit=-1", None),
    ("get", "/api/v1/projects/999/counts", None), ("get", "/api/v1/projects/{pid}/images?after=999", None),
    ("get", "/api/v1/projects/{pid}/images?after=-3", None),
    ("post", "/api/v1/projects/{pid}/not-duplicates", {"images": [1]}),
    ("post", "/api/v1/projects/{pid}/not-duplicates", {"images": [1, 2, 3]}),
    ("post", "/api/v1/projects/{pid}/not-duplicates", {"images": [998, 999]}),
    ("post", "/api/v1/projects/{pid}/not-duplicates", {"images": ["a", "b"]}),
    ("post", "/api/v1/projects/999/not-duplicates", {"images": [1, 2]}),
    ("get", "/api/v1/projects/999/assist", None),
])
def test_unknown_ids_and_bad_values_are_4xx(client, method, path, body):
    pid = new_project(client)
    r = getattr(client, method)(path.format(pid=pid), **({"json": body} if body is not None else {}))
    assert 400 <= r.status_code < 500, (r.status_code, r.text)


def test_folder_import_runs_in_the_background_and_in_place(client, tmp_path):
    folder = tmp_path / "photos"
    for cls, names in {"cat": ["cat.jpg", "palace.jpg"], "coffee": ["coffee.jpg"]}.items():
        for n in names:
            (folder / cls).mkdir(parents=True, exist_ok=True)
            (folder / cls / n).write_bytes(photo_bytes(n))
    make_image(folder / "cat" / "broken.jpg").write_bytes(b"\xff\xd8 broken")
    pid = new_project(client, classes=())
    r = client.post(f"/api/v1/projects/{pid}/imports", json={"path": str(folder)})
    assert r.status_code in (200, 202)
    import_id = r.json()["id"]
    deadline = 0
    while client.get(f"/api/v1/projects/{pid}/imports/{import_id}").json()["status"] == "running":
        deadline += 1
        assert deadline < 600
        threading.Event().wait(0.1)
    status = client.get(f"/api/v1/projects/{pid}/imports/{import_id}").json()
    assert status["added"] == 3 and len(status["rejected"]) == 1 and status["total"] == 4
    items = client.get(f"/api/v1/projects/{pid}/images").json()["items"]
    assert {i["name"]: i["labels"] for i in items} == {"cat/cat.jpg": ["cat"], "cat/palace.jpg": ["cat"],
                                                      "coffee/coffee.jpg": ["coffee"]}
    paths = {r["path"] for r in client.app.state.studio.db.all("SELECT path FROM images")}
    assert all(p.startswith(str(folder)) for p in paths)  # referenced in place, not copied
    csv_text = client.get(f"/api/v1/projects/{pid}/export").text
    assert csv_text.splitlines()[0] == "path,label,split" and len(csv_text.splitlines()) == 4
    out = tmp_path / "folders"
    r = client.post(f"/api/v1/projects/{pid}/export/folders", json={"out": str(out), "mode": "copy"})
    assert r.json()["images"] == 3 and sorted(p.name for p in out.iterdir()) == ["cat", "coffee"]
    import imclass

    ds = imclass.load_dataset(out)
    assert sorted(ds.classes) == ["cat", "coffee"] and len(ds) == 3


def test_imports_are_listed_with_their_counts(client, tmp_path):
    pid = new_project(client)
    first = upload(client, pid, [("cat.jpg", photo_bytes("cat.jpg"), "image/jpeg"),
                                 ("notes.jpg", b"not a photo\n" * 20, "image/jpeg"),
                                 ("empty.png", b"", "image/png")]).json()
    assert first["rejected_count"] == 2 and len(first["rejected"]) == 2 and first["kind"] == "upload"
    folder = tmp_path / "more"
    for i in range(3):
        make_image(folder / f"{i}.png", color=(40 * i, 90, 200))
    second = client.post(f"/api/v1/projects/{pid}/imports", json={"path": str(folder)}).json()
    assert second["status"] == "done" and second["rejected_count"] == 0 and second["source"] == str(folder)
    listed = client.get(f"/api/v1/projects/{pid}/imports").json()
    assert [i["id"] for i in listed] == [second["id"], first["id"]]  # newest first
    assert [(i["status"], i["added"], i["duplicates"], i["rejected_count"]) for i in listed] == \
        [("done", 3, 0, 0), ("done", 1, 0, 2)]
    assert all("rejected" not in i and i["created"] <= (i["finished"] or 0) for i in listed)
    assert client.get(f"/api/v1/projects/{pid}/imports", params={"limit": 1}).json()[0]["id"] == second["id"]
    assert client.get(f"/api/v1/projects/{pid}/imports/{first['id']}").json()["rejected_count"] == 2
    other = new_project(client, name="other")
    assert client.get(f"/api/v1/projects/{other}/imports").json() == []
    assert client.get("/api/v1/projects/999/imports").status_code == 404
    assert client.get(f"/api/v1/projects/{pid}/imports", params={"limit": 0}).status_code == 422


def _images(client, tmp_path, pid: int, n: int) -> list[dict]:
    """``n`` distinct images imported from a folder, in import (id) order."""
    folder = tmp_path / f"imgs-{pid}"
    for i in range(n):
        make_image(folder / f"img{i:02d}.png", color=(10 + 9 * i, 200 - 7 * i, 60 + 5 * i))
    assert client.post(f"/api/v1/projects/{pid}/imports", json={"path": str(folder)}).json()["added"] == n
    return client.get(f"/api/v1/projects/{pid}/images", params={"limit": 100}).json()["items"]


def _suggest(client, pid: int, margins: dict[int, float], source: str = "probe") -> None:
    db = client.app.state.studio.db
    with db.tx() as con:
        for iid, m in margins.items():
            con.execute("INSERT OR REPLACE INTO suggestions (image_id, project_id, label, score, margin, source, "
                        "topk, model) VALUES (?, ?, 'cat', 0.6, ?, ?, ?, 1)",
                        (iid, pid, m, source, json.dumps([["cat", 0.6], ["coffee", 0.4]])))


def _flag(client, pid: int, iid: int, kind: str, rank: float, other: int | None = None) -> None:
    with client.app.state.studio.db.tx() as con:
        con.execute("INSERT INTO flags (image_id, project_id, kind, detail, rank, other) VALUES (?, ?, ?, 'x', ?, ?)",
                    (iid, pid, kind, rank, other))


def test_counts_of_every_list(client, tmp_path):
    pid = new_project(client)
    ids = [it["id"] for it in _images(client, tmp_path, pid, 8)]
    assert client.get(f"/api/v1/projects/{pid}/counts").json() == {
        "all": 8, "labelled": 0, "unlabelled": 8, "uncertain": 8, "errors": 0, "duplicates": 0,
        "classes": [{"name": "cat", "labelled": 0, "suggested": 0}, {"name": "coffee", "labelled": 0, "suggested": 0}]}
    client.post(f"/api/v1/projects/{pid}/labels/bulk", json={"ids": ids[:3], "label": "cat"})
    client.put(f"/api/v1/projects/{pid}/images/{ids[3]}/labels", json={"labels": ["coffee"]})
    _suggest(client, pid, {ids[0]: 0.5, ids[5]: 0.1, ids[6]: 0.2})  # suggested cat: 2 of them unlabelled
    _flag(client, pid, ids[0], "label_issue", 1.0)
    _flag(client, pid, ids[1], "duplicate", 2.0, other=ids[2])
    _flag(client, pid, ids[1], "outlier", 3.0)
    c = client.get(f"/api/v1/projects/{pid}/counts").json()
    assert c == {"all": 8, "labelled": 4, "unlabelled": 4, "uncertain": 4, "errors": 2, "duplicates": 1,
                 "classes": [{"name": "cat", "labelled": 3, "suggested": 2},
                             {"name": "coffee", "labelled": 1, "suggested": 0}]}
    for q, n in (({"status": "unlabelled"}, 4), ({"queue": "errors"}, 2), ({"queue": "duplicates"}, 1),
                 ({"label": "cat"}, 3), ({"suggested": "cat", "status": "unlabelled"}, 2)):
        assert client.get(f"/api/v1/projects/{pid}/images", params=q).json()["total"] == n, q  # the lists agree
    # the label view's queue menu and the grid's filters show them
    html = client.get(f"/projects/{pid}/label").text
    assert ">Unlabelled (4)</option>" in html and ">Likely label errors (2)</option>" in html
    assert ">Labelled cat (3)</option>" in html and ">Duplicates (1)</option>" in html
    grid = client.get(f"/projects/{pid}/grid").text
    assert 'data-qcount="errors">2</span>' in grid and ">cat (3)</option>" in grid and ">labelled (4)</option>" in grid
    assert client.get("/api/v1/projects/999/counts").status_code == 404


def test_image_fields_say_whose_guesses_they_are(client, tmp_path):
    pid = new_project(client)
    a, b, c = (it["id"] for it in _images(client, tmp_path, pid, 3))
    _suggest(client, pid, {a: 0.2})
    _suggest(client, pid, {b: 0.3}, source="imagenet")
    img = client.get(f"/api/v1/projects/{pid}/images/{a}").json()
    assert img["probe_scores"] == [["cat", 0.6], ["coffee", 0.4]] and img["imagenet_guesses"] == []
    assert img["suggestion"]["source"] == "probe" and img["hints"] == img["probe_scores"]  # kept, deprecated
    img = client.get(f"/api/v1/projects/{pid}/images/{b}").json()
    assert img["imagenet_guesses"] == [["cat", 0.6], ["coffee", 0.4]] and img["probe_scores"] == []
    img = client.get(f"/api/v1/projects/{pid}/images/{c}").json()
    assert img["imagenet_guesses"] == img["probe_scores"] == img["hints"] == [] and img["suggestion"] is None
    schema = client.get("/openapi.json").json()["components"]["schemas"]["ImageOut"]["properties"]
    assert schema["hints"].get("deprecated") is True and "ImageNet" in schema["imagenet_guesses"]["description"]


def test_a_cursor_pages_on_right_while_the_list_changes(client, tmp_path):
    pid = new_project(client)
    ids = [it["id"] for it in _images(client, tmp_path, pid, 10)]

    def page(**q) -> list[int]:
        r = client.get(f"/api/v1/projects/{pid}/images", params={"limit": 3, **q})
        assert r.status_code == 200, r.text
        return [it["id"] for it in r.json()["items"]]

    first = page(status="unlabelled")
    assert first == ids[:3]
    # meanwhile images are labelled in another tab: held ones, and the next ones
    client.post(f"/api/v1/projects/{pid}/labels/bulk", json={"ids": [ids[1], ids[3], ids[4]], "label": "cat"})
    assert page(status="unlabelled", after=first[-1]) == [ids[5], ids[6], ids[7]]  # nothing skipped
    assert page(status="unlabelled", offset=len(first)) == [ids[6], ids[7], ids[8]]  # an offset skips one
    assert page(status="unlabelled", after=ids[4]) == [ids[5], ids[6], ids[7]]  # a cursor that left the list
    assert page(status="unlabelled", after=ids[9]) == []
    total = client.get(f"/api/v1/projects/{pid}/images", params={"status": "unlabelled", "after": ids[5]}).json()
    assert total["total"] == 7 and len(total["items"]) == 4  # total: the whole list
    # by name
    by_name = page(order="name", limit=10)
    assert page(order="name", after=by_name[2]) == by_name[3:6]
    # most uncertain first; images without a suggestion last
    _suggest(client, pid, {ids[0]: 0.4, ids[2]: 0.1, ids[5]: 0.1, ids[6]: 0.9})
    order = page(status="unlabelled", order="uncertain", limit=10)
    assert order[:4] == [ids[2], ids[5], ids[0], ids[6]] and order[4:] == [ids[7], ids[8], ids[9]]
    assert page(status="unlabelled", order="uncertain", after=ids[5]) == [ids[0], ids[6], ids[7]]
    assert page(status="unlabelled", order="uncertain", after=ids[6]) == [ids[7], ids[8], ids[9]]
    # a review queue: by flag rank; a cursor on an image no longer flagged starts again
    _flag(client, pid, ids[8], "label_issue", 1.5)
    _flag(client, pid, ids[3], "conflict", 0.2)
    _flag(client, pid, ids[6], "outlier", 3.0)
    assert page(queue="errors", limit=10) == [ids[3], ids[8], ids[6]]
    assert page(queue="errors", after=ids[3]) == [ids[8], ids[6]]
    assert page(queue="errors", after=ids[0]) == [ids[3], ids[8], ids[6]]
    assert client.get(f"/api/v1/projects/{pid}/images", params={"after": 999_999}).status_code == 404
    for bad in ({"after": 0}, {"after": "x"}, {"after": 2**70}):
        assert client.get(f"/api/v1/projects/{pid}/images", params=bad).status_code == 422, bad
    other = new_project(client, name="other")
    assert client.get(f"/api/v1/projects/{other}/images", params={"after": ids[0]}).status_code == 404


def test_studio_command_takes_the_assistance_settings(monkeypatch, capsys, tmp_path):
    import imclass.studio.server as server
    from imclass.cli import main

    seen = []
    monkeypatch.setattr(server, "run_studio", lambda settings, **kw: seen.append(settings) or True)
    assert main(["studio", "--data-dir", str(tmp_path), "--retrain-every", "5", "--min-per-class", "2"]) == 0
    assert (seen[0].retrain_every, seen[0].min_per_class) == (5, 2)
    assert main(["studio", "--data-dir", str(tmp_path)]) == 0
    assert (seen[1].retrain_every, seen[1].min_per_class) == (StudioSettings.retrain_every,
                                                              StudioSettings.min_per_class)
    capsys.readouterr()
    for flag in ("--retrain-every", "--min-per-class"):
        assert main(["studio", "--data-dir", str(tmp_path), flag, "0"]) == 1
        assert f"{flag} must be >= 1" in capsys.readouterr().err
    assert len(seen) == 2


# ---- keys and cross-site requests ------------------------------------------------------------------------

def test_api_key_cookie_login_and_cross_site(tmp_path):
    key = "k" * 24
    app = create_app(StudioSettings(data_dir=tmp_path / "s", worker="none", api_key=key))
    with TestClient(app) as c:
        assert c.get("/api/v1/projects").status_code == 401
        assert c.get("/", follow_redirects=False).status_code == 303
        assert c.get("/api/v1/projects", headers={"Authorization": f"Bearer {key}"}).status_code == 200
        assert c.get("/api/v1/projects", headers={"X-API-Key": "wrong-key-here"}).status_code == 401
        r = c.post("/login", data={"key": "nope", "next": "/"}, follow_redirects=False)
        assert r.status_code == 303 and "failed" in r.headers["location"]
        r = c.post("/login", data={"key": key, "next": "//evil.example/"}, follow_redirects=False)
        assert r.headers["location"] == "/"  # a login link cannot send people to another site
        assert c.get("/api/v1/projects").status_code == 200  # the cookie works
        cross = {"origin": "http://evil.example", "sec-fetch-site": "cross-site"}
        assert c.post("/api/v1/projects", json={"name": "x"}, headers=cross).status_code == 403
        same = {"origin": "http://testserver", "sec-fetch-site": "same-origin"}
        assert c.post("/api/v1/projects", json={"name": "x"}, headers=same).status_code == 201
        scripted = {"X-API-Key": key, **cross}  # a script sending the key is not a browser: allowed
        assert c.post("/api/v1/projects", json={"name": "y"}, headers=scripted).status_code == 201


def test_exposed_studio_reads_only_allowed_folders(tmp_path):
    allowed = tmp_path / "allowed"
    (allowed / "cat").mkdir(parents=True)
    (allowed / "cat" / "cat.jpg").write_bytes(photo_bytes("cat.jpg"))
    app = create_app(StudioSettings(data_dir=tmp_path / "s", worker="none", allow_dirs=(allowed,)))
    with TestClient(app) as c:
        pid = new_project(c)
        r = c.post(f"/api/v1/projects/{pid}/imports", json={"path": str(SAMPLES)})
        assert r.status_code == 422 and "--allow-dir" in r.json()["detail"]
        r = c.post(f"/api/v1/projects/{pid}/imports", json={"path": str(allowed / ".." / ".." / "s")})
        assert r.status_code == 422
        assert c.post(f"/api/v1/projects/{pid}/imports", json={"path": str(allowed)}).json()["added"] == 1


def test_an_earlier_schema_is_migrated(tmp_path):
    """A data folder of schema 1 (the first studio release) opens: its rows are kept and the schema upgraded."""
    from imclass.studio.db import MIGRATIONS, SCHEMA_VERSION, Database, _statements

    path = tmp_path / "s" / "studio.sqlite3"
    path.parent.mkdir()
    old = Database(path)
    con = old.connection()
    for statement in _statements(MIGRATIONS[0]):
        con.execute(statement)
    con.execute("PRAGMA user_version=1")
    con.execute("INSERT INTO projects (name, task, created, updated) VALUES ('old', 'single_label', 0, 0)")
    old.close()
    app = create_app(StudioSettings(data_dir=tmp_path / "s", worker="none"))
    with TestClient(app) as c:
        assert [p["name"] for p in c.get("/api/v1/projects").json()] == ["old"]
        assert app.state.studio.db.version() == SCHEMA_VERSION


# ---- kill -9 during an import ------------------------------------------------------------------------------

@pytest.mark.slow
def test_kill_9_during_an_import_then_restart_and_repeat(tmp_path):
    """A studio killed (SIGKILL) right after its 5th file is committed: after a restart no image is half
    imported, the counts agree with the images, and repeating the import adds only what is missing."""
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(12):
        img = Image.open(SAMPLES / PHOTOS[i % len(PHOTOS)].name).convert("RGB").rotate(i * 7)
        img.save(folder / f"p{i:02d}.jpg", quality=90)
    data = tmp_path / "studio"
    script = (
        "import sys, json, httpx, threading\n"
        "from imclass.studio import StudioSettings, create_app\n"
        "from fastapi.testclient import TestClient\n"
        "import imclass.studio.imports as imp\n"
        "from imclass import faults\n"
        "real = imp.commit\n"
        "def commit(*a, **k):\n"
        "    r = real(*a, **k)\n"
        "    faults.checkpoint('studio.commit')\n"
        "    return r\n"
        "imp.commit = commit\n"
        f"app = create_app(StudioSettings(data_dir={str(data)!r}, worker='none'))\n"
        "with TestClient(app) as c:\n"
        "    pid = c.post('/api/v1/projects', json={'name': 'p'}).json()['id']\n"
        f"    c.post(f'/api/v1/projects/{{pid}}/imports', json={{'path': {str(folder)!r}}})\n"
        "    print('finished without being killed')\n"
    )
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "IMCLASS_KILL_AT": "studio.commit:5"})
    assert r.returncode == -signal.SIGKILL, r.stdout + r.stderr
    app = create_app(StudioSettings(data_dir=data, worker="none"))
    with TestClient(app) as c:
        s = app.state.studio
        images = s.db.all("SELECT * FROM images")
        assert len(images) == 5 and all(Path(i["path"]).is_file() for i in images)
        imp = s.db.one("SELECT * FROM imports")
        assert imp["status"] == "interrupted" and imp["added"] == 5
        r = c.post("/api/v1/projects/1/imports", json={"path": str(folder)})
        assert r.json()["added"] == 7 and r.json()["duplicates"] == 5
        assert c.get("/api/v1/projects/1").json()["images"] == 12
