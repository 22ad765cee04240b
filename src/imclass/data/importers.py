"""Importers: class folders, split folders and CSV/TSV annotation files -> one :class:`Dataset`.

Accepted layouts (``load_dataset`` picks by looking):

- class folders ``root/<class>/*`` (images in nested folders count for their top-level class; with
  ``hierarchy=True`` their label is the folder path below the root, ``root/sports/dance/x.jpg`` ->
  ``sports/dance``, and ``a/b`` labels of a CSV are such paths too);
- split folders ``root/{train,val,test}/<class>/*`` (``valid``/``validation``, ``training``, ``testing`` too;
  ``root/all/<class>/*`` is an unsplit dataset);
- a CSV or TSV with a file column (``filename``, ``file``, ``path``, ``image``, ``image_path``, ``filepath``,
  ``image_id``, ``id``) and either
  - a single-label column ``label`` / ``class`` / ``category``; a cell holding ``;``, ``,`` or ``|`` makes the
    dataset multi-label,
  - a multi-label column ``labels`` / ``tags`` (separated by ``;``, ``,``, ``|`` or spaces), or
  - multi-hot ``0``/``1`` columns, one per class;
  and optionally a ``split`` column. Paths are relative to the CSV's folder (or its ``images/`` subfolder,
  when the files are there), or to ``images_dir``;
- the labelling tools' formats (:mod:`imclass.data.formats`): a Label Studio JSON export (``.json``; image
  references resolved against ``images_dir``), a Hugging Face imagefolder with ``metadata.csv`` /
  ``metadata.jsonl``, or a ``datasets`` ``save_to_disk`` folder (with the ``datasets`` library).
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
import re
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal

import pandas as pd
from PIL import Image, UnidentifiedImageError

from ..engine.sources import iter_image_paths
from . import formats
from .dataset import COLUMNS, Dataset, DatasetError, Problem

FILE_COLUMNS = ("filename", "file", "file_name", "path", "filepath", "image", "image_path", "img", "image_id", "id")
LABEL_COLUMNS = ("label", "class", "category", "class_name")
MULTI_LABEL_COLUMNS = ("labels", "tags", "classes", "categories")
SPLIT_ALIASES = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val",
                 "dev": "val", "test": "test", "testing": "test", "": ""}
SPLIT_FOLDERS = {**{k: v for k, v in SPLIT_ALIASES.items() if k}, "all": ""}  # root/all/<class>/: unsplit
SEPARATORS = (";", ",", "|")
OnError = Literal["raise", "skip"]


def load_dataset(
    source: str | os.PathLike | Dataset,
    *,
    images_dir: str | os.PathLike | None = None,
    multi_label: bool | None = None,
    on_error: OnError = "raise",
    inspect: bool = True,
    workers: int = 4,
    progress: Callable[[int, int], None] | None = None,
    hierarchy: bool = False,
) -> Dataset:
    """Import a dataset from class folders, split folders, a CSV/TSV, a Label Studio JSON export, a Hugging Face
    imagefolder or a ``datasets`` folder (see the module docstring).

    ``on_error="raise"`` stops at the first malformed row or unknown file with a message naming it;
    ``"skip"`` leaves such rows out and lists them in ``Dataset.problems``. ``inspect`` fills ``sha256``,
    size, mode and ``error`` (unopenable files) by reading every file once. ``progress(done, total)`` is
    called while inspecting. ``hierarchy``: nested class folders give path labels (``sports/dance/ballet``)
    instead of counting for their top-level class; the dataset must be single-label.
    """
    if isinstance(source, Dataset):
        return source
    if on_error not in ("raise", "skip"):
        raise DatasetError(f"on_error must be 'raise' or 'skip', not {on_error!r}")
    src = Path(source)
    if src.is_file():
        if src.suffix.lower() == ".json":  # Label Studio's JSON export
            rows, problems, declared_multi, classes_hint = formats.read_labelstudio(src, images_dir, on_error,
                                                                                    multi_label)
        else:
            rows, problems, declared_multi, classes_hint = _from_csv(src, images_dir, on_error, multi_label)
        root = str((Path(images_dir) if images_dir else src.parent).resolve())
    elif src.is_dir():
        kind = formats.folder_kind(src)
        if kind == "hf-datasets":  # a datasets save_to_disk folder
            rows, problems, declared_multi, classes_hint = formats.read_hf_datasets(src, on_error, images_dir)
        elif kind == "imagefolder":  # Hugging Face imagefolder with metadata.csv / metadata.jsonl
            rows, problems, declared_multi, classes_hint = formats.read_imagefolder(src, on_error)
        else:
            rows, problems = _from_folders(src, hierarchy)
            declared_multi, classes_hint = False, None
        root = str(src.resolve())
    elif not src.exists():
        raise DatasetError(f"{source}: no such file or folder")
    else:
        raise DatasetError(f"{source}: not a folder or a CSV file")
    if not rows:
        raise DatasetError(f"{source}: no labelled images found (expected root/<class>/* folders, "
                           "root/{train,val,test}/<class>/*, or a CSV with a filename and a label column)")
    multi = declared_multi if multi_label is None else multi_label
    if hierarchy:
        if multi:
            raise DatasetError(f"{source}: hierarchical labels need a single-label dataset")
        for r in rows:  # "sports / dance/" -> "sports/dance"
            r["labels"] = ["/".join(s.strip() for s in lab.split("/") if s.strip()) for lab in r["labels"]]
        if classes_hint:
            classes_hint = ["/".join(s.strip() for s in c.split("/") if s.strip()) for c in classes_hint]
    if not multi:
        bad = [r for r in rows if len(r["labels"]) != 1]
        if bad:
            raise DatasetError(f"{bad[0]['where']}: {len(bad[0]['labels'])} labels in a single-label dataset "
                               "(pass multi_label=True / --multi-label)")
    classes = classes_hint or sorted({lab for r in rows for lab in r["labels"]})
    order = {c: i for i, c in enumerate(classes)}
    for r in rows:  # one canonical order of labels within a row, whatever the input format
        r["labels"] = sorted(set(r["labels"]), key=order.__getitem__)
    table = pd.DataFrame({
        "path": [r["path"] for r in rows],
        "labels": [r["labels"] for r in rows],
        "split": [r["split"] for r in rows],
    })
    for col in COLUMNS[3:]:
        table[col] = None
    if inspect:
        facts = inspect_files(table["path"].tolist(), workers=workers, progress=progress)
        for col in COLUMNS[3:]:
            table[col] = [f[col] for f in facts]
    return Dataset(table, classes, multi, root=root, source=os.fspath(source), problems=problems,
                   hierarchy=hierarchy)


# ---- folders -----------------------------------------------------------------------------------------
def _from_folders(root: Path, hierarchy: bool = False) -> tuple[list[dict[str, Any]], list[Problem]]:
    subdirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    split_dirs = [d for d in subdirs if d.name.lower() in SPLIT_FOLDERS]
    if [d.name.lower() for d in split_dirs] == ["all"] and len(subdirs) > 1:
        split_dirs = []  # a class that happens to be called "all"
    rows: list[dict[str, Any]] = []
    problems: list[Problem] = []
    if split_dirs:
        other = [d.name for d in subdirs if d not in split_dirs]
        if other:
            problems.append(Problem(str(root), f"folders ignored beside the split folders: {', '.join(other)}"))
        for sd in split_dirs:
            rows += _class_folders(sd, SPLIT_FOLDERS[sd.name.lower()], hierarchy)
    else:
        loose = [p for p in iter_image_paths([root], recursive=False)]
        if loose:
            problems.append(Problem(str(root), f"{len(loose)} images directly in the root have no class folder "
                                               "and were left out"))
        rows = _class_folders(root, "", hierarchy)
    return rows, problems


def _class_folders(root: Path, split: str, hierarchy: bool = False) -> list[dict[str, Any]]:
    """Images under ``root/<class>/``: labelled by the class folder, or (``hierarchy``) by the path of the folder
    that holds them below ``root``, joined by ``/``."""
    rows = []
    for d in sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")):
        for p in iter_image_paths([d]):
            label = Path(os.path.relpath(os.path.dirname(p), root)).as_posix() if hierarchy else d.name
            rows.append({"path": os.path.abspath(p), "labels": [label], "split": split, "where": p})
    return rows


# ---- CSV ---------------------------------------------------------------------------------------------
def _from_csv(path: Path, images_dir, on_error: OnError, multi_label: bool | None):
    frame = _read_table(path)
    cols = {c.strip().lower(): c for c in frame.columns}
    file_col = next((cols[c] for c in FILE_COLUMNS if c in cols), None)
    if file_col is None:
        raise DatasetError(f"{path}: no file column (expected one of {', '.join(FILE_COLUMNS)}; "
                           f"found {', '.join(map(str, frame.columns))})")
    split_col = cols.get("split")
    single_col = next((cols[c] for c in LABEL_COLUMNS if c in cols), None)
    multi_col = next((cols[c] for c in MULTI_LABEL_COLUMNS if c in cols), None)
    rest = [c for c in frame.columns if c not in (file_col, split_col)]
    hot_cols = [] if (single_col or multi_col) else [c for c in rest if _is_binary(frame[c])]
    if not (single_col or multi_col or hot_cols):
        raise DatasetError(f"{path}: no label column (expected one of {', '.join(LABEL_COLUMNS + MULTI_LABEL_COLUMNS)}"
                           f", or multi-hot 0/1 columns; found {', '.join(map(str, frame.columns))})")
    if hot_cols and len(hot_cols) != len(rest):
        extra = [c for c in rest if c not in hot_cols]
        raise DatasetError(f"{path}: columns {extra} are neither 0/1 class columns nor filename/split")
    if images_dir:
        base = Path(images_dir)
        if not base.is_dir():
            raise DatasetError(f"{images_dir}: images folder not found")
    else:
        base = _guess_base(path.parent, frame[file_col])

    if single_col is not None:
        cells = frame[single_col].fillna("").astype(str).str.strip()
        sep = next((s for s in SEPARATORS if cells.str.contains(re.escape(s)).any()), None)
        declared_multi = sep is not None
    elif multi_col is not None:
        cells = frame[multi_col].fillna("").astype(str).str.strip()
        sep = next((s for s in SEPARATORS if cells.str.contains(re.escape(s)).any()), " ")
        declared_multi = True
    else:
        cells, sep, declared_multi = None, None, True
    multi = declared_multi if multi_label is None else multi_label

    rows: list[dict[str, Any]] = []
    problems: list[Problem] = []
    seen: dict[str, str] = {}
    for i, rec in enumerate(frame.itertuples(index=False)):
        where = f"{path.name}:{i + 2}"  # line number in the file (header is line 1)
        values = dict(zip(frame.columns, rec))
        try:
            name = str(values[file_col] if values[file_col] is not None else "").strip()
            if not name or name.lower() == "nan":
                raise DatasetError("empty filename")
            full = os.path.abspath(name if os.path.isabs(name) else base / name)
            if not os.path.isfile(full):
                raise DatasetError(f"file not found: {name} (looked in {base})")
            if hot_cols:
                labels = []
                for c in hot_cols:
                    v = str(values[c]).strip()
                    if v not in ("0", "1", "0.0", "1.0", "True", "False", "true", "false"):
                        raise DatasetError(f"column {c!r} must be 0 or 1, not {v!r}")
                    if v in ("1", "1.0", "True", "true"):
                        labels.append(str(c).strip())
            else:
                cell = cells.iloc[i]
                labels = [t.strip() for t in (cell.split() if sep == " " else cell.split(sep) if sep else [cell])]
                labels = [t for t in labels if t]
                if not labels and not multi:
                    raise DatasetError("empty label")
            split = ""
            if split_col is not None:
                raw = str(values[split_col] if values[split_col] is not None else "").strip().lower()
                raw = "" if raw == "nan" else raw
                if raw not in SPLIT_ALIASES:
                    raise DatasetError(f"unknown split {raw!r} (use train, val or test)")
                split = SPLIT_ALIASES[raw]
            if full in seen:
                raise DatasetError(f"{name} is listed twice (first at {seen[full]})")
            seen[full] = where
        except DatasetError as e:
            if on_error == "raise":
                raise DatasetError(f"{where}: {e} (pass on_error='skip' / --skip-bad-rows to skip and report)"
                                   ) from None
            problems.append(Problem(where, str(e)))
            continue
        rows.append({"path": full, "labels": labels, "split": split, "where": where})
    classes = [str(c).strip() for c in hot_cols] if hot_cols else None
    if classes is not None:
        classes = sorted(classes)
    return rows, problems, multi, classes


def _guess_base(folder: Path, names: pd.Series) -> Path:
    """The CSV's folder, or its ``images/`` subfolder when the listed files live there instead."""
    first = next((str(n).strip() for n in names if str(n).strip()), "")
    if first and not os.path.isabs(first) and not (folder / first).is_file() and (folder / "images" / first).is_file():
        return folder / "images"
    return folder


def _read_table(path: Path) -> pd.DataFrame:
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            head = f.read(4096)
    except UnicodeDecodeError:
        raise DatasetError(f"{path}: not a UTF-8 text file (expected a CSV/TSV of filenames and labels)") from None
    except OSError as e:
        raise DatasetError(f"{path}: cannot read ({e.strerror})") from None
    try:
        delimiter = "\t" if path.suffix.lower() == ".tsv" else csv.Sniffer().sniff(head, delimiters=",\t;").delimiter
    except csv.Error:
        delimiter = ","
    try:
        return pd.read_csv(path, sep=delimiter, dtype=str, keep_default_na=False, encoding="utf-8-sig",
                           skipinitialspace=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise DatasetError(f"{path}: not a readable CSV ({str(e).splitlines()[0]})") from None


def _is_binary(col: pd.Series) -> bool:
    vals = set(col.astype(str).str.strip())
    return bool(vals) and vals <= {"0", "1", "0.0", "1.0", "True", "False", "true", "false"}


# ---- per-file facts ----------------------------------------------------------------------------------
def inspect_files(paths: Sequence[str], *, workers: int = 4,
                  progress: Callable[[int, int], None] | None = None) -> list[dict[str, Any]]:
    """``sha256``, ``width``, ``height``, ``mode``, ``format``, ``bytes`` and ``error`` per file (header only)."""
    out: list[dict[str, Any]] = []
    total = len(paths)
    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="imclass-inspect") as pool:
        for i, facts in enumerate(pool.map(inspect_file, paths, chunksize=16)):
            out.append(facts)
            if progress is not None and (i + 1 == total or (i + 1) % 64 == 0):
                progress(i + 1, total)
    return out


def inspect_file(path: str) -> dict[str, Any]:
    """Facts about one file without decoding its pixels. Never raises."""
    facts: dict[str, Any] = {"sha256": None, "width": -1, "height": -1, "mode": "", "format": "",
                             "bytes": -1, "error": None}
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        facts["error"] = f"cannot read: {e.strerror or e}"
        return facts
    facts["bytes"] = len(data)
    facts["sha256"] = hashlib.sha256(data).hexdigest()
    if not data:
        facts["error"] = "empty file (0 bytes)"
        return facts
    try:
        with Image.open(io.BytesIO(data)) as img:
            facts["width"], facts["height"] = img.size
            facts["mode"] = img.mode
            facts["format"] = img.format
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as e:
        facts["error"] = "not an image" if isinstance(e, UnidentifiedImageError) else f"unreadable: {e}"
    return facts
