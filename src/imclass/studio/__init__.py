"""The imclass studio: a local web app to create projects, import images, label them with the model's help,
train, review and ship (``imclass studio``; extra ``[studio]``). A face over :mod:`imclass.api`.

>>> from imclass.studio import StudioSettings, create_app
>>> app = create_app(StudioSettings(data_dir="studio-data"))    # a FastAPI app
"""

from __future__ import annotations

from typing import TYPE_CHECKING

__all__ = ["StudioSettings", "create_app", "run_studio"]

_LAZY = {"create_app": ".app", "StudioSettings": ".settings", "run_studio": ".server"}

if TYPE_CHECKING:
    from .app import create_app
    from .server import run_studio
    from .settings import StudioSettings


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module 'imclass.studio' has no attribute {name!r}")
