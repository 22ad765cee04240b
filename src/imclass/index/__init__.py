"""Find similar images: an embedding index over a library (``Index``), "more like this", near-duplicates at
library scale and a 2-D embedding map. See :mod:`imclass.index.core` and ``docs/architecture.md``."""

from .build import BuildResult
from .core import Index
from .duplicates import DuplicateReport
from .mapping import MapResult
from .pair import PairResult
from .results import Match, Neighbour
from .store import IndexStoreError

__all__ = ["BuildResult", "DuplicateReport", "Index", "IndexStoreError", "MapResult", "Match", "Neighbour",
           "PairResult"]
