"""``imclass data audit|clean|split|resize`` driven as a user would (subprocess), plus the command group itself."""

from __future__ import annotations

import json
import os

import pytest
import typer

from conftest import run_cli
from imclass.cli.data import register
from imclass.data import load_dataset
from imclass.errors import ImclassError
from synthetic_datasets import make_clean, plant_faults


def _app() -> typer.Typer:
    app = typer.Typer(add_completion=False)

    @app.callback()
    def root() -> None:
        """imclass"""

    register(app)
    return app


def _invoke(*args: str):
    """In-process call; returns the command's exit code (ImclassError -> 1, as the real entry point does)."""
    try:
        return _app()(args=list(args), standalone_mode=False)
    except ImclassError:
        return 1


def test_register_adds_the_data_group_with_all_commands():
    group = typer.main.get_command(_app())
    data = group.commands["data"]
    assert set(data.commands) == {"audit", "clean", "split", "resize", "download", "export"}
    for name, cmd in data.commands.items():
        assert cmd.epilog and cmd.epilog.startswith(f"Example: imclass data {name} "), name


def test_in_process_exit_codes(tmp_path):
    make_clean(tmp_path / "ok", per_class=3)
    assert _invoke("data", "audit", str(tmp_path / "ok"), "--no-embeddings", "-q") == 0
    plant_faults(tmp_path / "ok")
    assert _invoke("data", "audit", str(tmp_path / "ok"), "--no-embeddings", "-q") == 2
    assert _invoke("data", "audit", str(tmp_path / "missing"), "--no-embeddings", "-q") == 1


# ---- end to end, in a fresh process ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def faulty(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli") / "data"
    make_clean(root, per_class=6)
    plant_faults(root)
    return root


@pytest.mark.slow
def test_help_has_examples():
    for cmd in ("audit", "clean", "split", "resize"):
        r = run_cli("data", cmd, "--help", env_extra={"COLUMNS": "200"})
        assert r.returncode == 0, r.stderr
        assert f"Example: imclass data {cmd}" in r.stdout


@pytest.mark.slow
def test_audit_reports_files_json_and_html_exit_2(faulty, tmp_path):
    r = run_cli("data", "audit", str(faulty), "--no-embeddings", "--report", str(tmp_path / "rep"),
                "--json", str(tmp_path / "a.json"), env_extra={"COLUMNS": "200"})
    assert r.returncode == 2, r.stderr  # unreadable files are per-file problems
    for text in ("conflicting labels", "leaks", "truncated.jpg", "notes.jpg", "conflict_c.jpg"):
        assert text in r.stdout, text
    d = json.loads((tmp_path / "a.json").read_text())
    assert d["counts"]["conflicts"] == 2 and d["counts"]["corrupt"] == 4 and d["counts"]["non_images"] == 2
    html = (tmp_path / "rep" / "audit.html").read_text()
    assert "data:image/jpeg;base64," in html and "https://" not in html
    assert "Traceback" not in r.stderr


@pytest.mark.slow
def test_audit_clean_set_exit_0_and_strict(tmp_path):
    make_clean(tmp_path / "d", per_class=4)
    r = run_cli("data", "audit", str(tmp_path / "d"), "--no-embeddings", "--json", "-", "-q")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["counts"]["exact_duplicate_groups"] == 0
    (tmp_path / "d" / "train" / "cat" / "dup.jpg").write_bytes(
        next((tmp_path / "d" / "train" / "cat").glob("*.jpg")).read_bytes())
    assert run_cli("data", "audit", str(tmp_path / "d"), "--no-embeddings", "-q").returncode == 0
    assert run_cli("data", "audit", str(tmp_path / "d"), "--no-embeddings", "-q", "--strict").returncode == 2


@pytest.mark.slow
def test_audit_with_default_backbone_embeddings(tmp_path):
    make_clean(tmp_path / "d", per_class=8, splits=("train",))
    r = run_cli("data", "audit", str(tmp_path / "d"), "--json", str(tmp_path / "a.json"), "-q")
    assert r.returncode == 0, r.stderr
    d = json.loads((tmp_path / "a.json").read_text())
    assert d["thresholds"]["backbone"] and d["label_check"]["folds"] >= 2
    assert len(d["outlier_scores"]) == 24 and all(s is not None for s in d["outlier_scores"])


@pytest.mark.slow
def test_clean_split_resize_end_to_end(faulty, tmp_path):
    r = run_cli("data", "clean", str(faulty), "--out", str(tmp_path / "clean"), "--drop",
                "corrupt,non-images,duplicates,conflicts,leaks", "--copy", "-q")
    assert r.returncode == 0, r.stderr
    assert "excluded" in r.stderr.lower()
    kept = load_dataset(tmp_path / "clean" / "manifest.csv")
    assert not any(os.path.islink(p) for p in kept.paths)

    r = run_cli("data", "split", str(tmp_path / "clean" / "manifest.csv"), "--out", str(tmp_path / "split"),
                "--val", "0.25", "--test", "0.25", "--resplit", "--no-embeddings", "--seed", "3", "-q")
    assert r.returncode == 0, r.stderr
    ds = load_dataset(tmp_path / "split" / "dataset.csv")
    assert set(ds.table["split"]) == {"train", "val", "test"} and len(ds) == len(kept)

    r = run_cli("data", "resize", str(faulty), "--out", str(tmp_path / "small"), "--size", "24", "--crop", "16",
                "-q")
    assert r.returncode == 2, r.stderr  # the planted unreadable files are skipped and reported
    assert "truncated.jpg" in r.stderr
    r = run_cli("data", "resize", str(tmp_path / "clean" / "manifest.csv"), "--out", str(tmp_path / "small2"),
                "--size", "24", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["written"] == len(kept)
    assert load_dataset(tmp_path / "small2" / "manifest.csv").fingerprint() != kept.fingerprint()


@pytest.mark.slow
@pytest.mark.parametrize("args, message", [
    (("audit", "/nonexistent/folder", "--no-embeddings"), "no such file"),
    (("clean", "{data}", "--out", "{tmp}/o", "--drop", "typos"), "--drop has unknown choices typos"),
    (("split", "{data}", "--out", "{tmp}/o", "--val", "0.6", "--test", "0.5"), "fractions"),
    (("resize", "{data}", "--out", "{tmp}/o", "--size", "16", "--crop", "32"), "crop"),
    (("clean", "{data}", "--out", "{data}"), "own folder"),
])
def test_usage_errors_exit_1_with_one_line(faulty, tmp_path, args, message):
    r = run_cli("data", *(a.format(data=faulty, tmp=tmp_path) for a in args), "-q")
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert message in r.stderr
    assert "Traceback" not in r.stderr
