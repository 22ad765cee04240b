"""Download images from a list of URLs into a folder: ``imclass data download`` and :func:`download`.

The list is a CSV/TSV with a ``url`` column and optionally ``label`` (files go to ``OUT/<label>/``), ``labels``
(multi-label; files stay flat), ``split`` and ``filename``, or a plain text file with one URL per line.

Every URL ends as one row of ``OUT/manifest.csv`` (``url, path, sha256, label, split, status, error``; status
``ok``, ``duplicate`` (same content as a file already kept: ``path`` names it) or ``error``):

- downloads run concurrently, at most ``per_host`` at once to one host and ``delay`` seconds apart there;
  429 and 5xx answers (and dropped connections) are retried with exponential backoff, honouring
  ``Retry-After``; each attempt has a connect timeout and a *deadline* for the whole file (a body that drips a
  byte a second is cut when it passes), a maximum size, only ``http``/``https``, at most ``max_redirects``
  hops (loops detected); ``X-Robots-Tag: noindex``/``noimageindex`` is respected;
- every body goes through the one image loader (:func:`imclass.images.load_image`) before it is kept: HTML
  pages, truncated files, decompression bombs and other non-images become error rows;
- files are named by their content hash (or by a sanitised ``filename``), written atomically; identical
  content is stored once (the first URL listed with it is ``ok``, the others ``duplicate``);
- resumable and kill -9 safe: each file is written, then its manifest row appended and flushed; a rerun fetches
  only URLs without a kept file (failed ones again) and rewrites the manifest with one row per URL at the end;
- ``private_ok=False`` (a server fetching for its users) refuses private, loopback and link-local addresses
  unless their ``host:port`` is in ``allow_hosts``; the check is made on the resolved address, in the transport,
  for every hop (:mod:`imclass.data.fetch_safety`);
- credentials in URLs (``https://user:pass@host/...``) are sent but never written: the manifest, the rows and
  the messages show ``https://***@host/...``.

With a label column, ``OUT/dataset.csv`` (``filename,label[s][,split]``, one row per kept file) re-imports with
:func:`~imclass.data.load_dataset`.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
import random
import re
import threading
import time
import unicodedata
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import faults
from ..errors import ImageLoadError, ParameterError
from ..fileio import atomic_path
from ..images import is_image_name, load_image
from ..version import __version__
from .dataset import DatasetError

MANIFEST = "manifest.csv"
DATASET_CSV = "dataset.csv"
MANIFEST_COLUMNS = ("url", "path", "sha256", "label", "split", "status", "error")
STATUSES = ("ok", "duplicate", "error")
SPLITS = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val", "dev": "val",
          "test": "test", "testing": "test", "": ""}
REDIRECTS = frozenset({301, 302, 303, 307, 308})
NOT_RETRIED_5XX = frozenset({501, 505})
EXTENSIONS = {"JPEG": ".jpg", "MPO": ".jpg", "PNG": ".png", "GIF": ".gif", "WEBP": ".webp", "BMP": ".bmp",
              "DIB": ".bmp", "TIFF": ".tif", "ICO": ".ico", "PPM": ".ppm", "TGA": ".tga", "JPEG2000": ".jp2"}
MAX_NAME_BYTES = 150
_ATOMIC_TMP = re.compile(r"^\..+\.\d+-\d+\.tmp$")  # fileio.atomic_path's temporary names


# ---- input ----------------------------------------------------------------------------------------------

@dataclass
class _Item:
    url: str  # as given (may hold credentials: never written)
    shown: str  # redacted: what the manifest and messages show
    labels: list[str] | None  # None: the list has no label column
    split: str
    filename: str | None
    problem: str | None = None  # an input problem: an error row without a request


def redact(url: str) -> str:
    """``url`` without the user name and password of its authority (``https://***@host/...``)."""
    return re.sub(r"^([A-Za-z][A-Za-z0-9+.\-]*://)[^/?#]*@", r"\1***@", url.strip())


def _scrub(text: str, url: str) -> str:
    """``text`` without the URL's user-info (``user:password``) or password, should a message quote them."""
    m = re.match(r"^[A-Za-z][A-Za-z0-9+.\-]*://([^/?#]*)@", url.strip())
    if m:
        userinfo = m.group(1)
        password = userinfo.split(":", 1)[1] if ":" in userinfo else ""
        for secret in (userinfo, password):
            if len(secret) >= 4:
                text = text.replace(secret, "***")
    return text


def safe_name(name: str) -> str:
    """A file or folder name that stays where it is put: no path separators, no ``..``, no control characters,
    no leading dot, at most 150 bytes (the extension kept). ``""`` when nothing usable is left."""
    name = unicodedata.normalize("NFC", str(name)).strip()
    parts = [p for p in re.split(r"[/\\]+", name) if p.strip(". ")]  # path components; no "." or ".." ones
    name = re.sub(r'[\x00-\x1f\x7f:*?"<>|]', "_", "_".join(parts))
    while ".." in name:
        name = name.replace("..", ".")
    name = name.strip(". ")
    if len(name.encode("utf-8")) > MAX_NAME_BYTES:
        stem, ext = os.path.splitext(name)
        ext = ext if len(ext.encode("utf-8")) <= 16 else ""
        budget = MAX_NAME_BYTES - len(ext.encode("utf-8"))
        stem = stem.encode("utf-8")[:budget].decode("utf-8", "ignore").rstrip(". ")
        name = stem + ext
    return name


def read_url_list(source: str | os.PathLike | Iterable[Any]) -> tuple[list[dict[str, str]], str | None]:
    """Records ``{url[, label | labels][, split][, filename]}`` and the label column's kind (``label``,
    ``labels`` or ``None``) from a CSV/TSV, a text file (one URL a line; ``#`` comments) or a list of URLs or
    dicts."""
    if isinstance(source, (str, os.PathLike)) and not (isinstance(source, str) and "://" in source):
        return _read_url_file(Path(source))
    if isinstance(source, str):
        source = [source]
    records = []
    for x in source:
        if isinstance(x, dict):
            records.append({str(k).strip().lower(): "" if v is None else v for k, v in x.items()})
        else:
            records.append({"url": str(x)})
    keys = set().union(*records) if records else set()
    return records, "label" if "label" in keys else "labels" if "labels" in keys else None


def _read_url_file(path: Path) -> tuple[list[dict[str, str]], str | None]:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise DatasetError(f"{path}: no such file") from None
    except UnicodeDecodeError:
        raise DatasetError(f"{path}: not a UTF-8 text file (expected a CSV with a url column, or one URL a line)"
                           ) from None
    except OSError as e:
        raise DatasetError(f"{path}: cannot read ({e.strerror or e})") from None
    first = next((line for line in text.splitlines() if line.strip()), "")
    if path.suffix.lower() == ".tsv":
        delimiter = "\t"
    else:
        delimiter = next((d for d in ("\t", ",", ";") if d in first), ",")
    header = [c.strip().lower() for c in next(csv.reader([first], delimiter=delimiter), [])]
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    if "url" not in header:
        if path.suffix.lower() in (".csv", ".tsv"):
            raise DatasetError(f"{path}: no url column (found {', '.join(header) or 'nothing'})")
        return [{"url": u} for u in lines], None
    if len(header) == 1:  # a lone url column: each line is one URL, commas and all
        return [{"url": u.strip('"')} for u in lines[1:]], None
    reader = csv.DictReader(io.StringIO(text), delimiter=delimiter)
    records = []
    for rec in reader:
        row = {str(k).strip().lower(): (v or "").strip() if isinstance(v, str) else "" for k, v in rec.items()
               if k is not None}
        if any(row.values()):
            records.append(row)
    return records, "label" if "label" in header else "labels" if "labels" in header else None


def _items(records: list[dict[str, Any]], kind: str | None) -> tuple[list[_Item], int]:
    """One item per distinct URL (later repeats are counted, not fetched twice)."""
    items, seen, repeated = [], set(), 0
    for rec in records:
        url = str(rec.get("url") or "").strip()
        shown = redact(url)
        if url and shown in seen:
            repeated += 1
            continue
        seen.add(shown)
        problem = None if url else "empty URL"
        labels: list[str] | None = None
        if kind == "label":
            label = str(rec.get("label") or "").strip()
            labels = [label] if label else []
            if not label:
                problem = problem or "empty label"
            elif not safe_name(label):
                problem = problem or f"label {label!r} cannot name a folder"
        elif kind == "labels":
            value = rec.get("labels")
            if isinstance(value, (list, tuple)):
                labels = [str(v).strip() for v in value if str(v).strip()]
            else:
                cell = str(value or "").strip()
                sep = next((s for s in (";", ",", "|") if s in cell), None)
                labels = [t.strip() for t in (cell.split(sep) if sep else cell.split()) if t.strip()]
        raw_split = str(rec.get("split") or "").strip().lower()
        split = SPLITS.get(raw_split)
        if split is None:
            problem = problem or f"unknown split {raw_split!r} (use train, val or test)"
            split = ""
        filename = str(rec.get("filename") or "").strip() or None
        if filename is not None and not safe_name(filename):
            problem = problem or f"filename {filename!r} is not a usable file name"
        items.append(_Item(url, shown, labels, split, filename, problem))
    return items, repeated


# ---- result ---------------------------------------------------------------------------------------------

@dataclass
class DownloadResult:
    """What a download run left in ``out``: ``rows`` (one per URL, in list order, as in the manifest) and counts.

    ``counts``: ``urls`` (distinct), ``files`` (rows ``ok``), ``duplicates``, ``failed``; of this run: ``fetched``
    (URLs tried), ``skipped`` (kept by an earlier run), ``new_files``, ``repeated`` (list lines naming a URL
    again). ``timings``: seconds summed over the files of this run (``fetch``, ``verify``, ``write``).
    """

    out: Path
    manifest: Path
    dataset_csv: Path | None
    rows: list[dict[str, str]]
    counts: dict[str, int]
    bytes: int = 0
    seconds: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def failed(self) -> list[dict[str, str]]:
        return [r for r in self.rows if r["status"] == "error"]

    def to_dict(self) -> dict[str, Any]:
        return {"out": str(self.out), "manifest": str(self.manifest),
                "dataset_csv": str(self.dataset_csv) if self.dataset_csv else None, "counts": dict(self.counts),
                "bytes": self.bytes, "seconds": round(self.seconds, 3),
                "timings": {k: round(v, 3) for k, v in self.timings.items()}, "rows": list(self.rows)}


class _Failure(Exception):
    def __init__(self, reason: str, *, retryable: bool = False, retry_after: float | None = None):
        super().__init__(reason)
        self.reason = reason
        self.retryable = retryable
        self.retry_after = retry_after


# ---- politeness -----------------------------------------------------------------------------------------

class _HostGate:
    """At most ``per_host`` requests at once to one host, their starts at least ``delay`` seconds apart."""

    def __init__(self, per_host: int, delay: float):
        self.per_host, self.delay = per_host, delay
        self._lock = threading.Lock()
        self._slots: dict[str, threading.Semaphore] = {}
        self._next: dict[str, float] = {}

    @contextmanager
    def __call__(self, host: str) -> Iterator[None]:
        with self._lock:
            slot = self._slots.setdefault(host, threading.Semaphore(self.per_host))
        with slot:
            with self._lock:
                now = time.monotonic()
                start = max(now, self._next.get(host, now))
                self._next[host] = start + self.delay
            if start > now:
                time.sleep(start - now)
            yield


def _retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header (a number of seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        from email.utils import parsedate_to_datetime

        when = parsedate_to_datetime(value)
        return max(0.0, when.timestamp() - time.time())
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


def _robots_refusal(values: Sequence[str]) -> str | None:
    """``X-Robots-Tag`` values that ask not to index images (``noindex``, ``noimageindex``, ``none``), for all
    robots or for imclass; rules for other named robots are left to them."""
    for value in values:
        scope, rules = None, value
        m = re.match(r"^\s*([A-Za-z][\w-]*)\s*:\s*(.*)$", value)
        if m and m.group(1).lower() not in ("unavailable_after", "max-snippet", "max-image-preview",
                                             "max-video-preview"):
            scope, rules = m.group(1).lower(), m.group(2)
        if scope not in (None, "imclass"):
            continue
        words = {w.strip().lower() for w in rules.split(",")}
        hit = words & {"noindex", "noimageindex", "none"}
        if hit:
            return f"X-Robots-Tag: {sorted(hit)[0]} (the site asks not to index this image)"
    return None


def _megabytes(n: int) -> str:
    return f"{n / 1e6:g} MB"


# ---- the run --------------------------------------------------------------------------------------------

class _Run:
    def __init__(self, out: Path, items: list[_Item], kind: str | None, opts: dict[str, Any], progress):
        from . import fetch_safety

        self.out, self.items, self.kind, self.o, self.progress = out, items, kind, opts, progress
        self.policy = fetch_safety.AddressPolicy.make(opts["private_ok"], opts["allow_hosts"])
        self.client = fetch_safety.client(
            self.policy, connect_timeout=opts["connect_timeout"], read_timeout=opts["read_timeout"],
            max_connections=max(opts["parallel"], 1) * 2,
            user_agent=opts["user_agent"] or f"imclass/{__version__} (dataset download)")
        self.gate = _HostGate(opts["per_host"], opts["delay"])
        self.lock = threading.Lock()
        self.by_sha: dict[str, str] = {}  # content -> kept file (relative path)
        self.taken: dict[str, str] = {}  # kept file -> content
        self.timings = {"fetch": 0.0, "verify": 0.0, "write": 0.0}
        self.nbytes = 0
        self.new_files = 0
        self._manifest_fh: Any = None

    # -- resume --
    def previous(self) -> dict[str, dict[str, str]]:
        """The manifest's last row per URL (a row cut by kill -9 is ignored)."""
        rows: dict[str, dict[str, str]] = {}
        path = self.out / MANIFEST
        if not path.is_file():
            return rows
        with open(path, newline="", encoding="utf-8") as f:
            for rec in csv.DictReader(f):
                if rec.get("status") not in STATUSES or any(rec.get(c) is None for c in MANIFEST_COLUMNS):
                    continue
                rows[rec["url"]] = {c: rec[c] for c in MANIFEST_COLUMNS}
        return rows

    def done(self, row: dict[str, str] | None) -> bool:
        return bool(row) and row["status"] in ("ok", "duplicate") and bool(row["path"]) \
            and (self.out / row["path"]).is_file()

    def clean_temporaries(self) -> None:
        for p in self.out.rglob(".*.tmp"):
            if _ATOMIC_TMP.match(p.name) and p.is_file():
                p.unlink(missing_ok=True)

    # -- manifest --
    def open_manifest(self) -> None:
        path = self.out / MANIFEST
        fresh = not path.is_file() or path.stat().st_size == 0
        if not fresh:
            with open(path, "rb") as f:
                f.seek(-1, os.SEEK_END)
                ends = f.read(1) == b"\n"
        self._manifest_fh = open(path, "a", newline="", encoding="utf-8")  # noqa: SIM115 (closed by close())
        if fresh:
            self._write_line(MANIFEST_COLUMNS)
        elif not ends:  # a row cut by kill -9: end it, so the next one starts on its own line
            self._manifest_fh.write("\n")
            self._manifest_fh.flush()

    def _write_line(self, values: Sequence[str]) -> None:
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerow(values)
        self._manifest_fh.write(buf.getvalue())  # one line, one write, then flushed
        self._manifest_fh.flush()

    def close(self) -> None:
        if self._manifest_fh is not None:
            self._manifest_fh.close()
            self._manifest_fh = None
        if self.client is not None:
            self.client.close()
            self.client = None

    # -- one URL --
    def row(self, item: _Item, *, path: str = "", sha: str = "", status: str, error: str = "") -> dict[str, str]:
        label = ";".join(item.labels) if item.labels else ""
        return {"url": item.shown, "path": path, "sha256": sha, "label": label, "split": item.split,
                "status": status, "error": _scrub(error, item.url)}

    def process(self, item: _Item) -> tuple[dict[str, str], int]:
        if item.problem:
            row = self.row(item, status="error", error=item.problem)
            self.record(row)
            return row, 0
        t0 = time.perf_counter()
        try:
            data, ctype = self.fetch(item)
        except _Failure as f:
            row = self.row(item, status="error", error=f.reason)
            self.record(row)
            return row, 0
        t1 = time.perf_counter()
        try:
            ext = self.verify(data, ctype)
        except _Failure as f:
            row = self.row(item, status="error", error=f.reason)
            self.record(row)
            self.add_time(t0, t1, time.perf_counter(), None)
            return row, len(data)
        t2 = time.perf_counter()
        sha = hashlib.sha256(data).hexdigest()
        with self.lock:
            kept = self.by_sha.get(sha)
            if kept is not None and (self.out / kept).is_file():
                row = self.row(item, path=kept, sha=sha, status="duplicate")
            else:
                rel = self.place(item, sha, ext)
                with atomic_path(self.out / rel) as tmp:
                    tmp.write_bytes(data)
                self.by_sha[sha], self.taken[rel] = rel, sha
                self.new_files += 1
                row = self.row(item, path=rel, sha=sha, status="ok")
                faults.checkpoint("download.saved")  # the file is kept, its row not yet written
            self.record(row, locked=True)
        self.add_time(t0, t1, t2, time.perf_counter())
        faults.checkpoint("download.row")
        return row, len(data)

    def add_time(self, t0: float, t1: float, t2: float, t3: float | None) -> None:
        with self.lock:
            self.timings["fetch"] += t1 - t0
            self.timings["verify"] += t2 - t1
            if t3 is not None:
                self.timings["write"] += t3 - t2

    def record(self, row: dict[str, str], locked: bool = False) -> None:
        if locked:
            self._write_line([row[c] for c in MANIFEST_COLUMNS])
            return
        with self.lock:
            self._write_line([row[c] for c in MANIFEST_COLUMNS])

    def place(self, item: _Item, sha: str, ext: str) -> str:
        """The kept file's path relative to ``out`` (called under the lock)."""
        folder = safe_name(item.labels[0]) if self.kind == "label" and item.labels else ""
        if item.filename:
            name = safe_name(item.filename)
            if not is_image_name(name):
                name += ext
        else:
            name = sha + ext
        for extra in (0, 12, 64):
            if extra:
                stem, suffix = os.path.splitext(name)
                candidate = f"{stem}-{sha[:extra]}{suffix}"
            else:
                candidate = name
            rel = f"{folder}/{candidate}" if folder else candidate
            owner = self.taken.get(rel)
            if owner is None and (self.out / rel).is_file():  # left by an interrupted run, or the user's own
                owner = hashlib.sha256((self.out / rel).read_bytes()).hexdigest()
            if owner is None or owner == sha:
                return rel
        raise _Failure("no free file name")  # unreachable: the last candidate holds the whole hash

    def fetch(self, item: _Item) -> tuple[bytes, str]:
        import httpx

        try:
            host = (httpx.URL(item.url).host or "").lower()
        except (httpx.InvalidURL, ValueError, TypeError):
            host = ""
        attempt = 0
        while True:
            try:
                with self.gate(host):
                    return self.fetch_once(item.url)
            except _Failure as f:
                if not f.retryable or attempt >= self.o["retries"]:
                    if attempt:
                        f.reason += f" (after {attempt + 1} attempts)"
                    raise
                wait_s = f.retry_after
                if wait_s is None:
                    wait_s = self.o["backoff"] * 2 ** attempt * (1 + random.random() / 4)
                elif wait_s > self.o["max_retry_wait"]:
                    f.reason += f"; Retry-After {wait_s:.0f} s exceeds the {self.o['max_retry_wait']:g} s limit"
                    raise
                time.sleep(min(wait_s, self.o["max_retry_wait"]))
                attempt += 1

    def fetch_once(self, url: str) -> tuple[bytes, str]:
        import httpx

        from . import fetch_safety

        seen: set[str] = set()
        current = url
        ends = time.monotonic() + self.o["deadline"]
        try:
            with fetch_safety.deadline(self.o["deadline"]):
                for _hop in range(self.o["max_redirects"] + 1):
                    try:
                        u = httpx.URL(current)
                    except (httpx.InvalidURL, ValueError, TypeError) as e:
                        raise _Failure(f"invalid URL: {e}") from None
                    if u.scheme not in ("http", "https"):
                        raise _Failure(f"only http and https URLs are fetched, not {u.scheme or 'a relative URL'}")
                    if not u.host:
                        raise _Failure("invalid URL: no host")
                    key = str(u.copy_with(fragment=None))
                    if key in seen:
                        raise _Failure("redirect loop")
                    seen.add(key)
                    with self.client.stream("GET", u) as resp:
                        if resp.status_code in REDIRECTS and "location" in resp.headers:
                            try:
                                current = str(u.join(resp.headers["location"]))
                            except (httpx.InvalidURL, ValueError) as e:
                                raise _Failure(f"invalid redirect location: {e}") from None
                            continue
                        self.check(resp)
                        return self.body(resp), resp.headers.get("content-type", "")
                raise _Failure(f"too many redirects (more than {self.o['max_redirects']})")
        except fetch_safety.DeadlineExceeded:
            raise _Failure(f"deadline exceeded: the file took more than {self.o['deadline']:g} s") from None
        except fetch_safety.RefusedAddress as e:
            raise _Failure(str(e)) from None
        except httpx.TimeoutException as e:
            if time.monotonic() >= ends - 0.05:  # a socket timeout cut to the deadline's last moments
                raise _Failure(f"deadline exceeded: the file took more than {self.o['deadline']:g} s") from None
            kind = {httpx.ConnectTimeout: "connect", httpx.ReadTimeout: "read"}.get(type(e), "")
            raise _Failure(f"timed out{' (' + kind + ')' if kind else ''}", retryable=True) from None
        except httpx.TransportError as e:
            raise _Failure(f"connection failed: {e or type(e).__name__}", retryable=True) from None
        except (httpx.HTTPError, ValueError, UnicodeError) as e:  # undecodable body, a host IDNA refuses, ...
            raise _Failure(f"request failed: {e or type(e).__name__}") from None

    def check(self, resp) -> None:
        code = resp.status_code
        if code in (408, 429) or (500 <= code < 600 and code not in NOT_RETRIED_5XX):
            raise _Failure(f"HTTP {code}", retryable=True, retry_after=_retry_after(resp.headers.get("retry-after")))
        if code not in (200, 203):
            raise _Failure(f"HTTP {code} {resp.reason_phrase}".strip())
        if self.o["respect_robots"]:
            refusal = _robots_refusal(resp.headers.get_list("x-robots-tag"))
            if refusal:
                raise _Failure(refusal)
        length = resp.headers.get("content-length", "").strip()
        if length.isdigit() and int(length) > self.o["max_bytes"]:
            raise _Failure(f"too large: {_megabytes(int(length))}, over the {_megabytes(self.o['max_bytes'])} limit")

    def body(self, resp) -> bytes:
        chunks, n = [], 0
        for chunk in resp.iter_bytes():
            n += len(chunk)
            if n > self.o["max_bytes"]:
                raise _Failure(f"too large: over the {_megabytes(self.o['max_bytes'])} limit")
            chunks.append(chunk)
        return b"".join(chunks)

    def verify(self, data: bytes, ctype: str) -> str:
        """The file's extension once the one loader has decoded it; else a failure saying why."""
        from PIL import Image

        try:
            load_image(data, max_pixels=self.o["max_pixels"])
        except ImageLoadError as e:
            said = ctype.split(";")[0].strip().lower()
            hint = f" (served as {said})" if said and not said.startswith("image/") else ""
            raise _Failure(f"not a usable image: {e.reason}{hint}") from None
        try:
            with Image.open(io.BytesIO(data)) as img:
                fmt = img.format or ""
        except Exception:
            fmt = ""
        return EXTENSIONS.get(fmt, f".{fmt.lower()}" if fmt else ".img")


def download(
    urls: str | os.PathLike | Iterable[Any],
    out: str | os.PathLike,
    *,
    parallel: int = 16,
    per_host: int = 4,
    delay: float = 0.25,
    retries: int = 3,
    backoff: float = 1.0,
    max_retry_wait: float = 60.0,
    connect_timeout: float = 10.0,
    read_timeout: float = 30.0,
    deadline: float = 120.0,
    max_bytes: int = 50_000_000,
    max_redirects: int = 5,
    max_pixels: int | None = None,
    private_ok: bool = True,
    allow_hosts: Iterable[str] | None = None,
    respect_robots: bool = True,
    user_agent: str | None = None,
    progress: Callable[[int, int, int], None] | None = None,
) -> DownloadResult:
    """Download the images ``urls`` names into the folder ``out`` (see the module docstring).

    ``urls``: a CSV/TSV (``url`` column; optional ``label``, ``labels``, ``split``, ``filename``), a text file
    of URLs, or a list of URLs or dicts with those keys. ``parallel``: downloads at once; ``per_host``: at once
    to one host, whose request starts are ``delay`` seconds apart. ``retries`` (429, 5xx, dropped connections)
    wait ``backoff * 2**n`` seconds or the server's ``Retry-After`` (at most ``max_retry_wait``).
    ``deadline``: seconds one attempt may take in all (connect, redirects, body); ``max_bytes``: largest file.
    ``private_ok=False`` (servers): refuse private, loopback and link-local addresses except the exact
    ``host:port`` entries of ``allow_hosts``. ``progress(done, total, bytes)`` is called after each URL.

    Returns a :class:`DownloadResult`; every URL has a row (``ok``, ``duplicate`` or ``error``).
    """
    checks = [("parallel", parallel >= 1, "must be >= 1"), ("per_host", per_host >= 1, "must be >= 1"),
              ("delay", delay >= 0, "must be >= 0"), ("retries", retries >= 0, "must be >= 0"),
              ("backoff", backoff >= 0, "must be >= 0"), ("max_retry_wait", max_retry_wait >= 0, "must be >= 0"),
              ("connect_timeout", connect_timeout > 0, "must be > 0"), ("read_timeout", read_timeout > 0,
                                                                         "must be > 0"),
              ("deadline", deadline > 0, "must be > 0"), ("max_bytes", max_bytes >= 1, "must be >= 1"),
              ("max_redirects", max_redirects >= 0, "must be >= 0")]
    for name, ok, problem in checks:
        if not ok:
            raise ParameterError(name, problem)
    if allow_hosts is not None and isinstance(allow_hosts, str):
        allow_hosts = [allow_hosts]
    for h in allow_hosts or ():
        if not re.match(r"^(\[[0-9A-Fa-f:.]+\]|[^:\[\]/\s]+):\d+$", h.strip()):
            raise ParameterError("allow_hosts", f"entries are exact host:port ({h!r} is not)")
    start = time.perf_counter()
    records, kind = read_url_list(urls)
    items, repeated = _items(records, kind)
    target = Path(out)
    if target.exists() and not target.is_dir():
        raise ParameterError("out", f"is a file ({target}); give a folder")
    target.mkdir(parents=True, exist_ok=True)
    opts = dict(parallel=parallel, per_host=per_host, delay=delay, retries=retries, backoff=backoff,
                max_retry_wait=max_retry_wait, connect_timeout=connect_timeout, read_timeout=read_timeout,
                deadline=deadline, max_bytes=int(max_bytes), max_redirects=max_redirects, max_pixels=max_pixels,
                private_ok=private_ok, allow_hosts=list(allow_hosts or ()), respect_robots=respect_robots,
                user_agent=user_agent)
    run = _Run(target, items, kind, opts, progress)
    try:
        return _execute(run, repeated, start)
    finally:
        run.close()


def _execute(run: _Run, repeated: int, start: float) -> DownloadResult:
    previous = run.previous()
    run.clean_temporaries()
    for row in previous.values():
        if run.done(row):
            run.by_sha.setdefault(row["sha256"], row["path"])
            run.taken[row["path"]] = row["sha256"]
    results: dict[str, dict[str, str]] = {}
    todo = []
    for item in run.items:
        old = previous.get(item.shown)
        if run.done(old):
            results[item.shown] = old  # type: ignore[assignment]
        else:
            todo.append(item)
    skipped = len(run.items) - len(todo)
    total, done = len(run.items), skipped
    if run.progress is not None:
        run.progress(done, total, 0)
    run.open_manifest()
    with ThreadPoolExecutor(max_workers=run.o["parallel"], thread_name_prefix="imclass-download") as pool:
        pending: set = set()
        window = run.o["parallel"] * 4  # bounded: a list of millions of URLs keeps memory flat
        try:
            for item in _interleave_hosts(todo):
                pending.add(pool.submit(run.process, item))
                if len(pending) < window:
                    continue
                finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                done = _collect(run, finished, results, done, total)
            while pending:
                finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                done = _collect(run, finished, results, done, total)
        except BaseException:  # Ctrl-C, a full disk: what is queued is not started; rows written so far stay
            for fut in pending:
                fut.cancel()
            raise
    rows = [results[item.shown] for item in run.items]
    listed = {item.shown for item in run.items}
    kept_before = [r for url, r in previous.items() if url not in listed]  # from earlier lists: kept as they were
    _first_is_kept(rows + kept_before)
    manifest = run.out / MANIFEST
    run.close()
    with atomic_path(manifest) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=MANIFEST_COLUMNS, lineterminator="\n")
        w.writeheader()
        w.writerows(rows + kept_before)
    dataset_csv = _write_dataset_csv(run, rows) if run.kind else None
    counts = {
        "urls": len(rows),
        "files": sum(r["status"] == "ok" for r in rows),
        "duplicates": sum(r["status"] == "duplicate" for r in rows),
        "failed": sum(r["status"] == "error" for r in rows),
        "fetched": len(rows) - skipped,
        "skipped": skipped,
        "new_files": run.new_files,
        "repeated": repeated,
    }
    return DownloadResult(run.out, manifest, dataset_csv, rows, counts, run.nbytes, time.perf_counter() - start,
                          dict(run.timings))


def _first_is_kept(rows: list[dict[str, str]]) -> None:
    """Of the URLs that gave one content, the first listed is ``ok`` and the others ``duplicate`` (downloads
    finish in any order; the file itself is stored once whichever came first)."""
    first: dict[str, int] = {}
    for i, r in enumerate(rows):
        if r["status"] in ("ok", "duplicate") and r["sha256"]:
            first.setdefault(r["sha256"], i)
    for i, r in enumerate(rows):
        if r["status"] in ("ok", "duplicate") and r["sha256"]:
            r["status"] = "ok" if first[r["sha256"]] == i else "duplicate"


def _collect(run: _Run, finished, results: dict, done: int, total: int) -> int:
    for fut in finished:
        row, n = fut.result()
        results[row["url"]] = row
        run.nbytes += n
        done += 1
        if run.progress is not None:
            run.progress(done, total, run.nbytes)
    return done


def _interleave_hosts(items: list[_Item]) -> list[_Item]:
    """Round-robin over hosts, so that the per-host limit of one busy host does not hold up the others."""
    by_host: dict[str, list[_Item]] = {}
    for it in items:
        m = re.match(r"^[A-Za-z][A-Za-z0-9+.\-]*://(?:[^/?#]*@)?([^/?#:]*)", it.url)
        by_host.setdefault((m.group(1) if m else "").lower(), []).append(it)
    if len(by_host) <= 1:
        return items
    lists = list(by_host.values())
    out = []
    for i in range(max(len(x) for x in lists)):
        out.extend(x[i] for x in lists if i < len(x))
    return out


def _write_dataset_csv(run: _Run, rows: list[dict[str, str]]) -> Path:
    """``filename,label[s][,split]`` for the kept files (one row per file), re-importable as a dataset."""
    column = "label" if run.kind == "label" else "labels"
    with_split = any(r["split"] for r in rows)
    path = run.out / DATASET_CSV
    seen = set()
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["filename", column, *(["split"] if with_split else [])])
        for r in rows:
            if r["status"] != "ok" or r["path"] in seen:
                continue
            seen.add(r["path"])
            w.writerow([r["path"], r["label"], *([r["split"]] if with_split else [])])
    return path
