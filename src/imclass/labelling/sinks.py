"""Prediction outputs, written per batch and flushed, resumable after any interruption.

- ``.csv`` / ``.jsonl``: rows are appended and flushed after every batch. On resume, a torn last
  record (a kill -9 mid-write) is cut off and the paths already present are skipped.
- ``.json`` / ``.parquet``: formats that cannot be appended to are written through a journal
  (``<output>.partial.jsonl``, same resume rules) and converted atomically when the run ends.
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
    ``extra`` columns come from ``p.extra`` (lists joined by ``;``)."""
    row: list[Any] = [p.path, p.label or "", "" if p.score is None else f"{p.score:.6f}", p.error or ""]
    for c in extra:
        v = p.extra.get(c)
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
              extra_columns: tuple[str, ...] = ()) -> Sink:
    """Open an output file for writing predictions; see the module docstring. ``extra_columns``: keys of
    ``Prediction.extra`` that the CSV gets as columns after ``error`` (the other formats carry every key)."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{path} is a directory; give a file name such as {path / 'predictions.csv'}")
    fmt = output_format(path)
    if not path.parent.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
    journal = Path(f"{path}.partial.jsonl") if fmt in ("json", "parquet") else None
    exists = path.exists() or (journal is not None and journal.exists())
    if exists and not (resume or overwrite):
        raise OutputError(f"{path} already exists: resume it (--resume) or replace it (--overwrite)")
    if overwrite and not resume:
        for p in (path, journal):
            if p is not None and p.exists():
                p.unlink()
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


def write_parquet(rows: list[dict], path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema([
        ("path", pa.string()), ("label", pa.string()), ("score", pa.float64()), ("error", pa.string()),
        ("topk", pa.list_(pa.struct([("label", pa.string()), ("score", pa.float64())]))),
        ("labels", pa.list_(pa.string())),  # multi-label models: every label above its threshold
    ])
    if not any("labels" in r for r in rows):  # single-label models: the columns of every earlier release
        schema = schema.remove(schema.get_field_index("labels"))
    for name in dict.fromkeys(k for r in rows for k in r if k not in schema.names):  # extra columns, typed by
        schema = schema.append(pa.field(name, pa.array([r.get(name) for r in rows]).type))  # their values
    cols = {name: [r.get(name) for r in rows] for name in schema.names}
    pq.write_table(pa.table(cols, schema=schema), path)


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

    return pq.read_table(path).to_pylist()


def _seed_journal(path: Path, fmt: str, journal: Path) -> None:
    rows = read_rows(path)
    with open(journal, "w", encoding="utf-8") as f:
        f.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def _truncate(path: Path, size: int) -> None:
    if path.stat().st_size != size:
        with open(path, "r+b") as f:
            f.truncate(size)
