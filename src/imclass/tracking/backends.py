"""Where tracked runs go: an MLflow run or a TensorBoard event folder, behind one small interface."""

from __future__ import annotations

import json
import tempfile
import time
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

from ..errors import ModelNotFoundError, ParameterError

MAX_PARAM = 500  # characters of one parameter value (MLflow allows more; longer ones are cut)


class Tracker(ABC):
    """One tracked run. ``where`` says where it went (``{"kind", "run_id", "uri"}`` or ``{"kind", "logdir"}``)."""

    where: dict[str, str]

    @abstractmethod
    def params(self, params: dict[str, Any]) -> None:
        """The run's parameters (values longer than MAX_PARAM characters are cut)."""

    @abstractmethod
    def metrics(self, values: dict[str, float], step: int = 0) -> None:
        """Numbers at ``step`` (an epoch)."""

    @abstractmethod
    def image(self, name: str, png: bytes) -> None:
        """A PNG figure (``name`` without extension)."""

    @abstractmethod
    def data(self, name: str, value: Any) -> None:
        """A JSON document (``name`` without extension)."""

    @abstractmethod
    def folder(self, path: Path, name: str, skip: tuple[str, ...] = ()) -> None:
        """The files of ``path`` (not those under the top-level names in ``skip``) as ``name``."""

    @abstractmethod
    def close(self, status: str = "FINISHED") -> None:
        """``FINISHED``, ``FAILED`` or ``KILLED``."""


class MlflowTracker(Tracker):
    """A run in an MLflow tracking store (``MlflowClient``: no global active run is touched)."""

    def __init__(self, uri: str | None, run_name: str | None, tags: dict[str, str]):
        import os

        from ..models import mlflow_run

        try:
            self.client = mlflow_run.client(uri)
        except ModelNotFoundError as e:
            raise ParameterError("track", f"mlflow: {e}") from None
        from mlflow.entities import Metric, Param
        from mlflow.exceptions import MlflowException

        self._Metric, self._Param = Metric, Param
        self.uri = mlflow_run.tracking_uri(uri)
        name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or mlflow_run.EXPERIMENT
        try:
            exp = self.client.get_experiment_by_name(name)
            exp_id = exp.experiment_id if exp is not None else self.client.create_experiment(name)
            run = self.client.create_run(exp_id, run_name=run_name, tags={"mlflow.source.name": "imclass train",
                                                                          **tags})
        except MlflowException as e:
            raise ParameterError("track", f"mlflow: cannot start a run in {self.uri}: "
                                          f"{str(e).splitlines()[0][:200]}") from None
        self.run_id = run.info.run_id
        self.where = {"kind": "mlflow", "run_id": self.run_id, "uri": self.uri}

    def params(self, params: dict[str, Any]) -> None:
        items = [self._Param(k, str(v)[:MAX_PARAM]) for k, v in params.items()]
        for i in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(self.run_id, params=items[i:i + 100])

    def metrics(self, values: dict[str, float], step: int = 0) -> None:
        now = int(time.time() * 1000)
        items = [self._Metric(k, float(v), now, int(step)) for k, v in values.items()]
        for i in range(0, len(items), 1000):
            self.client.log_batch(self.run_id, metrics=items[i:i + 1000])

    def _file(self, filename: str, content: bytes) -> None:
        with tempfile.TemporaryDirectory(prefix="imclass-track-") as tmp:
            path = Path(tmp) / filename
            path.write_bytes(content)
            self.client.log_artifact(self.run_id, str(path))

    def image(self, name: str, png: bytes) -> None:
        self._file(f"{name}.png", png)

    def data(self, name: str, value: Any) -> None:
        self._file(f"{name}.json", json.dumps(value, indent=2, default=str).encode())

    def folder(self, path: Path, name: str, skip: tuple[str, ...] = ()) -> None:
        for item in sorted(Path(path).iterdir()):
            if item.name in skip:
                continue
            if item.is_dir():
                self.client.log_artifacts(self.run_id, str(item), f"{name}/{item.name}")
            else:
                self.client.log_artifact(self.run_id, str(item), name)

    def close(self, status: str = "FINISHED") -> None:
        self.client.set_terminated(self.run_id, status)


class TensorBoardTracker(Tracker):
    """An event folder (``tensorboardX``): scalars, the confusion matrix as an image, params as text."""

    def __init__(self, logdir: Path):
        try:
            from tensorboardX import SummaryWriter
        except ImportError:
            raise ParameterError("track", "tensorboard needs the extra: pip install 'imclass[track]' (tensorboardX)"
                                 ) from None
        self.writer = SummaryWriter(str(logdir))
        self.where = {"kind": "tensorboard", "logdir": str(logdir)}

    def params(self, params: dict[str, Any]) -> None:
        rows = "\n".join(f"| {k} | {str(v)[:MAX_PARAM]} |" for k, v in params.items())
        self.writer.add_text("params", "| parameter | value |\n|---|---|\n" + rows, 0)

    def metrics(self, values: dict[str, float], step: int = 0) -> None:
        for k, v in values.items():
            self.writer.add_scalar(k, float(v), int(step))
        self.writer.flush()

    def image(self, name: str, png: bytes) -> None:
        import io

        import numpy as np
        from PIL import Image

        arr = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
        self.writer.add_image(name, arr, 0, dataformats="HWC")

    def data(self, name: str, value: Any) -> None:
        self.writer.add_text(name, "```\n" + json.dumps(value, indent=1, default=str) + "\n```", 0)

    def folder(self, path: Path, name: str, skip: tuple[str, ...] = ()) -> None:
        self.writer.add_text(name, f"`{Path(path).resolve()}`", 0)  # the bundle is the run folder itself

    def close(self, status: str = "FINISHED") -> None:
        if status != "FINISHED":
            self.writer.add_text("status", status, 0)
        self.writer.close()
