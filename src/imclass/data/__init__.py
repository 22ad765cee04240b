"""Datasets: import (folders, CSV, Label Studio, Hugging Face), download, audit, clean, split, resize and export.
Everything consumes one :class:`Dataset`."""

from .audit import AuditResult, audit
from .clean import CleanResult, clean
from .dataset import SPLITS, Dataset, DatasetError, Problem
from .download import DownloadResult, download
from .formats import FORMATS, export_dataset
from .importers import inspect_file, load_dataset
from .report import write_report
from .resize import ResizeResult, resize
from .split import SplitResult, split

__all__ = [
    "FORMATS", "SPLITS", "AuditResult", "CleanResult", "Dataset", "DatasetError", "DownloadResult", "Problem",
    "ResizeResult", "SplitResult", "audit", "clean", "download", "export_dataset", "inspect_file", "load_dataset",
    "resize", "split", "write_report",
]
