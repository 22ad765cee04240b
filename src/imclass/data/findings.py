"""What an audit found (:class:`AuditResult`, plain data) and its one-line summaries (terminal and report)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

#: Per-file findings a user may act on (``clean --drop`` names them with dashes).
FILE_FINDINGS = ("corrupt", "non_images", "wrong_extension", "tiny", "odd_aspect", "exact_duplicates",
                 "near_duplicates", "conflicts", "leaks", "label_issues", "outliers")


@dataclass
class AuditResult:
    """Findings as plain lists and dicts (JSON-able through :meth:`to_dict`); paths are absolute."""

    dataset: dict[str, Any]
    thresholds: dict[str, Any]
    corrupt: list[dict[str, Any]] = field(default_factory=list)  # path, reason (unreadable, truncated...)
    non_images: list[dict[str, Any]] = field(default_factory=list)  # path, reason
    wrong_extension: list[dict[str, Any]] = field(default_factory=list)  # path, extension, format
    tiny: list[dict[str, Any]] = field(default_factory=list)  # path, width, height
    odd_aspect: list[dict[str, Any]] = field(default_factory=list)  # path, width, height, aspect
    colour: dict[str, Any] = field(default_factory=dict)  # grey, colour, minority, files
    exact_duplicates: list[dict[str, Any]] = field(default_factory=list)  # sha256, paths, labels, splits
    # verified near-duplicate groups: paths, labels, splits, certainty ("duplicate"), representative, evidence
    near_duplicates: list[dict[str, Any]] = field(default_factory=list)
    # the same where the evidence is weak (tiny, low-detail images): listed for review, not counted as found
    possible_duplicates: list[dict[str, Any]] = field(default_factory=list)
    duplicate_search: dict[str, Any] = field(default_factory=dict)  # candidates, screened, verified, marks
    conflicts: list[dict[str, Any]] = field(default_factory=list)  # kind, paths, labels
    leaks: list[dict[str, Any]] = field(default_factory=list)  # kind, paths, splits
    class_counts: dict[str, int] = field(default_factory=dict)
    imbalance_ratio: float | None = None  # largest / smallest class (None: a class is empty)
    split_coverage: dict[str, Any] = field(default_factory=dict)  # counts per split, classes missing
    label_issues: list[dict[str, Any]] = field(default_factory=list)  # path, given, suggested, quality, ...
    label_check: dict[str, Any] = field(default_factory=dict)  # probe, folds, accuracy, checked
    outliers: list[dict[str, Any]] = field(default_factory=list)  # path, score, labels
    outlier_scores: list[float | None] = field(default_factory=list)  # every row's score (for the histogram)
    notes: list[str] = field(default_factory=list)  # checks skipped, and why
    seconds: dict[str, float] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)  # what was written: report, json

    def counts(self) -> dict[str, int]:
        """Number of findings per check (groups for duplicates, conflicts and leaks)."""
        return {
            "corrupt": len(self.corrupt), "non_images": len(self.non_images),
            "wrong_extension": len(self.wrong_extension), "tiny": len(self.tiny), "odd_aspect": len(self.odd_aspect),
            "grey_colour_minority": len(self.colour.get("files", [])),
            "exact_duplicate_groups": len(self.exact_duplicates),
            "exact_duplicate_extra_files": sum(len(g["paths"]) - 1 for g in self.exact_duplicates),
            "near_duplicate_groups": len(self.near_duplicates),
            "possible_duplicate_groups": len(self.possible_duplicates), "conflicts": len(self.conflicts),
            "leaks": len(self.leaks), "label_issues": len(self.label_issues), "outliers": len(self.outliers),
        }

    @property
    def unreadable(self) -> int:
        """Files that could not be used at all (corrupt or not images)."""
        return len(self.corrupt) + len(self.non_images)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("files", None)
        d["counts"] = self.counts()
        return d


def summary_lines(res: AuditResult) -> list[tuple[str, int, str]]:
    """(check, count, detail) rows for a terminal or HTML summary."""
    c = res.counts()
    th = res.thresholds
    lc = res.label_check
    colour = res.colour
    rows = [
        ("unreadable / corrupt / truncated", c["corrupt"], "decoded in full with the safe loader"),
        ("not images", c["non_images"], ""),
        ("wrong extension", c["wrong_extension"], "detected format differs from the extension"),
        ("tiny images", c["tiny"], f"shorter side < {th['min_side']} px"),
        ("odd aspect ratio", c["odd_aspect"], f"long/short side > {th['max_aspect']:g}"),
        ("grey/colour mix", c["grey_colour_minority"],
         f"{colour.get('grey', 0)} grey, {colour.get('colour', 0)} colour (from pixels)"),
        ("exact duplicate groups", c["exact_duplicate_groups"], f"{c['exact_duplicate_extra_files']} extra copies"),
        ("near-duplicate groups", c["near_duplicate_groups"],
         "the same photo re-encoded, resized, cropped or mirrored: keypoints and pixels verified"),
        ("possible duplicates", c["possible_duplicate_groups"],
         "weaker evidence (small or low-detail images): for review, not counted as found"),
        ("duplicates with conflicting labels", c["conflicts"], ""),
        ("duplicates across splits (leaks)", c["leaks"], ""),
        ("likely label errors", c["label_issues"],
         f"probe accuracy {lc['accuracy']:.1%} ({lc['folds']}-fold)"
         if lc.get("accuracy") is not None else "not checked"),
        ("outliers", c["outliers"], f"kNN distance > {th['outlier_threshold']:.3f}"
         if th.get("outlier_threshold") is not None else "not checked"),
    ]
    return rows


def split_overview(res: AuditResult) -> str:
    """One line: images per split and classes missing from a split."""
    cov = res.split_coverage
    if not cov.get("counts"):
        return "no splits assigned"
    parts = [f"{s}: {sum(v.values())}" for s, v in cov["counts"].items()]
    for s, missing in cov.get("missing", {}).items():
        parts.append(f"{s} lacks {', '.join(missing[:5])}{'...' if len(missing) > 5 else ''}")
    return "; ".join(parts)

