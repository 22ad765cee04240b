"""Dataset importers: class folders, split folders, CSV/TSV (single, multi-label, multi-hot), clear errors."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import make_image


@pytest.fixture()
def folders(tmp_path):
    for cls, colour in (("cat", (200, 30, 30)), ("dog", (30, 200, 30))):
        for i in range(3):
            make_image(tmp_path / "data" / cls / f"{i}.JPG", color=colour)
    make_image(tmp_path / "data" / "dog" / "nested" / "deep.png", color=(30, 30, 200))
    (tmp_path / "data" / "dog" / "notes.txt").write_text("not an image")
    return tmp_path / "data"


def test_class_folders(folders):
    from imclass.data import load_dataset

    ds = load_dataset(folders)
    assert ds.classes == ["cat", "dog"] and not ds.multi_label
    assert len(ds) == 7  # nested images count for their top-level class; .txt is not an image
    assert ds.class_counts() == {"cat": 3, "dog": 4}
    assert set(ds.table["split"]) == {""}
    t = ds.table
    assert t["sha256"].str.len().eq(64).all() and (t["width"] == 64).all() and t["error"].isna().all()
    assert ds.targets().tolist() == [0, 0, 0, 1, 1, 1, 1]
    # the same data, imported twice, has the same fingerprint; a relabelled copy does not
    assert load_dataset(folders).fingerprint() == ds.fingerprint()
    relabelled = ds.table.copy()
    relabelled.at[0, "labels"] = ["dog"]
    assert ds.with_table(relabelled).fingerprint() != ds.fingerprint()


def test_split_folders_and_aliases(tmp_path):
    from imclass.data import load_dataset

    for split in ("train", "valid", "test"):
        for cls in ("a", "b"):
            make_image(tmp_path / split / cls / "x.png")
    ds = load_dataset(tmp_path)
    assert ds.splits == ["train", "val", "test"]
    assert len(ds.select("val")) == 2 and len(ds.select(["train", "test"])) == 4
    assert ds.select("val").class_counts() == {"a": 1, "b": 1}


def _csv_images(tmp_path, n=4):
    for i in range(n):
        make_image(tmp_path / "images" / f"{i}.jpg", color=(i * 50, 20, 20))


def test_csv_single_and_multi_label_forms_import_identically(tmp_path):
    from imclass.data import load_dataset

    _csv_images(tmp_path)
    (tmp_path / "hot.csv").write_text("filename,split,sea,sky,sun\n0.jpg,train,1,0,0\n1.jpg,train,1,1,0\n"
                                      "2.jpg,val,0,0,1\n3.jpg,test,0,0,0\n")
    (tmp_path / "list.csv").write_text("filename,split,labels\n0.jpg,train,sea\n1.jpg,train,sky sea\n"
                                       "2.jpg,val,sun\n3.jpg,test,\n")
    (tmp_path / "semi.tsv").write_text("image\tlabel\tsplit\nimages/0.jpg\tsea\ttrain\nimages/1.jpg\tsea;sky\ttrain\n"
                                       "images/2.jpg\tsun\tval\nimages/3.jpg\t\ttest\n")
    hot, lst = load_dataset(tmp_path / "hot.csv"), load_dataset(tmp_path / "list.csv")  # files found in images/
    semi = load_dataset(tmp_path / "semi.tsv")
    for ds in (hot, lst, semi):
        assert ds.multi_label
        assert ds.table["labels"].tolist() == [["sea"], ["sea", "sky"], ["sun"], []]
        assert ds.table["split"].tolist() == ["train", "train", "val", "test"]
    assert hot.fingerprint() == lst.fingerprint() == semi.fingerprint()
    assert hot.targets().tolist() == [[1, 0, 0], [1, 1, 0], [0, 0, 1], [0, 0, 0]]


def test_csv_paths_relative_to_images_dir_and_round_trip(tmp_path):
    from imclass.data import load_dataset

    _csv_images(tmp_path)
    (tmp_path / "meta").mkdir()
    csv = tmp_path / "meta" / "labels.csv"
    csv.write_text("file,class\n0.jpg,golden retriever\n1.jpg,tabby cat\n2.jpg,tabby cat\n3.jpg,golden retriever\n")
    ds = load_dataset(csv, images_dir=tmp_path / "images")
    assert not ds.multi_label and ds.classes == ["golden retriever", "tabby cat"]  # spaces kept in single-label
    out = ds.to_csv(tmp_path / "copy" / "dataset.csv")
    again = load_dataset(out)
    assert again.fingerprint() == ds.fingerprint() and again.paths == ds.paths


@pytest.mark.parametrize("content, message", [
    ("name,label\n0.jpg,a\n", "no file column"),
    ("filename,whatever\n0.jpg,a\n", "no label column"),
    ("filename,label\n0.jpg,a\nmissing.jpg,b\n", "labels.csv:3: file not found: missing.jpg"),
    ("filename,label\n0.jpg,a\n1.jpg,\n", "labels.csv:3: empty label"),
    ("filename,label,split\n0.jpg,a,train\n1.jpg,b,holdout\n", "labels.csv:3: unknown split 'holdout'"),
    ("filename,label\n0.jpg,a\n0.jpg,b\n", "listed twice"),
    ("filename,a,b\n0.jpg,1,0\n1.jpg,2,0\n", "columns ['a'] are neither"),
])
def test_malformed_csv_names_the_row(tmp_path, content, message):
    from imclass.data import DatasetError, load_dataset

    _csv_images(tmp_path)
    (tmp_path / "images" / "labels.csv").write_text(content)
    with pytest.raises(DatasetError, match=message.replace("(", r"\(").replace("[", r"\[")):
        load_dataset(tmp_path / "images" / "labels.csv")


def test_skip_bad_rows_reports_them(tmp_path):
    from imclass.data import load_dataset

    _csv_images(tmp_path)
    (tmp_path / "images" / "labels.csv").write_text("filename,label\n0.jpg,a\nnope.jpg,b\n1.jpg,\n2.jpg,b\n")
    ds = load_dataset(tmp_path / "images" / "labels.csv", on_error="skip")
    assert len(ds) == 2 and ds.classes == ["a", "b"]
    assert [p.where for p in ds.problems] == ["labels.csv:3", "labels.csv:4"]
    assert "file not found" in ds.problems[0].reason and "empty label" in ds.problems[1].reason


def test_unreadable_files_are_rows_with_errors(folders):
    from imclass.data import load_dataset

    (folders / "cat" / "broken.jpg").write_bytes(b"\xff\xd8 definitely not a jpeg")
    ds = load_dataset(folders)
    row = ds.table[ds.table["path"].str.endswith("broken.jpg")].iloc[0]
    assert row["error"] == "not an image" and len(row["sha256"]) == 64
    assert len(ds.readable()) == len(ds) - 1


def test_single_label_data_with_several_labels_needs_the_flag(tmp_path):
    from imclass.data import DatasetError, load_dataset

    _csv_images(tmp_path)
    (tmp_path / "images" / "l.csv").write_text("filename,label\n0.jpg,a\n1.jpg,a;b\n")
    assert load_dataset(tmp_path / "images" / "l.csv").multi_label  # a separator makes it multi-label
    with pytest.raises(DatasetError, match="2 labels in a single-label dataset"):
        load_dataset(tmp_path / "images" / "l.csv", multi_label=False)


@pytest.mark.realdata
def test_natural_scenes_imports_identically_from_both_csvs(datasets):
    from imclass.data import load_dataset

    root = datasets / "natural_scenes_multilabel"
    hot, lst = load_dataset(root / "labels.csv"), load_dataset(root / "labels_list.csv")
    assert len(hot) == len(lst) == 1500
    assert hot.classes == lst.classes == ["desert", "mountain", "sea", "sunset", "trees"]
    assert hot.fingerprint() == lst.fingerprint()
    assert np.array_equal(hot.targets(), lst.targets())
    assert hot.targets().sum(axis=1).min() >= 1 and hot.targets().sum(axis=1).max() <= 3


def test_all_folder_means_unsplit(tmp_path):
    from imclass.data import load_dataset

    for cls in ("a", "b"):
        make_image(tmp_path / "set" / "all" / cls / "x.png")
    ds = load_dataset(tmp_path / "set")
    assert ds.classes == ["a", "b"] and ds.splits == [""]
    for cls in ("all", "some"):  # beside other class folders, "all" is just a class
        make_image(tmp_path / "classes" / cls / "y.png")
    assert load_dataset(tmp_path / "classes").classes == ["all", "some"]
