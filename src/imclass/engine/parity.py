"""Numeric parity of two runtimes of one model (torch vs ONNX Runtime fp32 / INT8, ...)."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np

from ..numerics import kl_divergence, sigmoid, softmax


def parity(reference_fn: Callable[[np.ndarray], np.ndarray], candidate_fn: Callable[[np.ndarray], np.ndarray],
           batches: Iterable[np.ndarray], *, multi_label: bool = False) -> dict[str, float]:
    """Compare two ``batch -> logits`` functions on the same batches.

    Returns ``top1_agreement`` (fraction of rows whose arg-max agrees), ``max_abs_prob_diff`` (largest
    difference of softmax probabilities, sigmoid when ``multi_label``), ``mean_kl`` (mean KL divergence of
    the candidate's probabilities from the reference's: a smooth measure of the whole distribution, summed
    over labels as Bernoulli KLs when ``multi_label``), ``max_abs_logit_diff``, ``max_abs_reference`` (the
    largest reference output, for relative checks) and ``n``.
    """
    n = agree = 0
    max_prob = max_logit = max_ref = kl_sum = 0.0
    for batch in batches:
        ref = np.asarray(reference_fn(batch), dtype=np.float64)
        cand = np.asarray(candidate_fn(batch), dtype=np.float64)
        if ref.shape != cand.shape:
            raise ValueError(f"parity: shapes differ: reference {ref.shape}, candidate {cand.shape}")
        n += len(ref)
        agree += int((ref.argmax(1) == cand.argmax(1)).sum())
        max_logit = max(max_logit, float(np.abs(ref - cand).max(initial=0.0)))
        max_ref = max(max_ref, float(np.abs(ref).max(initial=0.0)))
        act = sigmoid if multi_label else softmax
        p, q = act(ref), act(cand)
        max_prob = max(max_prob, float(np.abs(p - q).max(initial=0.0)))
        kl_sum += float(kl_divergence(p, q, bernoulli=multi_label).sum())
    return {"top1_agreement": agree / n if n else float("nan"), "max_abs_prob_diff": max_prob,
            "mean_kl": kl_sum / n if n else float("nan"),
            "max_abs_logit_diff": max_logit, "max_abs_reference": max_ref, "n": n}
