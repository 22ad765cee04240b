"""Datasets: import (folders, CSV), audit, clean, split and resize. Everything consumes one :class:`Dataset`."""

from .audit import AuditResult, audit
from .clean import CleanResult, clean
from .dataset import SPLITS, Dataset, DatasetError, Problem
from .importers import inspect_file, load_dataset
from .report import write_report
from .resize import ResizeResult, resize
from .split import SplitResult, split

__all__ = [
    "SPLITS", "AuditResult", "CleanResult", "Dataset", "DatasetError", "Problem", "ResizeResult", "SplitResult",
    "audit", "clean", "inspect_file", "load_dataset", "resize", "split", "write_report",
]
