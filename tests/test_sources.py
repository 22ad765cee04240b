"""``iter_image_paths``: which files a run sees, in which order, each once, without hanging."""

from __future__ import annotations

import itertools
import os
import random
from pathlib import Path

import pytest

from imclass.engine.sources import count_image_paths, iter_image_paths, validate_sources

LIMIT = 1000  # a walk that loops forever is cut off here instead of hanging the test run


def touch(root: Path, *names: str) -> None:
    for name in names:
        p = root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"x")


def paths(sources, **kw) -> list[str]:
    out = list(itertools.islice(iter_image_paths([os.fspath(s) for s in sources], **kw), LIMIT))
    assert len(out) < LIMIT, "walk did not terminate"
    return out


def rel(root: Path, found: list[str]) -> list[str]:
    return [os.path.relpath(p, root) for p in found]


def test_sorted_depth_first_and_deterministic(tmp_path):
    names = ["b.jpg", "a.png", "C.jpg", "sub/z.jpg", "sub/deeper/y.gif", "sub/m.jpg", "aa/k.jpg", "10.jpg", "9.jpg"]
    random.Random(3).shuffle(names)  # creation order must not matter
    touch(tmp_path, *names)
    expected = [
        "10.jpg", "9.jpg", "C.jpg", "a.png", "b.jpg",  # files of a folder first, sorted by name
        os.path.join("aa", "k.jpg"),  # then its subfolders, in name order, depth-first
        os.path.join("sub", "m.jpg"), os.path.join("sub", "z.jpg"),
        os.path.join("sub", "deeper", "y.gif"),
    ]
    assert rel(tmp_path, paths([tmp_path])) == expected
    assert rel(tmp_path, paths([tmp_path])) == expected  # same again
    assert count_image_paths([tmp_path]) == len(expected)


def test_paths_are_joined_onto_the_given_source(tmp_path):
    touch(tmp_path, "sub/a.jpg")
    assert paths([tmp_path / "sub"]) == [os.path.join(str(tmp_path / "sub"), "a.jpg")]


def test_recursive_false_stays_in_the_folder(tmp_path):
    touch(tmp_path, "a.jpg", "sub/b.jpg")
    assert rel(tmp_path, paths([tmp_path], recursive=False)) == ["a.jpg"]


def test_extensions_case_insensitive(tmp_path):
    touch(tmp_path, "a.JPG", "b.Png", "c.JpEg", "d.TIFF", "e.webp", "f.HEIC-not", "g.txt", "h.jpg.bak", "noext")
    assert rel(tmp_path, paths([tmp_path])) == ["a.JPG", "b.Png", "c.JpEg", "d.TIFF", "e.webp"]


def test_non_images_skipped_when_walking_but_explicit_files_always_yielded(tmp_path):
    touch(tmp_path, "notes.txt", "photo.jpg", "scan.pdf")
    assert rel(tmp_path, paths([tmp_path])) == ["photo.jpg"]
    explicit = [str(tmp_path / "notes.txt"), str(tmp_path / "scan.pdf"), str(tmp_path / "missing.jpg")]
    assert paths(explicit) == explicit  # as given, in the given order, even a missing one


def test_duplicates_yielded_once(tmp_path):
    touch(tmp_path, "a.jpg", "b.jpg", "sub/c.jpg")
    a = str(tmp_path / "a.jpg")
    # folder then the same file explicitly
    assert rel(tmp_path, paths([tmp_path, a])) == ["a.jpg", "b.jpg", os.path.join("sub", "c.jpg")]
    # explicit file first, then the folder that holds it
    assert rel(tmp_path, paths([a, tmp_path])) == ["a.jpg", "b.jpg", os.path.join("sub", "c.jpg")]
    # the same folder twice, spelled differently, and a subfolder of it
    found = paths([tmp_path, str(tmp_path) + os.sep, tmp_path / "sub" / ".." / "sub", tmp_path / "sub"])
    assert len(found) == 3 and len({os.path.abspath(p) for p in found}) == 3


def test_directory_with_image_extension_is_walked(tmp_path):
    touch(tmp_path, "x.jpg/inside.png", "y.jpg")
    found = rel(tmp_path, paths([tmp_path]))
    assert found == ["y.jpg", os.path.join("x.jpg", "inside.png")]
    assert "x.jpg" not in found
    assert rel(tmp_path, paths([tmp_path / "x.jpg"])) == [os.path.join("x.jpg", "inside.png")]


def test_symlinked_directory_loop_terminates(tmp_path):
    touch(tmp_path, "a.jpg", "sub/b.jpg")
    (tmp_path / "sub" / "back").symlink_to(tmp_path, target_is_directory=True)  # sub/back -> root
    (tmp_path / "sub" / "self").symlink_to(tmp_path / "sub", target_is_directory=True)
    found = paths([tmp_path])
    assert rel(tmp_path, found) == ["a.jpg", os.path.join("sub", "b.jpg")]


def test_symlinked_directory_is_followed_once(tmp_path):
    touch(tmp_path, "real/a.jpg")
    (tmp_path / "alias").symlink_to(tmp_path / "real", target_is_directory=True)
    found = paths([tmp_path])
    assert len(found) == 1 and os.path.realpath(found[0]) == str((tmp_path / "real" / "a.jpg").resolve())
    touch(tmp_path / "elsewhere", "b.jpg")
    (tmp_path / "real" / "link").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    assert rel(tmp_path / "real", paths([tmp_path / "real"])) == ["a.jpg", os.path.join("link", "b.jpg")]


def test_hidden_folders_and_resource_forks_skipped(tmp_path):
    touch(tmp_path, ".thumbnails/t.jpg", ".git/x.png", "._a.jpg", "a.jpg", "sub/.cache/c.jpg", "sub/d.jpg")
    assert rel(tmp_path, paths([tmp_path])) == ["a.jpg", os.path.join("sub", "d.jpg")]
    # a hidden folder named explicitly is the user's choice
    assert rel(tmp_path, paths([tmp_path / ".thumbnails"])) == [os.path.join(".thumbnails", "t.jpg")]


def test_broken_symlink_with_image_extension_is_yielded(tmp_path):
    touch(tmp_path, "a.jpg")
    (tmp_path / "gone.jpg").symlink_to(tmp_path / "deleted.jpg")
    (tmp_path / "gone.txt").symlink_to(tmp_path / "deleted.txt")
    assert rel(tmp_path, paths([tmp_path])) == ["a.jpg", "gone.jpg"]  # becomes an error row later
    assert validate_sources([tmp_path / "gone.jpg", tmp_path / "never.jpg"]) == [str(tmp_path / "never.jpg")]


@pytest.mark.skipif(getattr(os, "geteuid", lambda: -1)() == 0, reason="root can list a chmod-000 folder")
def test_unreadable_folder_is_skipped(tmp_path):
    touch(tmp_path, "a.jpg", "locked/b.jpg")
    (tmp_path / "locked").chmod(0)
    try:
        assert rel(tmp_path, paths([tmp_path])) == ["a.jpg"]
    finally:
        (tmp_path / "locked").chmod(0o755)

