"""Is this pair the same photo? Evidence that survives a shared background and same-class look-alikes.

A candidate pair (from perceptual hashes or embedding neighbours) is decided in two steps:

1. **Keypoints**: ORB keypoints of both images (and of the second one mirrored), matched with Lowe's
   ratio test, then a RANSAC fit of a similarity transform (rotation, uniform scale, shift:
   ``cv2.estimateAffinePartial2D``). Copies (re-encoded, resized, cropped a little, mirrored) keep
   dozens to hundreds of consistent matches; different photos keep a handful.
2. **Pixels after alignment**: the second image is warped onto the first with that transform and both
   are compared cell by cell (a 6 x 6 grid over the overlap, blurred to the coarser of the two
   resolutions): the mean absolute difference of each cell relative to the cells' contrast, and the
   correlation of each textured cell. A copy agrees in every cell; two photos from one fixed camera
   share the background, so they keep many keypoint matches, but disagree in the cells where the
   objects differ. The *worst* cell decides.
3. **Overlap**: a copy cropped a little lies (almost) wholly inside the other image. Two overlapping
   views (successive frames, adjacent tiles of one surface) share pixels over only part of the image:
   a ``possible`` duplicate, listed for review.

When the keypoints are too few to fit a transform (tiny or low-detail images, uniform textures), the
pixels are compared after a small search over mirror, crop and shift (template matching), and a match
there is only ever a ``possible`` duplicate: the evidence is weaker.

Measured on real photos (``bench/duplicates.py``; the thresholds below sit between the populations):
copies of varied photos keep 8-292 inliers (median 168), a worst-cell difference <= 0.17 and a lowest
cell correlation >= 0.63 (5th percentile 0.88); different objects pasted on one background keep up to
216 inliers but their worst cell differs by >= 0.59 and correlates at <= 0.46; different photos of one
class keep <= 8 inliers.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

#: Bump when a rule or threshold changes: cached verdicts of another version are not reused.
VERSION = "verify-v6"
#: Longest side of the grey working copy of each image.
WORK_SIDE = 256
#: Images are upscaled to at least this longest side before keypoint detection (small images have too few).
DETECT_SIDE = 200
#: Consistent keypoint matches needed to trust a transform.
MIN_INLIERS = 15
#: Worst-cell difference at or below which aligned images agree everywhere (copies <= 0.19 measured).
CELL_MAX = 0.35
#: The stricter bound for the pixel-only fallback (no keypoint transform to back it).
CELL_MAX_FALLBACK = 0.25
#: Pixels alone (no keypoint transform) make a duplicate only when every cell agrees this closely and has
#: texture (a copy too small or too smooth for keypoints: e.g. a 128 px flower at half size, mirrored, gives
#: 0.014 / 0.999); otherwise at most a possible duplicate.
CELL_MAX_PIXELS_ONLY = 0.1
MIN_CORRELATION_PIXELS_ONLY = 0.95
#: A pixel has changed when the aligned images differ by more than this (0-255, after blurring and matching
#: brightness and contrast); the changed share is measured after an opening that drops thin edge slivers.
CHANGE_LEVEL = 20.0
#: Largest changed share of a duplicate: copies measured <= 0.0014, different objects pasted on one
#: background (a fifth of its width) >= 0.017.
MAX_CHANGED = 0.005
#: Lowest correlation of a textured cell after alignment (copies >= 0.63, different objects <= 0.46).
MIN_CELL_CORRELATION = 0.55
#: A cell is textured (its correlation means something) when both sides vary by more than this.
TEXTURE_STD = 4.0
#: Images whose shorter side is below this are too small for a confident answer: at most "possible".
MIN_SIDE_CONFIDENT = 48
#: Share of the smaller image inside the overlap: a copy cropped a little lies wholly inside the other
#: (~1.0); from MIN_OVERLAP to FULL_OVERLAP the two only overlap (adjacent tiles, successive frames).
FULL_OVERLAP = 0.8
MIN_OVERLAP = 0.5
GRID = 6

Loader = Callable[[int], "np.ndarray | None"]  # row -> grey uint8 image (None when unreadable)


@dataclass
class Verdict:
    """The decision on one pair, with its evidence."""

    decision: str  # "duplicate" | "possible" | "different"
    method: str  # "keypoints+pixels" | "pixels" | "thumbnails" (screened out) | "none"
    inliers: int = 0  # consistent keypoint matches
    worst_cell: float | None = None  # largest cell difference after alignment (lower = more alike)
    min_correlation: float | None = None  # lowest correlation of a textured cell after alignment
    changed: float | None = None  # share of the overlap in a compact region that differs
    mirrored: bool = False
    scale: float | None = None  # size of the second image relative to the first
    overlap: float | None = None  # share of the smaller image inside the overlap
    prescreen: float | None = None  # method "thumbnails": the thumbnails' best correlation (below the screen)

    @property
    def value(self) -> float:
        """The headline number of the evidence: inliers (keypoints) or the worst-cell difference (pixels)."""
        return float(self.inliers) if self.method == "keypoints+pixels" else float(self.worst_cell or 0.0)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["value"] = self.value
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Verdict:
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


def working_image(img) -> np.ndarray:
    """A PIL image -> the grey ``uint8`` working copy (longest side at most :data:`WORK_SIDE`)."""
    from PIL import Image

    g = img.convert("L")
    if max(g.size) > WORK_SIDE:
        g.thumbnail((WORK_SIDE, WORK_SIDE), Image.Resampling.BILINEAR)
    return np.asarray(g, dtype=np.uint8)


class PairVerifier:
    """Decides pairs of rows; each row's working image and keypoints are computed once (thread-safe).

    ``uses`` (row -> number of pairs it is in), when given, lets a row's features be dropped after its last
    pair; at most ``keep`` rows are held at once (the least recently used go first, recomputed if needed), so
    memory stays bounded (~100 KB a row) whatever the number of rows.
    """

    def __init__(self, load: Loader, uses: dict[int, int] | None = None, keep: int = 1024):
        import cv2

        self._cv2 = cv2
        self._load = load
        self._keep = keep
        self._features: OrderedDict[int, Any] = OrderedDict()
        self._uses = dict(uses) if uses is not None else None
        self._lock = threading.Lock()

    # ---- per image -----------------------------------------------------------------------------------
    def _feat(self, row: int):
        with self._lock:
            if row in self._features:
                self._features.move_to_end(row)
                return self._features[row]
        g = self._load(row)
        f = None if g is None else (g, _keypoints(self._cv2, g), _keypoints(self._cv2, g[:, ::-1].copy()))
        with self._lock:
            self._features[row] = f
            while len(self._features) > self._keep:
                self._features.popitem(last=False)
        return f

    def forget(self, rows) -> None:
        """Drop cached features (memory stays bounded when rows are visited in order)."""
        with self._lock:
            for r in rows:
                self._features.pop(r, None)

    # ---- per pair ------------------------------------------------------------------------------------
    def verify(self, a: int, b: int) -> Verdict:
        fa, fb = self._feat(a), self._feat(b)
        try:
            if fa is None or fb is None:
                return Verdict("different", "none")
            return decide(self._cv2, fa, fb)
        finally:
            self._done(a, b)

    def _done(self, *rows: int) -> None:
        if self._uses is None:
            return
        with self._lock:
            for r in rows:
                self._uses[r] = self._uses.get(r, 1) - 1
                if self._uses[r] <= 0:
                    self._features.pop(r, None)


def decide(cv2, fa, fb) -> Verdict:
    """The verdict for two images' features ``(grey, keypoints, mirrored keypoints)``."""
    ga, gb = fa[0], fb[0]
    confident = min(ga.shape) >= MIN_SIDE_CONFIDENT and min(gb.shape) >= MIN_SIDE_CONFIDENT
    best = (0, None, False)
    for mirrored in (False, True):
        n, m = _match(cv2, fa[1], fb[2] if mirrored else fb[1])
        if n > best[0]:
            best = (n, m, mirrored)
    inliers, transform, mirrored = best
    if inliers >= MIN_INLIERS and transform is not None and _plausible(transform):
        g = gb[:, ::-1] if mirrored else gb
        agree, overlap = compare_aligned(cv2, ga, g, transform)
        scale = float(np.sqrt(abs(np.linalg.det(transform[:, :2]))))
        v = _verdict("keypoints+pixels", inliers, agree, mirrored, 1 / scale, overlap)
        if agree.holds(CELL_MAX) and overlap >= MIN_OVERLAP:
            v.decision = "duplicate" if confident and overlap >= FULL_OVERLAP else "possible"
        return v
    agree, overlap, mirrored, scale = _fallback(cv2, ga, gb)
    v = _verdict("pixels", inliers, agree, mirrored, scale, overlap)
    if agree.holds(CELL_MAX_FALLBACK) and agree.corr is not None and overlap >= MIN_OVERLAP:
        # pixels alone, and only with some texture to compare (featureless images prove nothing): a
        # duplicate only when they agree closely in every textured cell of a big enough image
        strong = (agree.worst <= CELL_MAX_PIXELS_ONLY and agree.corr is not None
                  and agree.corr >= MIN_CORRELATION_PIXELS_ONLY)
        v.decision = "duplicate" if strong and confident else "possible"
    return v


def _verdict(method: str, inliers: int, agree: Agreement, mirrored: bool, scale: float | None,
             overlap: float) -> Verdict:
    return Verdict("different", method, inliers, _round(agree.worst), _round(agree.corr), _round(agree.changed),
                   mirrored, _round(scale), _round(overlap))


def _round(x: float | None) -> float | None:
    return None if x is None else round(float(x), 4)


# ---- keypoints -------------------------------------------------------------------------------------------

def _keypoints(cv2, g: np.ndarray):
    f = max(1.0, DETECT_SIDE / max(g.shape))
    big = cv2.resize(g, None, fx=f, fy=f, interpolation=cv2.INTER_LINEAR) if f > 1 else g
    orb = cv2.ORB_create(nfeatures=500, fastThreshold=10, edgeThreshold=15, patchSize=15)
    kp, des = orb.detectAndCompute(big, None)
    pts = np.float32([k.pt for k in kp]) / f if kp else np.zeros((0, 2), np.float32)
    return pts, des


def _match(cv2, fa, fb) -> tuple[int, np.ndarray | None]:
    """Inliers of a RANSAC similarity fit ``b -> a`` over ratio-tested matches, and the transform."""
    (pa, da), (pb, db) = fa, fb
    if da is None or db is None or len(da) < 5 or len(db) < 5:
        return 0, None
    pairs = cv2.BFMatcher(cv2.NORM_HAMMING).knnMatch(da, db, k=2)
    good = [m[0] for m in pairs if len(m) == 2 and m[0].distance < 0.8 * m[1].distance]
    if len(good) < 5:
        return len(good), None
    src = pb[[m.trainIdx for m in good]]
    dst = pa[[m.queryIdx for m in good]]
    transform, mask = cv2.estimateAffinePartial2D(src, dst, method=cv2.RANSAC, ransacReprojThreshold=3.0,
                                                  maxIters=2000, confidence=0.99)
    if transform is None or mask is None:
        return 0, None
    return int(mask.sum()), transform


def _plausible(m: np.ndarray) -> bool:
    """A copy is at most mildly rotated and not wildly rescaled."""
    scale = np.sqrt(abs(np.linalg.det(m[:, :2])))
    angle = np.degrees(np.arctan2(m[1, 0], m[0, 0]))
    return 0.2 <= scale <= 5.0 and abs(angle) <= 20.0


# ---- pixels ----------------------------------------------------------------------------------------------

@dataclass
class Agreement:
    """How two aligned images agree: the worst cell's difference, the lowest textured-cell correlation and
    the share of the overlap that changed (a compact region of different content)."""

    worst: float | None
    corr: float | None
    changed: float

    def holds(self, cell_max: float) -> bool:
        return (self.worst is not None and self.worst <= cell_max and self.changed <= MAX_CHANGED
                and (self.corr is None or self.corr >= MIN_CELL_CORRELATION))


def compare_aligned(cv2, ga: np.ndarray, gb: np.ndarray, transform: np.ndarray) -> tuple[Agreement, float]:
    """Warp ``gb`` onto ``ga``: how they agree, and the overlap's share of the smaller image."""
    h, w = ga.shape
    gb = np.ascontiguousarray(gb)
    warped = cv2.warpAffine(gb.astype(np.float32), transform, (w, h), flags=cv2.INTER_LINEAR)
    inside = cv2.warpAffine(np.ones(gb.shape, np.uint8), transform, (w, h), flags=cv2.INTER_NEAREST)
    scale = float(np.sqrt(abs(np.linalg.det(transform[:, :2]))))  # b pixels -> a pixels
    overlap = float(inside.sum()) / min(ga.size, gb.size * scale * scale)
    inside = cv2.erode(inside, np.ones((5, 5), np.uint8)) > 0
    a = cv2.GaussianBlur(ga.astype(np.float32), (0, 0), max(1.5, scale))  # to the coarser resolution
    b = cv2.GaussianBlur(warped, (0, 0), 1.5)
    return pixel_agreement(cv2, a, b, inside), min(1.0, overlap)


def pixel_agreement(cv2, a: np.ndarray, b: np.ndarray, inside: np.ndarray) -> Agreement:
    """Compare two aligned, blurred float images where ``inside``; brightness and contrast of ``b`` are first
    matched to ``a`` over that region (a lightly edited copy is still a copy)."""
    if inside.sum() < 16:
        return Agreement(None, None, 1.0)
    xa, xb = a[inside], b[inside]
    gain = (xa.std() + 1e-3) / (xb.std() + 1e-3)
    b = (b - xb.mean()) * min(max(gain, 0.5), 2.0) + xa.mean()
    worst, corr = worst_cell(a, b, inside)
    diff = (np.abs(a - b) > CHANGE_LEVEL) & inside
    diff = cv2.morphologyEx(diff.astype(np.uint8), cv2.MORPH_OPEN, np.ones((5, 5), np.uint8))
    return Agreement(worst, corr, float(diff.sum()) / float(inside.sum()))


def worst_cell(a: np.ndarray, b: np.ndarray, inside: np.ndarray) -> tuple[float | None, float | None]:
    """Over a :data:`GRID` x :data:`GRID` grid (cells at least half inside): the largest cell difference
    (mean absolute difference of the cells' structure, their own mean removed, over their contrast: a brighter
    copy, clipped in its highlights, still agrees) and the lowest correlation of a textured cell. Differences
    of level are the changed-area measure's job."""
    h, w = a.shape
    worst = corr = None
    for i in range(GRID):
        for j in range(GRID):
            cell = (slice(i * h // GRID, (i + 1) * h // GRID), slice(j * w // GRID, (j + 1) * w // GRID))
            m = inside[cell]
            if m.size == 0 or m.mean() < 0.5:
                continue
            x, y = a[cell][m], b[cell][m]
            sx, sy = float(x.std()), float(y.std())
            d = float(np.abs((x - x.mean()) - (y - y.mean())).mean() / (sx + sy + 8.0))  # structure, not level
            worst = d if worst is None else max(worst, d)
            if sx > TEXTURE_STD and sy > TEXTURE_STD:
                c = float(((x - x.mean()) * (y - y.mean())).mean() / (sx * sy))
                corr = c if corr is None else min(corr, c)
    return worst, corr


def _fallback(cv2, ga: np.ndarray, gb: np.ndarray) -> tuple[Agreement, float, bool, float | None]:
    """Pixels compared after a small search over mirror, crop (80-100%) and shift: for images whose
    keypoints cannot fit a transform. Returns (worst cell, overlap, mirrored, width of b / width of a)."""
    side = 96
    big, small = (ga, gb) if ga.size >= gb.size else (gb, ga)
    fb = side / max(big.shape)
    big_s = cv2.resize(big, None, fx=fb, fy=fb, interpolation=cv2.INTER_AREA).astype(np.float32)
    best: tuple[float, Any] = (-2.0, None)
    for mirrored in (False, True):
        s = small[:, ::-1] if mirrored else small
        for crop in (1.0, 0.95, 0.9, 0.85, 0.8):
            # the small image shows `crop` of the big one: at the big image's scale it is crop * big's size
            f = crop * big_s.shape[1] / s.shape[1]
            tw, th = max(8, round(s.shape[1] * f)), max(8, round(s.shape[0] * f))
            if tw > big_s.shape[1] or th > big_s.shape[0]:
                continue
            t = cv2.resize(s, (tw, th), interpolation=cv2.INTER_AREA).astype(np.float32)
            res = cv2.matchTemplate(big_s, t, cv2.TM_CCOEFF_NORMED)
            _, score, _, (x, y) = cv2.minMaxLoc(res)
            if score > best[0]:
                best = (score, (mirrored, crop, x, y, t))
    if best[1] is None:
        return Agreement(None, None, 1.0), 0.0, False, None
    mirrored, crop, x, y, t = best[1]
    th, tw = t.shape
    region = cv2.GaussianBlur(big_s[y:y + th, x:x + tw], (0, 0), 1.0)
    agree = pixel_agreement(cv2, region, cv2.GaussianBlur(t, (0, 0), 1.0), np.ones(t.shape, bool))
    return agree, 1.0, mirrored, gb.shape[1] / ga.shape[1]
