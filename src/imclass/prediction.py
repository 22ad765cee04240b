"""Typed prediction results and the logits -> labels step shared by every backend."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .models.spec import UNKNOWN_LABEL, ModelSpec
from .numerics import sigmoid, softmax


@dataclass
class Prediction:
    """One image's result. ``error`` is set (and ``label`` is None) when the image could not be read.

    ``label`` is the top class, ``unknown`` when the model rejects the image, or, for multi-label
    models, the labels above their thresholds joined by ``;`` (possibly empty). Hierarchy models
    (``spec.hierarchy``) put ``label_path`` in ``extra``: the chosen node and its ancestors, root first, as
    ``{"label": name, "score": summed probability}``; ``label`` is then the chosen node's path (``sports/dance``).
    """

    path: str
    label: str | None = None
    score: float | None = None
    topk: list[tuple[str, float]] = field(default_factory=list)
    labels: list[str] | None = None  # multi-label: every label above its threshold
    error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # more columns for the outputs, e.g. class_index, wnid

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "path": self.path,
            "label": self.label,
            "score": None if self.score is None else round(float(self.score), 6),
            "error": self.error,
            "topk": [{"label": lab, "score": round(float(s), 6)} for lab, s in self.topk],
        }
        if self.labels is not None:
            d["labels"] = self.labels
        d.update(self.extra)
        return d


def calibrated(logits: np.ndarray, temperature: float | None, multi_label: bool) -> np.ndarray:
    """Temperature scaling, then softmax (single-label) or sigmoid (multi-label)."""
    z = logits.astype(np.float64)
    if temperature:
        z = z / temperature
    return sigmoid(z) if multi_label else softmax(z)


def split_outputs(raw: np.ndarray, spec: ModelSpec) -> tuple[np.ndarray, np.ndarray | None]:
    """A network's output -> ``(logits, known_score)``: models with an open-set score
    (:mod:`imclass.models.open_set`) carry it as their last column; others have none (None)."""
    raw = np.asarray(raw)
    if spec.open_set and raw.ndim == 2 and raw.shape[1] == spec.num_classes + 1:
        return raw[:, :-1], raw[:, -1].astype(np.float64)
    return raw, None


def known_scores(probs: np.ndarray, known: np.ndarray | None, spec: ModelSpec) -> np.ndarray | None:
    """What ``unknown_threshold`` is compared with: the open-set score, or (single-label models without one)
    the top calibrated probability; None for multi-label models without one."""
    if known is not None:
        return known
    if spec.task == "multi_label" or probs.shape[0] == 0:
        return None if spec.task == "multi_label" else np.zeros(0)
    return probs.max(axis=1)


def probabilities(logits: np.ndarray, spec: ModelSpec) -> np.ndarray:
    """Calibrated probabilities of a model: its temperature and task."""
    return calibrated(logits, spec.temperature, spec.task == "multi_label")


def decide(probs: np.ndarray, paths: list[str], spec: ModelSpec, top_k: int,
           reject_unknown: bool = True, known: np.ndarray | None = None) -> list[Prediction]:
    """Turn a probability matrix (and the open-set ``known`` scores, when the model has them) into
    :class:`Prediction` rows. Rows carry ``known_score`` in ``extra`` when the model can say ``unknown``."""
    k = max(1, min(top_k, probs.shape[1]))
    order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    out = []
    labels = spec.labels
    ks = known_scores(probs, known, spec)
    threshold = spec.unknown_threshold
    carry = ks is not None and (known is not None or threshold is not None)
    if spec.hierarchy and spec.task == "single_label":
        tree = LabelTree(labels)
        # the unknown rule at each level: on probabilities the model's threshold applies to every level's summed
        # score; with an open-set score (another scale) that score decides unknown, and a child must be more
        # likely than not (LEVEL_THRESHOLD) to be chosen over its parent
        level = None if not reject_unknown else threshold if known is None else LEVEL_THRESHOLD
        first = known is None
    for i, path in enumerate(paths):
        row = probs[i]
        top = [(labels[j], float(row[j])) for j in order[i]]
        rejected = reject_unknown and threshold is not None and ks is not None and ks[i] < threshold
        if spec.task == "multi_label":
            thr = np.asarray(spec.label_thresholds or [0.5] * len(labels))
            chosen = [labels[j] for j in np.argsort(-row, kind="stable") if row[j] >= thr[j]]
            score = float(max((row[labels.index(c)] for c in chosen), default=top[0][1]))
            pred = (Prediction(path, UNKNOWN_LABEL, score, top, labels=[]) if rejected
                    else Prediction(path, ";".join(chosen), score, top, labels=chosen))
        elif spec.hierarchy:
            # the unknown rule runs at each level (below); the open-set score, when there is one, rejects as before
            rejected = rejected and known is not None
            node, nodes = tree.descend(row, level, top_level=first)
            score = tree.score(row, node) if node else top[0][1]
            pred = Prediction(path, UNKNOWN_LABEL if rejected or not node else node, score, top)
            pred.extra["label_path"] = [] if rejected else nodes
        else:
            label, score = top[0]
            pred = Prediction(path, UNKNOWN_LABEL if rejected else label, score, top)
        if carry:
            pred.extra["known_score"] = round(float(ks[i]), 6)
        out.append(pred)
    return out


#: With an open-set score, a child is chosen over its parent only when it is more likely than not.
LEVEL_THRESHOLD = 0.5


class LabelTree:
    """The tree of a hierarchy model's labels (paths such as ``sports/dance/ballet``; a node may be a class itself
    and have children). A node's score is the sum of the probabilities of the classes at or under it."""

    def __init__(self, labels: list[str]):
        self.children: dict[str, list[str]] = {"": []}
        self.under: dict[str, list[int]] = {}  # node -> indices of the classes at or under it
        self.own: dict[str, int] = {}  # node -> its own class index, when the node is a class
        for j, lab in enumerate(labels):
            parts = lab.split("/")
            parent = ""
            for d in range(1, len(parts) + 1):
                node = "/".join(parts[:d])
                if node not in self.under:
                    self.under[node] = []
                    self.children.setdefault(node, [])
                    self.children[parent].append(node)
                self.under[node].append(j)
                parent = node
            self.own[lab] = j

    def score(self, row: np.ndarray, node: str) -> float:
        return float(row[self.under[node]].sum())

    def descend(self, row: np.ndarray, threshold: float | None = None,
                top_level: bool = True) -> tuple[str, list[dict[str, Any]]]:
        """From the root, into the best-scoring child, down to a leaf (or a class node whose own probability beats
        every child's score); with ``threshold``, stop at the deepest node scoring at least that (the parent when
        the child is unsure; ``top_level=False``: not to the top level itself). ``(node, path)``: ``node`` is ``""``
        when even the best top-level node is below it."""
        node, path = "", []
        while self.children[node]:
            scores = [self.score(row, c) for c in self.children[node]]
            best = int(np.argmax(scores))
            if node in self.own and float(row[self.own[node]]) >= scores[best]:
                break
            if threshold is not None and scores[best] < threshold and (top_level or node):
                break
            node = self.children[node][best]
            path.append({"label": node.rsplit("/", 1)[-1], "score": round(scores[best], 6)})
        return node, path
