"""Reading a library as bytes on the cluster: ``read_binary_files(paths, include_paths=True)``, one row per file.

Ray's own binary reader fails the whole run when one file cannot be opened (and drops missing paths when told
to ignore them). :class:`LibraryFiles` is that reader with one change: a file that cannot be opened or read is a
row with no bytes and the reason the imclass loader gives for that path (``permission denied``, ``broken
symlink``, ...), so it becomes the same error row a single process writes. Paths that vanish before the read
is planned are left out by Ray; the driver notices and asks the loader why (see :mod:`.predict`).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence

from ..images import open_error

#: The columns of a library's rows (``read_error``: None, or why the file could not be read).
COLUMNS = ("path", "bytes", "read_error")


def _datasource_class():
    import pyarrow as pa
    from pyarrow.fs import LocalFileSystem
    from ray.data.datasource import FileBasedDatasource

    class LibraryFiles(FileBasedDatasource):
        """Binary files as ``path``, ``bytes``, ``read_error`` rows; unreadable files are rows, not failures."""

        def __init__(self, paths: Sequence[str]):
            super().__init__(list(paths), filesystem=LocalFileSystem(), include_paths=True,
                             ignore_missing_paths=True)

        def _open_input_source(self, filesystem, path: str, **open_args):
            try:
                return super()._open_input_source(filesystem, path, **open_args)
            except OSError as e:
                return _Unopened(open_error(path) or f"cannot open file: {e.strerror or e}")

        def _read_stream(self, f, path: str) -> Iterator:
            data, reason = None, getattr(f, "reason", None)
            if reason is None:
                try:
                    data = f.readall()
                except OSError as e:
                    reason = open_error(path) or f"cannot read file: {e.strerror or e}"
            yield pa.table({"bytes": pa.array([data], pa.binary()), "read_error": pa.array([reason], pa.string())})

        def _rows_per_file(self) -> int:
            return 1

    return LibraryFiles


class _Unopened:
    """Stands for a file that could not be opened (the reader's context manager protocol, no bytes)."""

    def __init__(self, reason: str):
        self.reason = reason

    def __enter__(self) -> _Unopened:
        return self

    def __exit__(self, *exc) -> None:
        return None

    def close(self) -> None:
        return None


def read_library(paths: Sequence[str], *, blocks: int | None = None):
    """A Ray Dataset of ``path``, ``bytes``, ``read_error`` for the files ``paths`` (absolute: the cluster's
    workers read them, so they must be on storage every node sees at the same path), read by light tasks."""
    import ray.data

    from .cluster import READ_CPUS

    if not paths:
        raise ValueError("no paths to read")
    return ray.data.read_datasource(_datasource_class()(paths), override_num_blocks=blocks, num_cpus=READ_CPUS)


def absolute(path: str) -> str:
    """The name a path is read by on the cluster (absolute, so the workers' own folder does not matter)."""
    return os.path.abspath(path)
