"""--sort-into: copies or links into label folders, never touches originals, idempotent."""

from __future__ import annotations

import os

from conftest import make_image
from imclass.labelling.sorting import Sorter, folder_name
from imclass.prediction import Prediction


def test_folder_name_is_safe():
    assert folder_name("a/b\\c:d") == "a_b_c_d"
    assert not folder_name("../..").startswith(".")
    assert folder_name("") == "_"


def test_copy_resolves_clashes_and_is_idempotent(tmp_path):
    a = make_image(tmp_path / "src1" / "img.jpg", color=(10, 200, 10))
    b = make_image(tmp_path / "src2" / "img.jpg", color=(200, 10, 10))
    before = a.read_bytes(), b.read_bytes()
    s = Sorter(tmp_path / "sorted", "copy")
    pa, pb = Prediction(str(a), "cat", 0.9), Prediction(str(b), "cat", 0.8)
    da, db = s.place(pa)[0], s.place(pb)[0]
    assert da.name == "img.jpg" and db.name == "img_1.jpg"
    assert da.read_bytes() == before[0] and db.read_bytes() == before[1]
    assert s.place(pa) == [da] and s.place(pb) == [db]  # a resumed run adds nothing
    assert sorted(os.listdir(tmp_path / "sorted" / "cat")) == ["img.jpg", "img_1.jpg"]
    assert (a.read_bytes(), b.read_bytes()) == before and a.exists() and b.exists()


def test_link_and_multilabel_and_errors(tmp_path):
    a = make_image(tmp_path / "src" / "x.png", fmt="PNG")
    s = Sorter(tmp_path / "out", "link")
    placed = s.place(Prediction(str(a), "sea;sunset", 0.7, labels=["sea", "sunset"]))
    assert [p.parent.name for p in placed] == ["sea", "sunset"]
    assert all(p.is_symlink() and os.path.samefile(p, a) for p in placed)
    assert s.place(Prediction(str(a), error="bad")) == []
