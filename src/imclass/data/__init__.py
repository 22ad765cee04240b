"""Datasets: import (folders, CSV), audit, clean, split and resize. Everything consumes one :class:`Dataset`."""

from .dataset import SPLITS, Dataset, DatasetError, Problem
from .importers import inspect_file, load_dataset

__all__ = ["SPLITS", "Dataset", "DatasetError", "Problem", "inspect_file", "load_dataset"]
