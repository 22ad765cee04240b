"""The batch pipeline: decode threads, batches, concurrent inference, input order, error rows."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from imclass.engine.pipeline import default_batch_size, map_arrays, run_batches
from imclass.errors import ImageLoadError
from imclass.prediction import Prediction


def decode(item: int) -> np.ndarray:
    if item == 3:
        raise ImageLoadError(f"item {item}", "corrupt image: made up")
    return np.full((2, 2, 3), item, np.uint8)


def test_concurrent_inference_runs_batches_side_by_side_and_keeps_input_order():
    barrier = threading.Barrier(2, timeout=10)  # fails unless two batches are inferred at the same time
    calls: list[int] = []

    def infer(batch: np.ndarray, names: list[str]) -> list[Prediction]:
        first = int(batch[0, 0, 0, 0])
        calls.append(first)
        if first < 8:  # only the first two batches meet, and the first one finishes last
            barrier.wait()
            if first == 0:
                time.sleep(0.2)
        return [Prediction(n, label=str(int(b[0, 0, 0]))) for n, b in zip(names, batch)]

    batches = list(run_batches(range(10), decode=decode, infer=infer, name_of=str, batch_size=4,
                               workers=2, infer_workers=2))
    assert [len(b) for b in batches] == [4, 4, 2]
    rows = [p for b in batches for p in b]
    assert [p.path for p in rows] == [str(i) for i in range(10)]
    assert [p.label for p in rows if p.error is None] == [str(i) for i in range(10) if i != 3]
    assert rows[3].error == "corrupt image: made up" and rows[3].label is None
    assert sorted(calls) == [0, 4, 8]


def test_an_inference_error_reaches_the_caller():
    def infer(batch, names):
        raise RuntimeError("model broke")

    with pytest.raises(RuntimeError, match="model broke"):
        list(run_batches(range(10), decode=decode, infer=infer, name_of=str, batch_size=2, infer_workers=2))


def test_map_arrays_with_concurrent_inference_matches_one_at_a_time():
    def fn(batch):
        time.sleep(0.01 * (batch[0, 0, 0, 0] % 3))  # finish out of order
        return batch.reshape(len(batch), -1)[:, :2].astype(np.float32)

    seen: list[list[int]] = []
    one, err1 = map_arrays(list(range(20)), fn, decode=decode, batch_size=3, infer_workers=1)
    two, err2 = map_arrays(list(range(20)), fn, decode=decode, batch_size=3, infer_workers=3,
                           on_batch=lambda done, rows, size: seen.append(done))
    np.testing.assert_array_equal(one, two)
    assert np.isnan(two[3]).all() and two[5, 0] == 5
    assert err1 == err2 and err2[3] == "corrupt image: made up"
    assert [i for done in seen for i in done] == [i for i in range(20) if i != 3]  # in order, from one thread


def test_bad_arguments_and_default_batch_size():
    with pytest.raises(ValueError, match="infer_workers"):
        list(run_batches(range(3), decode=decode, infer=lambda b, n: [], name_of=str, infer_workers=0))
    assert default_batch_size(1) == 16 and default_batch_size(2) == 8 and default_batch_size(64) == 1
