"""Prediction outputs, written per batch and flushed, resumable after any interruption.

- ``.csv`` / ``.jsonl``: rows are appended and flushed after every batch. On resume, a torn last
  record (a kill -9 mid-write) is cut off and the paths already present are skipped.
- ``.json`` / ``.parquet``: formats that cannot be appended to are written through a journal
  (``<output>.partial.jsonl``, same resume rules) and converted atomically when the run ends.
- ``.parquet`` as a folder of parts (``parts=True``, or an existing folder): ``part-00000.parquet``, ...,
  each written atomically once complete; pyarrow reads the folder as one dataset. Large distributed runs
  write this way (parts named by their input partition), and any run can resume such a folder.
"""

from __future__ import annotations

import csv
import io
import json
import os
from abc import ABC, abstractmethod
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..errors import OutputError
from ..fileio import atomic_path
from ..prediction import Prediction

FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".parquet": "parquet"}


def output_format(path: str | os.PathLike) -> str:
    ext = Path(path).suffix.lower()
    if ext not in FORMATS:
        raise OutputError(f"{path}: unknown output format {ext!r}; use one of {', '.join(FORMATS)}")
    return FORMATS[ext]


def csv_columns(top_k: int, extra: tuple[str, ...] = ()) -> list[str]:
    cols = ["path", "label", "score", "error", *extra]
    for r in range(2, top_k + 1):
        cols += [f"label_{r}", f"score_{r}"]
    return cols


def csv_row(p: Prediction, top_k: int, extra: tuple[str, ...] = ()) -> list[Any]:
    """``label_2``... continue the ranking after ``label``: the runners-up when ``label`` is the top class;
    the model's top classes themselves when it is not (``unknown``, a multi-label set, no label).
    ``extra`` columns come from ``p.extra`` (lists joined by ``;``; ``label_path``'s nodes by ``>``)."""
    row: list[Any] = [p.path, p.label or "", "" if p.score is None else f"{p.score:.6f}", p.error or ""]
    for c in extra:
        v = p.extra.get(c)
        if c == "label_path" and isinstance(v, list):  # hierarchy models: "sports>dance>ballet"
            row.append(">".join(str(n["label"]) for n in v))
            continue
        row.append("" if v is None else ";".join(map(str, v)) if isinstance(v, (list, tuple)) else v)
    rest = p.topk[1:] if p.topk and p.label == p.topk[0][0] else p.topk
    for r in range(top_k - 1):
        if r < len(rest):
            row += [rest[r][0], f"{rest[r][1]:.6f}"]
        else:
            row += ["", ""]
    return row


class Sink(ABC):
    """Base: ``done`` holds the paths already in the output (for ``--resume``)."""

    done: set[str]
    errors_before: int = 0

    @abstractmethod
    def write(self, preds: list[Prediction]) -> None:
        """Append one batch of rows and flush them."""

    @abstractmethod
    def close(self) -> None:
        """Finish the output (called when the run completes)."""

    def abort(self) -> None:
        """Stop after an interruption, keeping everything needed to ``--resume``."""
        self.close()

    def __enter__(self) -> Sink:
        return self

    def __exit__(self, exc_type, *exc) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def open_sink(path: str | os.PathLike, *, top_k: int, resume: bool = False, overwrite: bool = False,
              extra_columns: tuple[str, ...] = (), parts: bool | None = None, part_rows: int = 10_000) -> Sink:
    """Open an output file for writing predictions; see the module docstring. ``extra_columns``: keys of
    ``Prediction.extra`` that the CSV gets as columns after ``error`` (the other formats carry every key).

    ``parts`` (``.parquet`` only): True writes a folder of parts of ``part_rows`` rows, False one file, None
    (default) continues whichever exists (a new output is one file)."""
    path = Path(path)
    if path.is_dir() and not (path.suffix.lower() == ".parquet" and parts is not False and is_parts_folder(path)):
        raise OutputError(f"{path} is a directory; give a file name such as {path / 'predictions.csv'}")
    fmt = output_format(path)
    if not path.parent.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
    journal = Path(f"{path}.partial.jsonl") if fmt in ("json", "parquet") else None
    exists = path.exists() or (journal is not None and journal.exists())
    if exists and not (resume or overwrite):
        raise OutputError(f"{path} already exists: resume it (--resume) or replace it (--overwrite)")
    if overwrite and not resume:
        if path.is_dir():
            remove_parts(path)
        for p in (path, journal):
            if p is not None and p.is_file():
                p.unlink()
    if fmt == "parquet" and (path.is_dir() or (parts and not path.exists() and not journal.exists())):
        return PartsSink(path, extra_columns=tuple(extra_columns), part_rows=part_rows)
    if fmt == "csv":
        return CsvSink(path, top_k, tuple(extra_columns))
    if fmt == "jsonl":
        return JsonlSink(path)
    assert journal is not None
    if path.exists() and not journal.exists():  # resuming a finished file: continue through a journal
        _seed_journal(path, fmt, journal)
    return JournalSink(path, fmt, journal)


class CsvSink(Sink):
    def __init__(self, path: Path, top_k: int, extra: tuple[str, ...] = ()):
        self.path, self.top_k, self.extra = path, top_k, extra
        self.columns = csv_columns(top_k, extra)
        self.done, self.errors_before = set(), 0
        if path.exists() and path.stat().st_size > 0:
            self._recover()
            self.f = open(path, "a", encoding="utf-8", newline="")  # noqa: SIM115
        else:
            self.f = open(path, "w", encoding="utf-8", newline="")  # noqa: SIM115
            self._writerow_block([self.columns])

    def _recover(self) -> None:
        end, header = 0, None
        with open(self.path, encoding="utf-8", newline="") as f:
            for text, offset in _csv_records(f):
                rec = next(csv.reader(io.StringIO(text)))
                if header is None:
                    header = rec
                    if header != self.columns:
                        raise OutputError(
                            f"{self.path}: existing columns {header} differ from this run's {self.columns} "
                            "(use the same --top-k and --ids to resume, or --overwrite)")
                elif len(rec) != len(self.columns):
                    break
                else:
                    self.done.add(rec[0])
                    self.errors_before += bool(rec[3])
                end = offset
        _truncate(self.path, end)

    def _writerow_block(self, rows: list[list[Any]]) -> None:
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerows(rows)
        self.f.write(buf.getvalue())  # one write per batch: a kill tears at most the last record
        self.f.flush()

    def write(self, preds: list[Prediction]) -> None:
        self._writerow_block([csv_row(p, self.top_k, self.extra) for p in preds])

    def close(self) -> None:
        if not self.f.closed:
            self.f.flush()
            os.fsync(self.f.fileno())
            self.f.close()


def _csv_records(f) -> Iterator[tuple[str, int]]:
    """Yield complete CSV records with the character offset where each one ends."""
    buf, pos = "", 0
    for line in f:
        pos += len(line.encode("utf-8"))
        buf += line
        if buf.endswith("\n") and buf.count('"') % 2 == 0:
            yield buf, pos
            buf = ""


class JsonlSink(Sink):
    def __init__(self, path: Path):
        self.path = path
        self.done, self.errors_before = set(), 0
        if path.exists():
            end = 0
            for row, offset in _jsonl_rows(path):
                self.done.add(row["path"])
                self.errors_before += bool(row.get("error"))
                end = offset
            _truncate(path, end)
        self.f = open(path, "a", encoding="utf-8")  # noqa: SIM115

    def write(self, preds: list[Prediction]) -> None:
        self.f.write("".join(json.dumps(p.to_dict(), ensure_ascii=False) + "\n" for p in preds))
        self.f.flush()

    def close(self) -> None:
        if not self.f.closed:
            self.f.flush()
            os.fsync(self.f.fileno())
            self.f.close()


def _jsonl_rows(path: Path) -> Iterator[tuple[dict, int]]:
    pos = 0
    with open(path, "rb") as f:
        for line in f:
            if not line.endswith(b"\n"):
                return
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                return
            pos += len(line)
            yield row, pos


class JournalSink(JsonlSink):
    """JSONL journal converted into ``.json`` or ``.parquet`` when the run completes."""

    def __init__(self, path: Path, fmt: str, journal: Path):
        self.final, self.fmt = path, fmt
        super().__init__(journal)

    def close(self) -> None:
        if self.f.closed:
            return
        super().close()
        rows = [row for row, _ in _jsonl_rows(self.path)]
        with atomic_path(self.final) as tmp:
            if self.fmt == "json":
                tmp.write_text(json.dumps(rows, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
            else:
                write_parquet(rows, tmp)
        self.path.unlink()

    def abort(self) -> None:
        """Leave the journal in place (interrupted run) so that ``--resume`` can continue it."""
        if not self.f.closed:
            JsonlSink.close(self)


def write_parquet(rows: list[dict], path: Path, schema=None) -> None:
    """Rows as one Parquet file; ``schema`` fixes the columns (else: :func:`parquet_schema` + the rows' extras)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if schema is None:
        schema = parquet_schema(any("labels" in r for r in rows))
        for name in dict.fromkeys(k for r in rows for k in r if k not in schema.names):  # extra columns, typed by
            schema = schema.append(pa.field(name, pa.array([r.get(name) for r in rows]).type))  # their values
    cols = {name: [r.get(name) for r in rows] for name in schema.names}
    pq.write_table(pa.table(cols, schema=schema), path)


#: Types of the known extra columns (``--ids``), single-label and multi-label.
#: Parquet types of the extra columns (single-label, multi-label): ``--ids``' columns, ``known_score``, ``label_path``.
EXTRA_TYPES = {"class_index": ("int64", "list<int64>"), "wnid": ("string", "list<string>"),
               "known_score": ("double", "double"), "label_path": ("nodes", "nodes")}


def parquet_schema(multi_label: bool, extra: tuple[str, ...] = ()):
    """The Parquet columns of a predictions file: ``labels`` only for multi-label models (single-label outputs keep
    the columns of every earlier release), then the known ``extra`` columns (:data:`EXTRA_TYPES`)."""
    import pyarrow as pa

    fields = [("path", pa.string()), ("label", pa.string()), ("score", pa.float64()), ("error", pa.string()),
              ("topk", pa.list_(pa.struct([("label", pa.string()), ("score", pa.float64())])))]
    if multi_label:
        fields.append(("labels", pa.list_(pa.string())))  # every label above its threshold
    types = {"int64": pa.int64(), "string": pa.string(), "list<int64>": pa.list_(pa.int64()),
             "list<string>": pa.list_(pa.string()), "double": pa.float64(),
             "nodes": pa.list_(pa.struct([("label", pa.string()), ("score", pa.float64())]))}
    for name in extra:
        fields.append((name, types[EXTRA_TYPES[name][int(multi_label)]]))
    return pa.schema(fields)


PART_GLOB = "part-*.parquet"


def is_parts_folder(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a folder of prediction parts (or an empty folder, which may become one)."""
    path = Path(path)
    return path.is_dir() and all(p.name.startswith((".", "part-")) for p in path.iterdir())


def remove_parts(folder: Path) -> None:
    """Delete a parts folder written by :class:`PartsSink` (its parts and leftover temporary files)."""
    if not is_parts_folder(folder):
        raise OutputError(f"{folder} holds files other than prediction parts; not removing it")
    for p in folder.iterdir():
        p.unlink()
    folder.rmdir()


class PartsSink(Sink):
    """A folder of Parquet parts, each replaced atomically when complete, so a part is either whole or absent.

    :meth:`write_part` names a part by its input partition (``part-00042.parquet``; a second part for the same
    partition, when the library grew between runs, is ``part-00042-1.parquet``); :meth:`write` collects rows
    into numbered parts of ``part_rows``. ``done``: the paths already in the folder. ``multi_label``: set before
    the first write when known (a ``labels`` column in every part), else taken from the rows."""

    def __init__(self, folder: Path, *, extra_columns: tuple[str, ...] = (), part_rows: int = 10_000):
        import pyarrow.parquet as pq

        self.folder, self.extra, self.part_rows = folder, extra_columns, max(1, part_rows)
        self.multi_label: bool | None = None
        self.done, self.errors_before = set(), 0
        self.schema = None
        self.pending: list[Prediction] = []
        self.written = 0  # parts written by this run
        folder.mkdir(parents=True, exist_ok=True)
        for part in sorted(folder.glob(PART_GLOB)):
            table = pq.read_table(part, columns=["path", "error"])
            self.done.update(table.column("path").to_pylist())
            self.errors_before += table.column("error").drop_null().length()
            if self.schema is None:
                self.schema = pq.read_schema(part)
        self._next = len(list(folder.glob(PART_GLOB)))

    def _schema(self, rows: list[dict]):
        if self.schema is None:
            multi = self.multi_label if self.multi_label is not None else any("labels" in r for r in rows)
            self.schema = parquet_schema(multi, tuple(c for c in self.extra if c in EXTRA_TYPES))
        return self.schema

    def write_part(self, index: int, preds: list[Prediction]) -> Path:
        """Write ``preds`` as the part of input partition ``index`` (atomically)."""
        name, k = f"part-{index:05d}.parquet", 0
        while (self.folder / name).exists():
            k += 1
            name = f"part-{index:05d}-{k}.parquet"
        rows = [p.to_dict() for p in preds]
        with atomic_path(self.folder / name) as tmp:
            write_parquet(rows, tmp, self._schema(rows))
        self.written += 1
        return self.folder / name

    def write(self, preds: list[Prediction]) -> None:
        self.pending.extend(preds)
        while len(self.pending) >= self.part_rows:
            self._flush(self.part_rows)

    def _flush(self, n: int) -> None:
        chunk, self.pending = self.pending[:n], self.pending[n:]
        if chunk:
            self.write_part(self._next, chunk)
            self._next += 1

    def close(self) -> None:
        self._flush(len(self.pending))


def read_rows(path: str | os.PathLike) -> list[dict]:
    """Read a predictions file of any supported format back as a list of dicts."""
    fmt = output_format(path)
    path = Path(path)
    if fmt == "csv":
        with open(path, encoding="utf-8", newline="") as f:
            return list(csv.DictReader(f))
    if fmt == "jsonl":
        return [row for row, _ in _jsonl_rows(path)]
    if fmt == "json":
        return json.loads(path.read_text(encoding="utf-8"))
    import pyarrow.parquet as pq

    if path.is_dir():  # a folder of parts: one dataset, parts in name order
        return [row for part in sorted(path.glob(PART_GLOB)) for row in pq.read_table(part).to_pylist()]
    return pq.read_table(path).to_pylist()


def _seed_journal(path: Path, fmt: str, journal: Path) -> None:
    rows = read_rows(path)
    with open(journal, "w", encoding="utf-8") as f:
        f.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def _truncate(path: Path, size: int) -> None:
    if path.stat().st_size != size:
        with open(path, "r+b") as f:
            f.truncate(size)
