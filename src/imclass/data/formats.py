"""The labelling tools' formats, in and out: Label Studio JSON, Hugging Face ``imagefolder`` and ``datasets``.

Readers (used by :func:`~imclass.data.load_dataset`, which picks them by looking) return the importers' rows
(``path``, ``labels``, ``split``, ``where``); :func:`export_dataset` writes a :class:`Dataset` in any format
(``imclass data export``):

- ``labelstudio``: a JSON list of tasks, each ``{"data": {"image": ...}, "annotations": [{"result": [{"type":
  "choices", "value": {"choices": [...]}}]}]}`` (single or multi-label). Read: the full export (``annotations``,
  or the old ``completions``; the ground-truth or else latest non-cancelled annotation wins) and ``JSON_MIN``
  (``{"image": ..., "choice": "cat"}`` or ``{"choice": {"choices": [...]}}``). Image references resolve against
  ``images_dir`` (else the JSON's folder): Label Studio's ``/data/upload/<project>/<id>-<name>`` uploads,
  ``/data/local-files/?d=<path>`` local storage, plain paths, and for URLs the file's name. Tasks nobody
  labelled are left out (listed in ``Dataset.problems``). Written: one task per image, the split in
  ``data.split``, plus a labelling config (``<name>.labelconfig.xml``) that matches it.
- ``imagefolder`` (Hugging Face): class folders are read as today (``root/[split/]class/*``); images with a
  ``metadata.csv``, ``metadata.jsonl`` or ``metadata.parquet`` (a ``file_name`` column relative to it, and a
  ``label`` or ``labels`` column; without one, the image's folder is its class) at the root or in split folders
  (``train``, ``validation``/``valid``/``val``/``dev``, ``test``/``eval``). Written: ``OUT/<split>/`` (``train``,
  ``validation``, ``test``; ``all`` for images without a split) with the images and a ``metadata.jsonl``.
- ``hf-datasets``: a ``datasets`` ``save_to_disk`` folder (one ``Dataset`` or a ``DatasetDict`` of splits; an
  ``Image`` column and a ``ClassLabel``, list-of-``ClassLabel`` or string label column). Needs the ``datasets``
  library (imported only here). Embedded images are written once, by content, under ``images_dir`` (else the
  imclass cache). Written: images embedded, labels as ``ClassLabel`` (multi-label: a list of them).
- ``folders`` (class folders, single-label) and ``csv`` as the importers read them.

Round trips (import -> export -> import) keep every image's labels and split.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from ..errors import ParameterError
from ..fileio import atomic_path, atomic_write_text
from ..images import is_image_name
from ..paths import cache_dir
from .dataset import Dataset, DatasetError, Problem

FORMATS = ("csv", "folders", "labelstudio", "imagefolder", "hf-datasets")
#: Split names of the Hugging Face tools (folder names, ``DatasetDict`` keys) -> imclass splits.
HF_SPLITS = {"train": "train", "training": "train", "validation": "val", "valid": "val", "val": "val",
             "dev": "val", "test": "test", "testing": "test", "eval": "test", "evaluation": "test",
             "all": "", "unassigned": ""}
#: imclass splits -> the names written for Hugging Face (``""``: no split).
HF_SPLIT_NAMES = {"train": "train", "val": "validation", "test": "test", "": "all"}
SPLIT_NAMES = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val",
               "dev": "val", "test": "test", "testing": "test", "": "", "all": "", "unassigned": ""}
FOLDER_SPLITS = {"train", "training", "val", "valid", "validation", "dev", "test", "testing", "all"}
METADATA_FILES = ("metadata.csv", "metadata.jsonl", "metadata.parquet")
LS_IMAGE_KEYS = ("image", "img", "image_url", "photo", "picture", "url")
LS_CHOICE_KEYS = ("choice", "choices", "label", "labels", "class", "category")
LS_META_KEYS = frozenset({
    "id", "annotator", "annotation_id", "created_at", "updated_at", "lead_time", "split", "data", "annotations",
    "predictions", "completions", "meta", "drafts", "project", "inner_id", "total_annotations",
    "cancelled_annotations", "total_predictions", "comment_count", "unresolved_comment_count",
    "last_comment_updated_at", "updated_by", "comment_authors", "file_upload", "storage_filename"})

Rows = list[dict[str, Any]]


class _Reader:
    """Collects rows; a bad one raises (``on_error="raise"``) or becomes a :class:`Problem`."""

    def __init__(self, on_error: str):
        self.on_error = on_error
        self.rows: Rows = []
        self.problems: list[Problem] = []
        self.seen: dict[str, str] = {}

    def fail(self, where: str, reason: str) -> None:
        if self.on_error == "raise":
            raise DatasetError(f"{where}: {reason} (pass on_error='skip' / --skip-bad-rows to skip and report)")
        self.problems.append(Problem(where, reason))

    def add(self, where: str, path: str, labels: list[str], split: str) -> None:
        full = os.path.abspath(path)
        if full in self.seen:
            self.fail(where, f"{path} is listed twice (first at {self.seen[full]})")
            return
        self.seen[full] = where
        self.rows.append({"path": full, "labels": _unique(labels), "split": split, "where": where})


def _unique(labels) -> list[str]:
    return list(dict.fromkeys(str(x).strip() for x in labels if str(x).strip()))


# ---- Label Studio -----------------------------------------------------------------------------------------

def read_labelstudio(path: Path, images_dir: str | os.PathLike | None, on_error: str,
                     multi_label: bool | None = None) -> tuple[Rows, list[Problem], bool, None]:
    """Rows from a Label Studio JSON export (full or ``JSON_MIN``) of a ``Choices`` project."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8-sig"))
    except UnicodeDecodeError:
        raise DatasetError(f"{path}: not a UTF-8 JSON file") from None
    except json.JSONDecodeError as e:
        raise DatasetError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None
    if isinstance(doc, dict):
        doc = doc.get("tasks", [doc])
    if not isinstance(doc, list):
        raise DatasetError(f"{path}: expected Label Studio's JSON export (a list of tasks)")
    base = Path(images_dir) if images_dir else path.parent
    if images_dir and not base.is_dir():
        raise DatasetError(f"{images_dir}: images folder not found")
    reader = _Reader(on_error)
    empty: list[tuple[str, str, str]] = []
    for i, task in enumerate(doc):
        where = f"{path.name}: task {i + 1}" + (f" (id {task['id']})" if isinstance(task, dict) and "id" in task
                                                else "")
        if not isinstance(task, dict):
            reader.fail(where, "not a task object")
            continue
        data = task["data"] if isinstance(task.get("data"), dict) else task
        labels, labelled = _ls_choices(task) if "data" in task else _ls_choices_min(task)
        if not labelled:
            reader.problems.append(Problem(where, "not labelled (no annotation with choices): left out"))
            continue
        ref = _ls_image_ref(data)
        if ref is None:
            reader.fail(where, "no image reference in the task's data")
            continue
        try:
            full = _ls_resolve(ref, base, explicit=images_dir is not None)
        except DatasetError as e:
            reader.fail(where, str(e))
            continue
        raw_split = str(data.get("split") or "").strip().lower()
        if raw_split not in SPLIT_NAMES:
            reader.fail(where, f"unknown split {raw_split!r} (use train, val or test)")
            continue
        if labels:
            reader.add(where, full, labels, SPLIT_NAMES[raw_split])
        else:
            empty.append((where, full, SPLIT_NAMES[raw_split]))
    multi = multi_label if multi_label is not None else any(len(r["labels"]) > 1 for r in reader.rows)
    for where, full, split in empty:  # an annotation without a choice: no labels (multi-label only)
        if multi:
            reader.add(where, full, [], split)
        else:
            reader.problems.append(Problem(where, "annotated without a choice: left out"))
    return reader.rows, reader.problems, multi, None


def _ls_choices(task: dict) -> tuple[list[str], bool]:
    anns = [a for a in (task.get("annotations") or task.get("completions") or [])
            if isinstance(a, dict) and not a.get("was_cancelled")]
    if not anns:
        return [], False
    pool = [a for a in anns if a.get("ground_truth")] or anns  # ground truth first, then the latest
    ann = max(enumerate(pool), key=lambda ia: (str(ia[1].get("updated_at") or ia[1].get("created_at") or ""),
                                               ia[0]))[1]
    labels: list[str] = []
    for r in ann.get("result") or []:
        value = r.get("value") if isinstance(r, dict) else None
        if isinstance(value, dict) and (r.get("type") == "choices" or "choices" in value):
            labels += [str(c) for c in value.get("choices") or []]
    return _unique(labels), True


def _ls_choices_min(task: dict) -> tuple[list[str], bool]:
    for value in task.values():  # {"choice": {"choices": [...]}}: several choices
        if isinstance(value, dict) and isinstance(value.get("choices"), list):
            return _unique(value["choices"]), True
    image_key = next((k for k in LS_IMAGE_KEYS if isinstance(task.get(k), str)), None)
    for key in LS_CHOICE_KEYS:
        if key != image_key and isinstance(task.get(key), (str, list)):
            value = task[key]
            return _unique([value] if isinstance(value, str) else value), True
    rest = [k for k, v in task.items() if k not in LS_META_KEYS and k != image_key and isinstance(v, str)
            and not _looks_like_image_ref(v)]
    if len(rest) == 1:
        return _unique([task[rest[0]]]), True
    return [], False


def _looks_like_image_ref(value: str) -> bool:
    path = urlsplit(value).path if "://" in value else value
    return value.startswith("/data/") or "://" in value or is_image_name(path)


def _ls_image_ref(data: dict) -> str | None:
    for key in LS_IMAGE_KEYS:
        if isinstance(data.get(key), str) and data[key].strip():
            return data[key].strip()
    return next((v.strip() for v in data.values() if isinstance(v, str) and _looks_like_image_ref(v.strip())), None)


def _ls_resolve(ref: str, base: Path, explicit: bool) -> str:
    """A Label Studio image reference -> an existing local file."""
    parts = urlsplit(ref)
    path = unquote(parts.path)
    candidates: list[str] = []
    if "/data/local-files" in path:
        d = parse_qs(parts.query).get("d", [""])[0]
        candidates = [d, d.lstrip("/"), os.path.basename(d)]
    elif "/data/upload/" in path:
        rest = path.split("/data/upload/", 1)[1]
        name = os.path.basename(rest)
        candidates = [f"upload/{rest}", f"media/upload/{rest}", rest, name, re.sub(r"^[0-9a-f]{8}-", "", name)]
    elif parts.scheme and len(parts.scheme) > 1:  # http(s), s3, gs, ...: the file's name (downloaded beside it)
        candidates = [os.path.basename(path)]
    else:
        candidates = [ref, os.path.basename(ref)]
    for c in candidates:
        if not c:
            continue
        full = Path(c) if os.path.isabs(c) else base / c
        if full.is_file():
            return os.path.abspath(full)
    hint = "" if explicit else "; pass images_dir / --images-dir with the folder that holds the images"
    if parts.scheme in ("http", "https") and not explicit:
        hint = "; a remote image: download it first (imclass data download) and pass --images-dir"
    raise DatasetError(f"image not found: {ref} (looked in {base}{hint})")


def write_labelstudio(ds: Dataset, out: Path, image_prefix: str | None = None) -> list[Path]:
    """``out`` (a JSON list of tasks) and ``<stem>.labelconfig.xml`` beside it."""
    tasks = []
    for i, (path, labels, split) in enumerate(zip(ds.table["path"], ds.table["labels"], ds.table["split"])):
        ref = _relative(path, out.parent)
        data: dict[str, Any] = {"image": (image_prefix + ref) if image_prefix else ref}
        if split:
            data["split"] = split
        tasks.append({"id": i + 1, "data": data, "annotations": [{
            "id": i + 1, "was_cancelled": False, "ground_truth": False,
            "result": [{"id": f"choice-{i + 1}", "type": "choices", "from_name": "label", "to_name": "image",
                        "origin": "manual", "value": {"choices": list(labels)}}]}]})
    atomic_write_text(out, json.dumps(tasks, indent=1, ensure_ascii=False) + "\n")
    from xml.sax.saxutils import quoteattr

    choices = "\n".join(f"    <Choice value={quoteattr(c)}/>" for c in ds.classes)
    config = (f'<View>\n  <Image name="image" value="$image"/>\n  <Choices name="label" toName="image" '
              f'choice="{"multiple" if ds.multi_label else "single"}" showInLine="true">\n{choices}\n'
              "  </Choices>\n</View>\n")
    xml = out.with_name(out.stem + ".labelconfig.xml")
    atomic_write_text(xml, config)
    return [out, xml]


# ---- Hugging Face imagefolder -----------------------------------------------------------------------------

def folder_kind(root: Path) -> str | None:
    """``"hf-datasets"`` (a ``save_to_disk`` folder), ``"imagefolder"`` (images with metadata files) or None."""
    if (root / "dataset_dict.json").is_file() or ((root / "state.json").is_file()
                                                   and (root / "dataset_info.json").is_file()):
        return "hf-datasets"
    if _metadata_files(root):
        return "imagefolder"
    return None


def _metadata_files(root: Path, depth: int = 2) -> list[Path]:
    found = []
    for folder, dirs, files in os.walk(root):
        level = len(Path(folder).relative_to(root).parts)
        dirs[:] = sorted(d for d in dirs if not d.startswith(".")) if level < depth else []
        found += [Path(folder) / m for m in METADATA_FILES if m in files]
    return sorted(found)


def _read_metadata(path: Path) -> list[dict[str, Any]]:
    try:
        if path.suffix == ".jsonl":
            records = []
            for n, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), 1):
                if line.strip():
                    rec = json.loads(line)
                    if not isinstance(rec, dict):
                        raise DatasetError(f"{path}:{n}: not a JSON object")
                    records.append(rec)
            return records
        import pandas as pd

        if path.suffix == ".parquet":
            return pd.read_parquet(path).to_dict("records")
        return pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig").to_dict("records")
    except (json.JSONDecodeError, UnicodeDecodeError, ValueError, OSError) as e:
        raise DatasetError(f"{path}: cannot read ({str(e).splitlines()[0] if str(e) else type(e).__name__})"
                           ) from None


def _split_of(rel: Path) -> str:
    """The split of an image from its path below the dataset's root (``train/x.jpg``, ``data/test/c/x.jpg``)."""
    for part in rel.parts[:-1][:2]:
        if part.lower() in HF_SPLITS:
            return HF_SPLITS[part.lower()]
    return ""


def _label_values(value: Any) -> list[str]:
    if value is None or (isinstance(value, float) and value != value):
        return []
    if hasattr(value, "tolist"):
        value = value.tolist()
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value]
    cell = str(value).strip()
    if cell.startswith("[") and cell.endswith("]"):  # a list written into a CSV cell
        try:
            parsed = json.loads(cell)
            if isinstance(parsed, list):
                return [str(v) for v in parsed]
        except json.JSONDecodeError:
            pass
    sep = next((s for s in (";", "|", ",") if s in cell), None)
    return [t.strip() for t in cell.split(sep)] if sep else [cell]


def read_imagefolder(root: Path, on_error: str) -> tuple[Rows, list[Problem], bool, None]:
    """Rows from a Hugging Face imagefolder with ``metadata.csv``/``.jsonl``/``.parquet`` files."""
    reader = _Reader(on_error)
    multi = False
    for meta in _metadata_files(root):
        records = _read_metadata(meta)
        keys = set().union(*records) if records else set()
        file_key = "file_name" if "file_name" in keys else next((k for k in sorted(keys)
                                                                 if str(k).endswith("_file_name")), None)
        if file_key is None:
            raise DatasetError(f"{meta}: no file_name column (Hugging Face imagefolder metadata names each image "
                               f"in file_name; found {', '.join(map(str, sorted(keys))) or 'nothing'})")
        label_key = next((k for k in ("label", "labels", "tags", "class", "category") if k in keys), None)
        for n, rec in enumerate(records):
            where = f"{meta.relative_to(root)}:{n + 2 if meta.suffix == '.csv' else n + 1}"
            name = str(rec.get(file_key) or "").strip()
            if not name:
                reader.fail(where, "empty file_name")
                continue
            full = (meta.parent / name).resolve()
            if not full.is_file():
                reader.fail(where, f"file not found: {name} (looked in {meta.parent})")
                continue
            try:
                rel = full.relative_to(root.resolve())
            except ValueError:
                reader.fail(where, f"{name} is outside the dataset folder")
                continue
            if label_key is not None:
                raw = rec.get(label_key)
                labels = _label_values(raw)
                multi = multi or label_key in ("labels", "tags") or isinstance(raw, (list, tuple)) or len(labels) > 1
            else:  # no label column: the image's folder names its class (imagefolder's own rule)
                parts = [p for p in Path(name).parts[:-1] if p.lower() not in HF_SPLITS]
                if not parts:
                    reader.fail(where, "no label: the metadata has no label column and the image is in no class "
                                       "folder")
                    continue
                labels = [parts[-1]]
            if not labels and not multi and label_key not in ("labels", "tags"):
                reader.fail(where, "empty label")
                continue
            reader.add(where, str(full), labels, _split_of(rel))
    return reader.rows, reader.problems, multi, None


def write_imagefolder(ds: Dataset, out: Path, mode: str) -> list[Path]:
    """``OUT/<split>/`` images and ``metadata.jsonl`` (``file_name`` and ``label`` or ``labels``)."""
    splits = set(ds.table["split"])
    written: list[Path] = []
    groups: dict[str, list[dict[str, Any]]] = {}
    names: dict[Path, set[str]] = {}
    for path, labels, split, sha in zip(ds.table["path"], ds.table["labels"], ds.table["split"], ds.table["sha256"]):
        folder = out if splits == {""} else out / HF_SPLIT_NAMES[split]
        name = _free_name(folder, os.path.basename(path), sha, names)
        _place(path, folder / name, mode)
        rec = {"file_name": name}
        rec.update({"labels": list(labels)} if ds.multi_label else {"label": labels[0] if labels else ""})
        groups.setdefault(str(folder), []).append(rec)
    for folder, recs in groups.items():
        meta = Path(folder) / "metadata.jsonl"
        atomic_write_text(meta, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in recs))
        written.append(meta)
    return written


# ---- Hugging Face datasets (save_to_disk) -------------------------------------------------------------------

def _datasets():
    try:
        import datasets
    except ImportError:
        raise DatasetError("reading or writing a Hugging Face datasets folder needs the datasets library: "
                           "pip install datasets") from None
    return datasets


def _quiet_datasets(datasets):
    """Turn the library's progress bars off; returns how to turn them back on."""
    try:
        from datasets.utils import tqdm as dtqdm

        was = dtqdm.are_progress_bars_disabled()
        dtqdm.disable_progress_bars()
        return (lambda: None) if was else dtqdm.enable_progress_bars
    except (ImportError, AttributeError):
        return lambda: None


def _class_names(feature) -> tuple[list[str] | None, bool]:
    """(ClassLabel names or None, whether the feature is a list of labels)."""
    inner = getattr(feature, "feature", None)
    if inner is not None and not hasattr(feature, "names"):  # List / Sequence
        return getattr(inner, "names", None), True
    return getattr(feature, "names", None), False


def read_hf_datasets(root: Path, on_error: str, images_dir: str | os.PathLike | None = None
                     ) -> tuple[Rows, list[Problem], bool, list[str] | None]:
    """Rows from a ``datasets`` ``save_to_disk`` folder; embedded images are written out once, by content."""
    datasets = _datasets()
    restore = _quiet_datasets(datasets)
    try:
        obj = datasets.load_from_disk(str(root))
    except Exception as e:  # the library's own errors: FileNotFoundError, pyarrow errors, ...
        raise DatasetError(f"{root}: not a readable datasets folder ({e})") from None
    finally:
        restore()
    parts = list(obj.items()) if hasattr(obj, "keys") else [("", obj)]
    store = Path(images_dir) if images_dir else cache_dir() / "hf-datasets-images"
    reader = _Reader(on_error)
    multi, classes = False, None
    for split_name, part in parts:
        split = HF_SPLITS.get(split_name.lower(), "") if split_name else ""
        if split_name and split_name.lower() not in HF_SPLITS:
            reader.problems.append(Problem(f"{root}: split {split_name}", "not train, validation or test: read "
                                                                          "as unassigned"))
        features = part.features
        image_col = next((k for k, f in features.items() if type(f).__name__ == "Image"), None)
        if image_col is None:
            raise DatasetError(f"{root}: no Image column (found {', '.join(features)})")
        label_col = next((k for k in ("label", "labels") if k in features), None) or next(
            (k for k, f in features.items() if _class_names(f)[0] is not None), None)
        if label_col is None:
            raise DatasetError(f"{root}: no label column (a ClassLabel, or a column named label or labels)")
        names, is_list = _class_names(features[label_col])
        multi = multi or is_list or label_col == "labels"
        if names is not None:
            classes = classes or list(names)
        table = part.with_format("arrow")
        for start in range(0, len(part), 256):
            batch = table[start:start + 256]
            images = batch.column(image_col).to_pylist()
            labels_col = batch.column(label_col).to_pylist()
            for j, (img, raw) in enumerate(zip(images, labels_col)):
                where = f"{root.name}[{split_name or 'dataset'}][{start + j}]"
                try:
                    path = _image_file(img, root, store)
                except DatasetError as e:
                    reader.fail(where, str(e))
                    continue
                values = raw if isinstance(raw, list) else [] if raw is None else [raw]
                labels = [names[v] if names is not None and isinstance(v, int) and 0 <= v < len(names) else str(v)
                          for v in values if not (isinstance(v, int) and v < 0)]  # -1: no label
                if not labels and not multi:
                    reader.fail(where, "no label")
                    continue
                reader.add(where, path, labels, split)
    return reader.rows, reader.problems, multi, classes


def _image_file(img: Any, root: Path, store: Path) -> str:
    if not isinstance(img, dict):
        raise DatasetError("no image")
    data, ref = img.get("bytes"), img.get("path")
    if data:
        sha = hashlib.sha256(data).hexdigest()
        ext = os.path.splitext(ref or "")[1].lower()
        if not is_image_name(f"x{ext}"):
            ext = _sniff_ext(data)
        target = store / sha[:2] / f"{sha}{ext}"
        if not target.is_file():
            with atomic_path(target) as tmp:
                tmp.write_bytes(data)
        return str(target)
    if ref:
        for c in (Path(ref), root / ref):
            if c.is_file():
                return str(c)
        raise DatasetError(f"image file not found: {ref}")
    raise DatasetError("no image (neither bytes nor a path)")


def _sniff_ext(data: bytes) -> str:
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as img:
            fmt = img.format or ""
    except Exception:
        return ".img"
    return {"JPEG": ".jpg", "PNG": ".png", "GIF": ".gif", "WEBP": ".webp", "BMP": ".bmp", "TIFF": ".tif"}.get(
        fmt, f".{fmt.lower()}" if fmt else ".img")


def write_hf_datasets(ds: Dataset, out: Path) -> list[Path]:
    """A ``save_to_disk`` folder: images embedded, labels as ``ClassLabel`` (a list of them when multi-label)."""
    datasets = _datasets()
    label = datasets.ClassLabel(names=list(ds.classes))
    column = "labels" if ds.multi_label else "label"
    features = datasets.Features({"image": datasets.Image(),
                                  column: datasets.Sequence(label) if ds.multi_label else label})
    index = {c: i for i, c in enumerate(ds.classes)}

    def part(table):
        values = [[index[x] for x in labels] if ds.multi_label else index[labels[0]] for labels in table["labels"]]
        return datasets.Dataset.from_dict({"image": list(table["path"]), column: values}, features=features)

    restore = _quiet_datasets(datasets)
    try:
        splits = set(ds.table["split"])
        if splits == {""}:
            part(ds.table).save_to_disk(str(out))
        else:
            order = [s for s in ("train", "val", "test", "") if s in splits]
            parts = {HF_SPLIT_NAMES[s] if s else "unassigned": part(ds.table[ds.table["split"] == s]) for s in order}
            datasets.DatasetDict(parts).save_to_disk(str(out))
    finally:
        restore()
    return [out]


# ---- class folders ----------------------------------------------------------------------------------------

def write_folders(ds: Dataset, out: Path, mode: str) -> list[Path]:
    """``OUT/<class>/`` (``OUT/<split>/<class>/`` when splits are set; ``all`` for rows without one)."""
    if ds.multi_label:
        raise ParameterError("format", "folders holds one label per image and this dataset is multi-label: use "
                                       "csv, labelstudio, imagefolder or hf-datasets")
    for c in ds.classes:
        if _safe_folder(c) != c:
            raise ParameterError("format", f"class {c!r} cannot be a folder name: use csv, labelstudio, "
                                           "imagefolder or hf-datasets")
    splits = set(ds.table["split"])
    clash = splits == {""} and any(c.lower() in FOLDER_SPLITS for c in ds.classes)
    names: dict[Path, set[str]] = {}
    for path, labels, split, sha in zip(ds.table["path"], ds.table["labels"], ds.table["split"], ds.table["sha256"]):
        if splits == {""}:
            folder = (out / "all" if clash else out) / labels[0]  # a class named like a split: under all/
        else:
            folder = out / (split or "all") / labels[0]
        _place(path, folder / _free_name(folder, os.path.basename(path), sha, names), mode)
    return [out]


def _safe_folder(name: str) -> str:
    cleaned = re.sub(r'[\x00-\x1f\x7f/\\]', "_", name)
    return "" if cleaned in (".", "..") or cleaned != cleaned.strip() or cleaned.startswith(".") else cleaned


# ---- export -----------------------------------------------------------------------------------------------

def export_dataset(ds: Dataset, out: str | os.PathLike, *, format: str | None = None, mode: str = "copy",
                   image_prefix: str | None = None) -> dict[str, Any]:
    """Write ``ds`` (a :class:`Dataset`: ``imclass.load_dataset(...)``) to ``out`` as ``format``: ``csv``,
    ``folders``, ``labelstudio``, ``imagefolder`` or ``hf-datasets`` (default: ``csv`` for a ``.csv`` path,
    ``labelstudio`` for ``.json``, else ``folders``).

    Folder formats need a new or empty ``out``; images are copied (``mode="link"``: symlinked; not for
    ``hf-datasets``, which embeds them). ``image_prefix`` (Label Studio): put before each image's path
    relative to the JSON, e.g. ``/data/local-files/?d=photos/`` for Label Studio's local storage.
    Returns ``{"format", "out", "images", "classes", "task", "splits", "files"}``.
    """
    if not isinstance(ds, Dataset):
        raise ParameterError("ds", "must be a Dataset: imclass.load_dataset(path) reads one")
    target = Path(out)
    fmt = format or {".csv": "csv", ".json": "labelstudio"}.get(target.suffix.lower(), "folders")
    if fmt not in FORMATS:
        raise ParameterError("format", f"must be one of {', '.join(FORMATS)}")
    if mode not in ("copy", "link"):
        raise ParameterError("mode", "must be copy or link")
    if fmt == "hf-datasets" and mode == "link":
        raise ParameterError("mode", "hf-datasets embeds the images: use copy")
    if fmt in ("csv", "labelstudio"):
        if target.is_dir():
            raise ParameterError("out", f"is a folder ({target}); {fmt} writes one file")
        files = [ds.to_csv(target)] if fmt == "csv" else write_labelstudio(ds, target, image_prefix)
    else:
        if target.is_file() or (target.is_dir() and any(target.iterdir())):
            raise ParameterError("out", f"must be a new or empty folder ({target} is not)")
        if fmt == "hf-datasets":
            files = write_hf_datasets(ds, target)
        else:
            target.mkdir(parents=True, exist_ok=True)
            files = write_folders(ds, target, mode) if fmt == "folders" else write_imagefolder(ds, target, mode)
    summary = ds.summary()
    return {"format": fmt, "out": str(target), "images": len(ds), "classes": list(ds.classes), "task": ds.task,
            "splits": summary["splits"], "files": [str(f) for f in files]}


# ---- helpers ----------------------------------------------------------------------------------------------

def _relative(path: str, base: Path) -> str:
    try:
        return Path(os.path.relpath(path, base.resolve())).as_posix()
    except ValueError:  # another drive
        return Path(path).as_posix()


def _free_name(folder: Path, name: str, sha: str | None, names: dict[Path, set[str]]) -> str:
    """``name``, or ``stem-<hash>.ext`` when another image of ``folder`` has it already."""
    taken = names.setdefault(folder, set())
    candidate = name
    n = 0
    while candidate.lower() in taken:
        n += 1
        stem, ext = os.path.splitext(name)
        tag = (sha or "")[:8 + n] if sha and n < 8 else str(n)
        candidate = f"{stem}-{tag}{ext}"
    taken.add(candidate.lower())
    return candidate


def _place(src: str, dst: Path, mode: str) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if mode == "link":
        os.symlink(os.path.abspath(src), dst)
        return
    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)


__all__ = ["FORMATS", "export_dataset", "folder_kind", "read_hf_datasets", "read_imagefolder", "read_labelstudio"]
