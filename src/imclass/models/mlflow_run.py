"""Bundles logged to MLflow by ``imclass train --track mlflow``, as models: ``mlflow:<run id>``.

The tracking store is ``$MLFLOW_TRACKING_URI``, else ``./mlruns`` (a local file store: MLflow 3 keeps it in
maintenance mode behind ``MLFLOW_ALLOW_FILE_STORE``, which imclass sets for file stores unless the environment
says otherwise). A run's ``bundle`` artifact is downloaded once into the cache (``<cache>/mlflow/``) and loaded
like any bundle folder. Needs the extra ``imclass[track]`` (``mlflow-skinny``).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path
from urllib.parse import urlparse

from ..errors import ModelNotFoundError
from ..paths import cache_dir

PREFIX = "mlflow:"
DEFAULT_STORE = "mlruns"
BUNDLE_ARTIFACT = "bundle"  # the artifact folder that holds a run's model bundle
EXPERIMENT = "imclass"  # runs go to this experiment unless $MLFLOW_EXPERIMENT_NAME names another


def mlflow_module():
    """The ``mlflow`` package, or an error that says how to install it."""
    try:
        import mlflow
    except ImportError:
        raise ModelNotFoundError("MLflow is not installed: pip install 'imclass[track]' (mlflow-skinny)") from None
    return mlflow


def is_file_store(uri: str) -> bool:
    return urlparse(uri).scheme in ("", "file") or (len(uri) > 1 and uri[1] == ":")  # a path (Windows drive too)


def tracking_uri(uri: str | None = None) -> str:
    """``uri``, else ``$MLFLOW_TRACKING_URI``, else ``./mlruns`` (as an absolute ``file:`` URI)."""
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or Path(DEFAULT_STORE).resolve().as_uri()
    if is_file_store(uri):
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # imclass prints its own progress
    return uri


def client(uri: str | None = None):
    """An ``MlflowClient`` for :func:`tracking_uri` ``(uri)``."""
    mlflow = mlflow_module()
    return mlflow.tracking.MlflowClient(tracking_uri=tracking_uri(uri))


def download_bundle(run_id: str, uri: str | None = None) -> Path:
    """The ``bundle`` artifact of ``run_id`` as a local folder (downloaded once; runs' artifacts do not change)."""
    run_id = run_id.strip()
    if not run_id:
        raise ModelNotFoundError("mlflow: needs a run id, e.g. mlflow:3f2a9c... (printed by imclass train --track "
                                 "mlflow)")
    uri = tracking_uri(uri)
    store = hashlib.sha256(uri.encode()).hexdigest()[:10]
    target = cache_dir() / "mlflow" / f"{store}-{run_id}"
    if (target / "imclass.json").is_file():
        return target
    mlflow = mlflow_module()
    c = client(uri)
    try:
        c.get_run(run_id)
    except mlflow.exceptions.MlflowException:
        raise ModelNotFoundError(f"mlflow:{run_id}: no such run in {uri} (set MLFLOW_TRACKING_URI to the store that "
                                 "has it)") from None
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{run_id}-", dir=target.parent))
    try:
        try:
            got = Path(c.download_artifacts(run_id, BUNDLE_ARTIFACT, str(tmp)))
        except (mlflow.exceptions.MlflowException, OSError):
            got = tmp / BUNDLE_ARTIFACT
        if not (got / "imclass.json").is_file():
            raise ModelNotFoundError(f"mlflow:{run_id} has no '{BUNDLE_ARTIFACT}' artifact with a model bundle "
                                     "(runs logged by imclass train --track mlflow have one)")
        try:
            got.rename(target)
        except OSError:  # a concurrent download won
            if not (target / "imclass.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def load_run(name: str):
    """``(model, spec)`` of ``mlflow:<run id>``."""
    from .bundle import load_bundle

    run_id = name[len(PREFIX):]
    model, spec = load_bundle(download_bundle(run_id))
    spec.source = name
    return model, spec
