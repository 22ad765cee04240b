"""The labelling tools' formats: round trips (import -> export -> import keeps every image's labels and split)
for csv, class folders, Label Studio JSON, Hugging Face imagefolder and ``datasets`` folders, and imports of
fixtures shaped as Label Studio and Hugging Face document their formats (not only imclass's own output)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from conftest import SAMPLES, make_image, run_cli
from imclass.cli import main
from imclass.data import FORMATS, DatasetError, export_dataset, load_dataset
from imclass.errors import ParameterError

COLOURS = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (200, 200, 30), (30, 200, 200), (200, 30, 200),
           (120, 60, 10), (10, 60, 120), (90, 90, 90), (250, 250, 250), (5, 5, 5), (160, 100, 220)]


def signature(ds) -> list[tuple]:
    """What a round trip must keep: each image (by content) with its labels and split."""
    return sorted((sha, tuple(sorted(labels)), split)
                  for sha, labels, split in zip(ds.table["sha256"], ds.table["labels"], ds.table["split"]))


@pytest.fixture(scope="module")
def single(tmp_path_factory) -> Path:
    """Single-label, every split used, some rows unassigned; two files share a name in different folders."""
    root = tmp_path_factory.mktemp("single")
    rows = []
    for i, colour in enumerate(COLOURS[:9]):
        label = ("cat", "dog", "bird")[i % 3]
        split = ("train", "val", "test", "")[i % 4]
        p = make_image(root / "img" / f"d{i % 2}" / f"photo{i // 2}.png", color=colour)
        rows.append(f"{p.relative_to(root)},{label},{split}")
    shutil.copy(SAMPLES / "cat.jpg", root / "img" / "real.jpg")
    rows.append("img/real.jpg,cat,train")
    (root / "data.csv").write_text("filename,label,split\n" + "\n".join(rows) + "\n", encoding="utf-8")
    return root / "data.csv"


@pytest.fixture(scope="module")
def multi(tmp_path_factory) -> Path:
    """Multi-label with an image that has no label, splits mixed."""
    root = tmp_path_factory.mktemp("multi")
    labels = ["sky;sea", "sky", "", "sea;sand;sky", "sand", "sky;sand"]
    rows = []
    for i, lab in enumerate(labels):
        p = make_image(root / f"m{i}.png", color=COLOURS[i])
        rows.append(f"{p.name},{lab},{('train', 'val', '', 'test')[i % 4]}")
    (root / "data.csv").write_text("filename,labels,split\n" + "\n".join(rows) + "\n", encoding="utf-8")
    return root / "data.csv"


def _target(tmp_path: Path, fmt: str) -> Path:
    return tmp_path / {"csv": "out.csv", "labelstudio": "tasks.json"}.get(fmt, "out")


@pytest.mark.parametrize("fmt", FORMATS)
def test_round_trip_single_label(single, tmp_path, fmt):
    if fmt == "hf-datasets":
        pytest.importorskip("datasets")
    ds = load_dataset(single)
    res = export_dataset(ds, _target(tmp_path, fmt), format=fmt)
    back = load_dataset(res["out"])
    assert signature(back) == signature(ds) and not back.multi_label
    assert res["images"] == len(ds) == 10 and back.table["error"].isna().all()


@pytest.mark.parametrize("fmt", [f for f in FORMATS if f != "folders"])
def test_round_trip_multi_label(multi, tmp_path, fmt):
    if fmt == "hf-datasets":
        pytest.importorskip("datasets")
    ds = load_dataset(multi)
    assert ds.multi_label
    back = load_dataset(export_dataset(ds, _target(tmp_path, fmt), format=fmt)["out"])
    assert back.multi_label and signature(back) == signature(ds)


def test_folders_refuse_multi_label_and_unsafe_class_names(multi, tmp_path):
    with pytest.raises(ParameterError, match="multi-label"):
        export_dataset(load_dataset(multi), tmp_path / "f", format="folders")
    root = tmp_path / "odd"
    make_image(root / "x.png")
    (root / "d.csv").write_text("filename,label\nx.png,.hidden\n", encoding="utf-8")
    with pytest.raises(ParameterError, match="cannot be a folder name"):
        export_dataset(load_dataset(root / "d.csv"), tmp_path / "g", format="folders")


def test_unsplit_class_named_like_a_split_goes_under_all(tmp_path):
    root = tmp_path / "src"
    for i in range(2):
        make_image(root / f"{i}.png", color=COLOURS[i])
    (root / "d.csv").write_text("filename,label\n0.png,test\n1.png,other\n", encoding="utf-8")
    ds = load_dataset(root / "d.csv")
    assert ds.classes == ["other", "test"] and ds.splits == [""]
    res = export_dataset(ds, tmp_path / "out", format="folders")
    assert (tmp_path / "out" / "all" / "test").is_dir()
    assert signature(load_dataset(res["out"])) == signature(ds)


def test_export_guards(single, tmp_path):
    ds = load_dataset(single)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x").write_text("x")
    with pytest.raises(ParameterError, match="new or empty folder"):
        export_dataset(ds, tmp_path / "busy", format="imagefolder")
    with pytest.raises(ParameterError, match="format must be one of"):
        export_dataset(ds, tmp_path / "y", format="coco")
    with pytest.raises(ParameterError, match="must be a Dataset"):
        export_dataset(str(single), tmp_path / "z")
    assert export_dataset(ds, tmp_path / "d.csv")["format"] == "csv"  # from the suffix
    assert export_dataset(ds, tmp_path / "t.json")["format"] == "labelstudio"
    assert export_dataset(ds, tmp_path / "links", mode="link")["format"] == "folders"
    assert all(p.is_symlink() for p in (tmp_path / "links").rglob("*.png"))


def test_label_studio_output_is_what_label_studio_imports(single, tmp_path):
    ds = load_dataset(single)
    out = tmp_path / "tasks.json"
    export_dataset(ds, out, image_prefix="/data/local-files/?d=")
    tasks = json.loads(out.read_text(encoding="utf-8"))
    assert len(tasks) == 10
    t = tasks[0]
    assert t["data"]["image"].startswith("/data/local-files/?d=../")
    [result] = t["annotations"][0]["result"]
    assert result["type"] == "choices" and result["from_name"] == "label" and result["to_name"] == "image"
    config = (tmp_path / "tasks.labelconfig.xml").read_text(encoding="utf-8")
    assert '<Image name="image" value="$image"/>' in config and 'choice="single"' in config
    assert '<Choice value="bird"/>' in config
    assert signature(load_dataset(out)) == signature(ds)  # the prefix resolves back


# ---- fixtures shaped as the tools document them -----------------------------------------------------------

@pytest.fixture()
def media(tmp_path) -> Path:
    """Label Studio's media folder: uploads are stored as upload/<project>/<8 hex>-<original name>."""
    up = tmp_path / "media" / "upload" / "1"
    make_image(up / "8c3f2d1a-cat.png", color=COLOURS[0])
    make_image(up / "1b2c3d4e-dog.png", color=COLOURS[1])
    make_image(up / "99aa88bb-cow.png", color=COLOURS[2])
    make_image(up / "0f0f0f0f-unlabelled.png", color=COLOURS[3])
    make_image(tmp_path / "media" / "photos" / "bird one.png", color=COLOURS[4])
    make_image(tmp_path / "media" / "remote.png", color=COLOURS[5])
    return tmp_path / "media"


def _ls_task(task_id: int, image: str, annotations: list[dict]) -> dict:
    """A task as Label Studio's JSON export writes it (guide/export.html, "Label Studio JSON format")."""
    return {
        "id": task_id, "data": {"image": image}, "annotations": annotations, "predictions": [], "meta": {},
        "created_at": "2021-03-09T21:52:49.513742Z", "updated_at": "2021-03-09T22:16:08.746926Z", "inner_id": task_id,
        "total_annotations": len(annotations), "cancelled_annotations": 0, "total_predictions": 0, "project": 1,
        "updated_by": 10, "file_upload": image.rsplit("/", 1)[-1], "comment_count": 0, "unresolved_comment_count": 0,
        "last_comment_updated_at": None, "comment_authors": [],
    }


def _ls_annotation(ann_id: int, choices: list[str], *, cancelled: bool = False, updated: str = "2021-03-09T22:16:08Z",
                   from_name: str = "choice") -> dict:
    return {
        "id": ann_id, "completed_by": 10, "was_cancelled": cancelled, "ground_truth": False,
        "created_at": updated, "updated_at": updated, "lead_time": 4.288, "result_count": 0, "task": ann_id,
        "result": [{"value": {"choices": choices}, "id": f"Dx_aB91I{ann_id}", "from_name": from_name,
                    "to_name": "image", "type": "choices", "origin": "manual"}] if choices else [],
    }


def test_label_studio_full_export(media, tmp_path):
    tasks = [
        _ls_task(1, "/data/upload/1/8c3f2d1a-cat.png", [_ls_annotation(1, ["Cat"])]),
        _ls_task(2, "/data/upload/1/1b2c3d4e-dog.png", [  # relabelled later: the latest annotation wins
            _ls_annotation(2, ["Cat"], updated="2021-03-09T22:00:00Z"),
            _ls_annotation(3, ["Dog"], updated="2021-03-10T08:00:00Z")]),
        _ls_task(3, "/data/upload/1/99aa88bb-cow.png", [_ls_annotation(4, ["Cow"], cancelled=True)]),  # skipped
        _ls_task(4, "/data/upload/1/0f0f0f0f-unlabelled.png", []),  # nobody labelled it
        _ls_task(5, "/data/local-files/?d=photos%2Fbird%20one.png", [_ls_annotation(5, ["Bird"])]),
        _ls_task(6, "https://example.com/data/remote.png", [_ls_annotation(6, ["Cat"])]),
    ]
    export = tmp_path / "project-1-at-2021-03-10.json"
    export.write_text(json.dumps(tasks, indent=2), encoding="utf-8")
    ds = load_dataset(export, images_dir=media)
    got = {Path(p).name: labels for p, labels in zip(ds.table["path"], ds.table["labels"])}
    assert got == {"8c3f2d1a-cat.png": ["Cat"], "1b2c3d4e-dog.png": ["Dog"], "bird one.png": ["Bird"],
                   "remote.png": ["Cat"]}
    assert not ds.multi_label and ds.classes == ["Bird", "Cat", "Dog"]
    assert sorted(p.reason for p in ds.problems) == ["not labelled (no annotation with choices): left out"] * 2
    # without the images folder: a message that says how to fix it
    with pytest.raises(DatasetError, match="--images-dir"):
        load_dataset(export)


def test_label_studio_multi_label_and_json_min(media, tmp_path):
    tasks = [_ls_task(1, "/data/upload/1/8c3f2d1a-cat.png", [_ls_annotation(1, ["Indoor", "Cat"])]),
             _ls_task(2, "/data/upload/1/1b2c3d4e-dog.png", [_ls_annotation(2, ["Dog"])]),
             _ls_task(3, "/data/upload/1/99aa88bb-cow.png", [_ls_annotation(3, [])])]  # submitted, nothing chosen
    (tmp_path / "multi.json").write_text(json.dumps(tasks), encoding="utf-8")
    ds = load_dataset(tmp_path / "multi.json", images_dir=media)
    assert ds.multi_label and sorted(map(tuple, ds.table["labels"])) == [(), ("Cat", "Indoor"), ("Dog",)]
    # JSON_MIN: one flat object per task; several choices come as {"choices": [...]}
    flat = [
        {"image": "/data/upload/1/8c3f2d1a-cat.png", "id": 1, "choice": "Cat", "annotator": 10,
         "annotation_id": 1, "created_at": "2021-03-09T22:16:08Z", "updated_at": "2021-03-09T22:16:08Z",
         "lead_time": 2.5},
        {"image": "/data/upload/1/1b2c3d4e-dog.png", "id": 2, "choice": {"choices": ["Dog", "Outdoor"]},
         "annotator": 10, "annotation_id": 2, "created_at": "2021-03-09T22:16:08Z",
         "updated_at": "2021-03-09T22:16:08Z", "lead_time": 1.0},
        {"image": "/data/upload/1/0f0f0f0f-unlabelled.png", "id": 3},
    ]
    (tmp_path / "min.json").write_text(json.dumps(flat), encoding="utf-8")
    ds = load_dataset(tmp_path / "min.json", images_dir=media / "upload" / "1")
    assert ds.multi_label and sorted(map(tuple, ds.table["labels"])) == [("Cat",), ("Dog", "Outdoor")]
    assert len(ds.problems) == 1


def test_label_studio_bad_input(tmp_path):
    (tmp_path / "x.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(DatasetError, match="not valid JSON"):
        load_dataset(tmp_path / "x.json")
    make_image(tmp_path / "a.png")
    tasks = [_ls_task(1, "a.png", [_ls_annotation(1, ["A"])]), _ls_task(2, "missing.png", [_ls_annotation(2, ["B"])])]
    (tmp_path / "t.json").write_text(json.dumps(tasks), encoding="utf-8")
    with pytest.raises(DatasetError, match=r"task 2 .*image not found: missing\.png"):
        load_dataset(tmp_path / "t.json")
    ds = load_dataset(tmp_path / "t.json", on_error="skip")
    assert len(ds) == 1 and "image not found" in ds.problems[0].reason


def test_hf_imagefolder_metadata_csv_per_split(tmp_path):
    """As the datasets docs lay it out: folder/{train,test}/metadata.csv with file_name and more columns."""
    root = tmp_path / "folder"
    for split, names in (("train", ("0001.png", "0002.png", "0003.png")), ("test", ("0004.png",))):
        lines = ["file_name,label,additional_feature"]
        for i, name in enumerate(names):
            make_image(root / split / name, color=COLOURS[int(name[:4])])
            lines.append(f"{name},{('cat', 'dog')[i % 2]},This is a value of a text feature you added to your images")
        (root / split / "metadata.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    make_image(root / "train" / "not-listed.png", color=COLOURS[9])  # imagefolder reads metadata, not loose files
    ds = load_dataset(root)
    got = sorted((Path(p).name, tuple(lab), s) for p, lab, s in zip(ds.table["path"], ds.table["labels"],
                                                                     ds.table["split"]))
    assert got == [("0001.png", ("cat",), "train"), ("0002.png", ("dog",), "train"), ("0003.png", ("cat",), "train"),
                   ("0004.png", ("cat",), "test")]


def test_hf_imagefolder_metadata_jsonl_at_the_root(tmp_path):
    """One metadata.jsonl at the root naming files in split folders; lists make it multi-label; no label column
    falls back to the image's class folder."""
    root = tmp_path / "folder"
    make_image(root / "train" / "a.png", color=COLOURS[0])
    make_image(root / "validation" / "b.png", color=COLOURS[1])
    make_image(root / "c.png", color=COLOURS[2])
    lines = [{"file_name": "train/a.png", "labels": ["sky", "sea"]}, {"file_name": "validation/b.png", "labels": []},
             {"file_name": "c.png", "labels": ["sky"]}]
    (root / "metadata.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines), encoding="utf-8")
    ds = load_dataset(root)
    assert ds.multi_label
    got = sorted((Path(p).name, tuple(sorted(lab)), s) for p, lab, s in zip(ds.table["path"], ds.table["labels"],
                                                                             ds.table["split"]))
    assert got == [("a.png", ("sea", "sky"), "train"), ("b.png", (), "val"), ("c.png", ("sky",), "")]
    other = tmp_path / "byfolder"
    make_image(other / "train" / "cat" / "x.png", color=COLOURS[3])
    (other / "train" / "metadata.jsonl").write_text(json.dumps({"file_name": "cat/x.png", "text": "a cat"}) + "\n")
    ds = load_dataset(other)
    assert list(ds.table["labels"]) == [["cat"]] and list(ds.table["split"]) == ["train"]
    (root / "metadata.jsonl").write_text(json.dumps({"image": "a.png"}) + "\n")
    with pytest.raises(DatasetError, match="no file_name column"):
        load_dataset(root)


def test_hf_class_folder_imagefolder(tmp_path):
    """imagefolder's class-folder layout (folder/train/dog/golden_retriever.png) is the class-folders importer's."""
    for i, (split, cls) in enumerate((("train", "dog"), ("train", "cat"), ("validation", "dog"), ("test", "cat"))):
        make_image(tmp_path / "folder" / split / cls / f"{i}.png", color=COLOURS[i])
    ds = load_dataset(tmp_path / "folder")
    assert ds.classes == ["cat", "dog"] and ds.splits == ["train", "val", "test"]


def test_our_imagefolder_output_loads_in_the_datasets_library(single, tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    ds = load_dataset(single).select(["train", "val", "test"])
    out = export_dataset(ds, tmp_path / "out", format="imagefolder")["out"]
    hf = datasets.load_dataset("imagefolder", data_dir=out, cache_dir=str(tmp_path / "cache"))
    assert sorted(hf) == ["test", "train", "validation"]
    counts = {k: len(v) for k, v in hf.items()}
    assert counts == {"train": int((ds.table["split"] == "train").sum()),
                      "validation": int((ds.table["split"] == "val").sum()),
                      "test": int((ds.table["split"] == "test").sum())}
    assert sorted(hf["train"]["label"]) == sorted(lab[0] for lab, s in zip(ds.table["labels"], ds.table["split"])
                                                  if s == "train")


def test_hf_datasets_folders_written_by_the_library(tmp_path):
    """save_to_disk folders as the datasets library writes them: a DatasetDict with ClassLabel (names kept in
    order), a multi-label list of ClassLabel, and a cifar-like one with other column names and string labels."""
    datasets = pytest.importorskip("datasets")
    from datasets import ClassLabel, Dataset, DatasetDict, Features, Image, Sequence, Value

    paths = [str(make_image(tmp_path / "src" / f"{i}.png", color=COLOURS[i])) for i in range(5)]
    feats = Features({"image": Image(), "label": ClassLabel(names=["zebra", "ant", "unused"])})
    DatasetDict({"train": Dataset.from_dict({"image": paths[:3], "label": [0, 1, 0]}, features=feats),
                 "test": Dataset.from_dict({"image": paths[3:], "label": [1, 1]}, features=feats)}
                ).save_to_disk(str(tmp_path / "dd"))
    ds = load_dataset(tmp_path / "dd", images_dir=tmp_path / "extracted")
    assert ds.classes == ["zebra", "ant", "unused"]  # ClassLabel order, as the library numbers them
    assert sorted(zip(ds.table["split"], map(tuple, ds.table["labels"]))) == [
        ("test", ("ant",)), ("test", ("ant",)), ("train", ("ant",)), ("train", ("zebra",)), ("train", ("zebra",))]
    assert all(Path(p).is_relative_to(tmp_path / "extracted") for p in ds.table["path"])
    assert ds.table["error"].isna().all()
    multi = Features({"image": Image(), "labels": Sequence(ClassLabel(names=["a", "b"]))})
    Dataset.from_dict({"image": paths[:2], "labels": [[0, 1], []]}, features=multi).save_to_disk(str(tmp_path / "m"))
    ds = load_dataset(tmp_path / "m")
    assert ds.multi_label and sorted(map(tuple, ds.table["labels"])) == [(), ("a", "b")] and ds.splits == [""]
    cifar = Features({"img": Image(), "fine_label": ClassLabel(names=["apple", "pear"]), "note": Value("string")})
    Dataset.from_dict({"img": paths[:2], "fine_label": [1, 0], "note": ["x", "y"]}, features=cifar).save_to_disk(
        str(tmp_path / "c"))
    assert sorted(lab[0] for lab in load_dataset(tmp_path / "c").table["labels"]) == ["apple", "pear"]
    strings = Features({"image": Image(), "label": Value("string")})
    Dataset.from_dict({"image": paths[:2], "label": ["x", "y"]}, features=strings).save_to_disk(str(tmp_path / "s"))
    assert sorted(load_dataset(tmp_path / "s").classes) == ["x", "y"]
    _ = datasets


def test_cli_export_in_process(single, tmp_path, capsys):
    assert main(["data", "export", str(single), "--format", "labelstudio", "--out", str(tmp_path / "t.json"),
                 "--json", "-q"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["format"] == "labelstudio" and res["images"] == 10
    assert main(["data", "export", str(tmp_path / "t.json"), "-o", str(tmp_path / "imgf"), "-f", "imagefolder",
                 "-q"]) == 0
    assert signature(load_dataset(tmp_path / "imgf")) == signature(load_dataset(single))
    assert main(["data", "export", str(single), "-o", str(tmp_path / "x"), "-f", "coco"]) == 1
    assert "--format" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_export_converts_between_formats(single, tmp_path):
    r = run_cli("data", "export", str(single), "--out", str(tmp_path / "tasks.json"), timeout=120)
    assert r.returncode == 0, r.stderr
    assert "Wrote 10 images, 3 classes (single-label) as labelstudio" in r.stderr
    r = run_cli("data", "export", str(tmp_path / "tasks.json"), "--format", "folders", "--out",
                str(tmp_path / "folders"), "--json", timeout=120)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["format"] == "folders"
    assert signature(load_dataset(tmp_path / "folders")) == signature(load_dataset(single))
