"""The logits -> labels step (``probabilities`` / ``decide``) shared by every backend."""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import pytest

from imclass.models.spec import UNKNOWN_LABEL, ModelSpec
from imclass.prediction import Prediction, decide, probabilities, sigmoid, softmax
from imclass.preprocess import Preprocess

LABELS = ["cat", "dog", "owl", "fox"]
LOGITS = np.array([
    [4.0, 1.0, 0.5, -1.0],   # confident cat
    [0.3, 0.2, 0.1, 0.25],   # nearly uniform: top score ~0.27
    [-2.0, 3.0, 2.9, 0.0],   # dog, owl close behind
], dtype=np.float32)
PATHS = ["a.jpg", "b.jpg", "c.jpg"]


def spec(**kw) -> ModelSpec:
    base = ModelSpec(architecture={"family": "timm", "name": "test_efficientnet", "kwargs": {}},
                     labels=list(LABELS), preprocess=Preprocess())
    return dataclasses.replace(base, **kw)


# ---- probabilities --------------------------------------------------------------------------------

def test_single_label_probabilities_are_softmax():
    p = probabilities(LOGITS, spec())
    assert p.shape == LOGITS.shape
    np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=1e-12)
    np.testing.assert_allclose(p, softmax(LOGITS.astype(np.float64)))


def test_multi_label_probabilities_are_independent_sigmoids():
    p = probabilities(LOGITS, spec(task="multi_label"))
    np.testing.assert_allclose(p, sigmoid(LOGITS.astype(np.float64)))
    assert not np.allclose(p.sum(axis=1), 1.0)


@pytest.mark.parametrize("task", ["single_label", "multi_label"])
@pytest.mark.parametrize("temperature", [0.5, 2.0, 10.0])
def test_temperature_changes_scores_not_the_argmax(task, temperature):
    plain = probabilities(LOGITS, spec(task=task))
    scaled = probabilities(LOGITS, spec(task=task, temperature=temperature))
    assert not np.allclose(plain, scaled)
    np.testing.assert_array_equal(plain.argmax(axis=1), scaled.argmax(axis=1))
    # the full ranking is kept too, not only the top class
    np.testing.assert_array_equal(np.argsort(-plain, axis=1), np.argsort(-scaled, axis=1))
    # T > 1 flattens (top score drops), T < 1 sharpens (top score rises)
    if temperature > 1:
        assert (scaled.max(axis=1) < plain.max(axis=1)).all()
    else:
        assert (scaled.max(axis=1) > plain.max(axis=1)).all()
    np.testing.assert_allclose(scaled, probabilities(LOGITS / temperature, spec(task=task)), rtol=1e-6)


def test_temperature_none_and_one_are_identity():
    np.testing.assert_allclose(probabilities(LOGITS, spec(temperature=None)),
                               probabilities(LOGITS, spec(temperature=1.0)))


def test_extreme_logits_stay_finite_without_warnings():
    big = np.array([[1000.0, -1000.0, 0.0, 999.0]], dtype=np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no overflow RuntimeWarning either
        for task in ("single_label", "multi_label"):
            p = probabilities(big, spec(task=task))
            assert np.isfinite(p).all() and ((p >= 0) & (p <= 1)).all()
        np.testing.assert_allclose(probabilities(big, spec(task="multi_label")), [[1.0, 0.0, 0.5, 1.0]])
        np.testing.assert_allclose(sigmoid(np.array([-3.0, 0.0, 3.0])), 1 / (1 + np.exp([3.0, 0.0, -3.0])))


# ---- decide: single label -------------------------------------------------------------------------

def test_decide_single_label_rows():
    s = spec()
    preds = decide(probabilities(LOGITS, s), PATHS, s, top_k=3)
    assert [p.path for p in preds] == PATHS
    assert [p.label for p in preds] == ["cat", "cat", "dog"]
    for p in preds:
        assert isinstance(p, Prediction) and p.ok and p.labels is None
        assert len(p.topk) == 3
        assert p.topk[0] == (p.label, p.score)
        scores = [sc for _, sc in p.topk]
        assert scores == sorted(scores, reverse=True)
    assert [lab for lab, _ in preds[2].topk] == ["dog", "owl", "fox"]


def test_unknown_threshold_rejects_low_confidence_only():
    s = spec(unknown_threshold=0.5)
    probs = probabilities(LOGITS, s)
    preds = decide(probs, PATHS, s, top_k=2)
    top = probs.max(axis=1)
    assert top[0] >= 0.5 > top[1]  # the fixture rows straddle the threshold
    assert preds[0].label == "cat"
    assert preds[1].label == UNKNOWN_LABEL
    # the score and the top-k still report what the model thought
    assert preds[1].score == pytest.approx(top[1])
    assert preds[1].topk[0][0] == "cat"


def test_unknown_threshold_ignored_without_reject_unknown():
    s = spec(unknown_threshold=0.99)
    preds = decide(probabilities(LOGITS, s), PATHS, s, top_k=2, reject_unknown=False)
    assert UNKNOWN_LABEL not in [p.label for p in preds]
    assert [p.label for p in preds] == ["cat", "cat", "dog"]
    # and with rejection on, everything below 0.99 becomes unknown
    assert {p.label for p in decide(probabilities(LOGITS, s), PATHS, s, top_k=2)} == {UNKNOWN_LABEL}


def test_score_exactly_at_the_unknown_threshold_is_kept():
    s = spec()
    probs = probabilities(LOGITS, s)
    s = spec(unknown_threshold=float(probs[0].max()))
    assert decide(probs[:1], PATHS[:1], s, top_k=1)[0].label == "cat"


@pytest.mark.parametrize("top_k,expected", [(1, 1), (4, 4), (5, 4), (1000, 4), (0, 1)])
def test_top_k_clipped_to_number_of_classes(top_k, expected):
    for task in ("single_label", "multi_label"):
        s = spec(task=task)
        preds = decide(probabilities(LOGITS, s), PATHS, s, top_k=top_k)
        assert all(len(p.topk) == expected for p in preds)
        if expected == len(LABELS):
            assert all(sorted(lab for lab, _ in p.topk) == sorted(LABELS) for p in preds)


def test_prediction_to_dict_is_json_friendly():
    import json

    s = spec()
    d = decide(probabilities(LOGITS, s), PATHS, s, top_k=2)[0].to_dict()
    assert json.loads(json.dumps(d)) == d
    assert d["label"] == "cat" and d["error"] is None and len(d["topk"]) == 2
    assert "labels" not in d


# ---- decide: multi label --------------------------------------------------------------------------

def multi(thresholds):
    s = spec(task="multi_label", label_thresholds=thresholds)
    probs = np.array([
        [0.9, 0.1, 0.2, 0.3],   # cat only
        [0.2, 0.1, 0.3, 0.1],   # nothing
        [0.1, 0.8, 0.95, 0.6],  # owl, dog, fox
    ])
    return decide(probs, PATHS, s, top_k=4)


def test_multi_label_zero_one_or_several_labels():
    preds = multi([0.5, 0.5, 0.5, 0.5])
    assert preds[0].labels == ["cat"] and preds[0].label == "cat"
    assert preds[0].score == pytest.approx(0.9)
    assert preds[1].labels == [] and preds[1].label == ""
    # several: ordered by probability, joined by ';'
    assert preds[2].labels == ["owl", "dog", "fox"]
    assert preds[2].label == "owl;dog;fox"
    assert preds[2].score == pytest.approx(0.95)
    assert preds[2].to_dict()["labels"] == ["owl", "dog", "fox"]
    # the top-k is the ranking regardless of thresholds
    assert [lab for lab, _ in preds[1].topk] == ["owl", "cat", "dog", "fox"]


def test_multi_label_per_label_thresholds():
    preds = multi([0.95, 0.85, 0.25, 0.7])  # strict cat/dog/fox, lenient owl
    assert preds[0].labels == []            # cat 0.9 < 0.95, owl 0.2 < 0.25
    assert preds[1].labels == ["owl"]       # 0.3 >= 0.25
    assert preds[2].labels == ["owl"]      # dog 0.8 < 0.85, fox 0.6 < 0.7
    assert multi([0.9, 0.9, 0.9, 0.9])[0].labels == ["cat"]  # >= is inclusive


def test_multi_label_default_threshold_is_one_half():
    assert [p.labels for p in multi(None)] == [p.labels for p in multi([0.5] * 4)]


def test_multi_label_ignores_unknown_threshold():
    s = spec(task="multi_label", unknown_threshold=0.99)
    preds = decide(np.array([[0.9, 0.1, 0.2, 0.3]]), PATHS[:1], s, top_k=2)
    assert preds[0].label == "cat"
