"""Shared fixtures: the CLI in a subprocess, the real datasets (skipped when absent), synthetic images."""

from __future__ import annotations

import inspect
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
DATASETS = Path(os.environ.get("IMCLASS_DATASETS", ROOT.parent / "shared" / "datasets"))
SAMPLES = ROOT / "samples"


def run_cli(*args: str, cwd: str | os.PathLike | None = None, timeout: float = 300,
            env_extra: dict[str, str] | None = None, **kwargs) -> subprocess.CompletedProcess:
    """Run ``imclass ARGS`` as a user would, in a fresh Python process."""
    if env_extra:
        kwargs["env"] = {**os.environ, **env_extra}
    return subprocess.run([sys.executable, "-m", "imclass", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, **kwargs)


@pytest.fixture(scope="session", autouse=True)
def _private_cache(tmp_path_factory):
    """Keep ONNX exports made by tests out of the user's cache (shared by all tests of a session)."""
    if os.environ.get("IMCLASS_TEST_KEEP_CACHE") != "1":
        os.environ["IMCLASS_CACHE_DIR"] = str(tmp_path_factory.mktemp("imclass-cache"))
    yield


@pytest.fixture(scope="session")
def datasets() -> Path:
    if not DATASETS.is_dir():
        pytest.skip(f"real datasets not found at {DATASETS} (set IMCLASS_DATASETS)")
    return DATASETS


@pytest.fixture(scope="session")
def default_clf():
    import imclass

    return imclass.load("default", device="cpu")


def make_image(path: Path, size=(64, 48), color=(200, 30, 30), mode="RGB", fmt=None, **save) -> Path:
    """Write a small synthetic image: a coloured field with a bright square (non-trivial content)."""
    arr = np.zeros((size[1], size[0], 3), dtype=np.uint8)
    arr[:] = color
    arr[size[1] // 4: size[1] // 2, size[0] // 4: size[0] // 2] = 255
    img = Image.fromarray(arr)
    if mode != "RGB":
        img = img.convert(mode)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, format=fmt, **save)
    return path


_SUBPROCESS = re.compile(r"\brun_cli\(|\bsubprocess\.(run|Popen|check_output|call)\(")


def pytest_collection_modifyitems(config, items):
    """Every test that starts a process is marked ``slow`` (``make test-fast`` leaves them out)."""
    unmarked = []
    for item in items:
        fn = getattr(item, "function", None)
        if fn is None or item.get_closest_marker("slow"):
            continue
        try:
            source = inspect.getsource(fn)
        except (OSError, TypeError):
            continue
        if _SUBPROCESS.search(source):
            unmarked.append(item.nodeid)
    if unmarked:
        raise pytest.UsageError("tests that start a process must be marked slow: " + ", ".join(unmarked))
