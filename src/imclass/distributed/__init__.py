"""Scale-out on existing engines: Ray Data for labelling and embedding, PyTorch DDP for fine-tuning.

>>> from imclass import distributed
>>> distributed.predict(["/nfs/photos"], output="labels.parquet", address="auto")   # a Ray cluster
>>> distributed.predict(ray.data.read_binary_files("s3://bucket/img/", include_paths=True), output="x.parquet")
>>> distributed.embed(ds.table["path"], ds.table["sha256"])   # into the embedding cache: probe, audit, index
>>> imclass.train("photos/", out="runs/ft", mode="finetune", devices=2)   # DDP (gloo on CPU, NCCL on GPUs)

What changes for the user is the flag (``--ray``, ``--devices``): the output, its schema, ``--resume`` and
error rows are those of one process. The Ray part needs ``pip install 'imclass[ray]'``; DDP needs only torch.
See docs/scale-out.md.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .cluster import Cluster, Plan, connect
    from .ddp import launch, train
    from .embeddings import EmbedSummary, embed
    from .label import DistributedSummary, predict, predictions

_LAZY = {
    "Cluster": ".cluster", "Plan": ".cluster", "connect": ".cluster",
    "EmbedSummary": ".embeddings", "embed": ".embeddings",
    "DistributedSummary": ".label", "predict": ".label", "predictions": ".label",
    "launch": ".ddp", "train": ".ddp",
}
__all__ = ["Cluster", "DistributedSummary", "EmbedSummary", "Plan", "connect", "embed", "launch", "predict",
           "predictions", "train"]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name], __package__), name)
    raise AttributeError(f"module 'imclass.distributed' has no attribute {name!r}")
