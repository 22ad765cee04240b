"""The layers (docs/architecture.md) are a contract: faces -> API -> workflows -> core, no cycles.

``.importlinter`` lists every top-level module of the package in a layer; ``lint-imports`` checks that
imports only point down and that sibling modules import each other without cycles.
"""

from __future__ import annotations

import configparser
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("importlinter")

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "imclass"


def _layer_modules() -> list[str]:
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / ".importlinter")
    layers = cfg["importlinter:contract:layers"]["layers"]
    return [m.strip() for line in layers.strip().splitlines() for m in re.split(r"[|:]", line) if m.strip()]


def test_every_module_is_in_a_layer():
    top = {p.stem if p.is_file() else p.name for p in PACKAGE.iterdir()
           if (p.suffix == ".py" or (p / "__init__.py").is_file()) and not p.name.startswith("__")}
    listed = _layer_modules()
    assert len(listed) == len(set(listed))
    assert top == set(listed), f"not in a layer: {top - set(listed)}; listed but missing: {set(listed) - top}"
    assert not [p.name for p in PACKAGE.glob("cli_*.py")]  # the CLI lives in cli/


def test_contracts_kept(tmp_path):
    # the use case, not importlinter.cli.lint_imports: that one reconfigures (and disables) every logger;
    # importing importlinter.cli configures the use case's settings
    import importlinter.cli  # noqa: F401
    from importlinter.application.use_cases import lint_imports

    assert lint_imports(config_filename=str(ROOT / ".importlinter"), cache_dir=str(tmp_path), no_logo=True)


@pytest.mark.slow
@pytest.mark.parametrize("module, statement", [
    ("images.py", "from .cli import app  # planted: core imports a face"),
    ("data/split.py", "from ..training import train  # planted: a workflow imports a higher workflow"),
    ("engine/pipeline.py", "from ..classifier import Classifier  # planted: engine imports up"),
])
def test_an_upward_import_breaks_the_contract(tmp_path, module, statement):
    copy = tmp_path / "src" / "imclass"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    target = copy / module
    target.write_text(target.read_text(encoding="utf-8") + f"\n{statement}\n", encoding="utf-8")
    shutil.copy(ROOT / ".importlinter", tmp_path / ".importlinter")
    lint = Path(sys.executable).with_name("lint-imports")
    r = subprocess.run([str(lint), "--no-cache"], cwd=tmp_path, capture_output=True, text=True,
                       env={"PYTHONPATH": str(tmp_path / "src"), "PATH": "/usr/bin:/bin"}, timeout=300)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "BROKEN" in r.stdout
    r = subprocess.run([str(lint), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout  # the real tree keeps it


def test_the_export_function_survives_importing_the_export_package():
    """``imclass.export`` stays the API function after ``imclass.export.*`` modules are imported (a studio task
    once failed with "'module' object is not callable")."""
    import inspect

    import imclass
    import imclass.export.bundle
    from imclass.export import quantize_int8  # noqa: F401

    assert inspect.isfunction(imclass.export), imclass.export


@pytest.mark.slow
def test_the_wheel_carries_the_studio_pages(tmp_path):
    """A non-editable install has the studio's templates and static files (package data, not only .py files).
    Built from a copy of the tracked files: an in-tree build would also find them through the editable
    install's leftovers."""
    import zipfile

    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    src = tmp_path / "src-copy"
    for rel in tracked:
        if rel.startswith(("src/", "pyproject.toml", "README.md", "LICENSE")) and (ROOT / rel).is_file():
            (src / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, src / rel)
    res = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                          str(tmp_path / "wheel"), str(src)], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    (wheel,) = (tmp_path / "wheel").glob("imclass-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    data = [p for p in tracked if p.startswith(("src/imclass/studio/templates/", "src/imclass/studio/static/"))]
    missing = [p for p in data if p.removeprefix("src/") not in names]
    assert data and not missing, missing
