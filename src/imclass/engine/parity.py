"""Numeric parity of two runtimes of one model (torch vs ONNX Runtime fp32 / INT8, ...)."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np

from ..numerics import kl_divergence, sigmoid, softmax


def parity(reference_fn: Callable[[np.ndarray], np.ndarray], candidate_fn: Callable[[np.ndarray], np.ndarray],
           batches: Iterable[np.ndarray], *, multi_label: bool = False, known: bool = False,
           unknown_threshold: float | None = None) -> dict[str, float]:
    """Compare two ``batch -> logits`` functions on the same batches.

    Returns ``top1_agreement`` (fraction of rows whose arg-max agrees), ``max_abs_prob_diff`` (largest
    difference of softmax probabilities, sigmoid when ``multi_label``), ``mean_kl`` (mean KL divergence of
    the candidate's probabilities from the reference's: a smooth measure of the whole distribution, summed
    over labels as Bernoulli KLs when ``multi_label``), ``max_abs_logit_diff``, ``max_abs_reference`` (the
    largest reference output, for relative checks) and ``n``.

    ``known``: the outputs end with a ``known_score`` column (open-set models); it is compared on its own
    (``max_abs_known_diff``, and with ``unknown_threshold`` the share of rows whose unknown decision agrees,
    ``unknown_agreement``) and left out of the rest.
    """
    n = agree = same_decision = 0
    max_prob = max_logit = max_ref = kl_sum = max_known = 0.0
    for batch in batches:
        ref = np.asarray(reference_fn(batch), dtype=np.float64)
        cand = np.asarray(candidate_fn(batch), dtype=np.float64)
        if ref.shape != cand.shape:
            raise ValueError(f"parity: shapes differ: reference {ref.shape}, candidate {cand.shape}")
        if known:
            kr, kc = ref[:, -1], cand[:, -1]
            ref, cand = ref[:, :-1], cand[:, :-1]
            max_known = max(max_known, float(np.abs(kr - kc).max(initial=0.0)))
            if unknown_threshold is not None:
                same_decision += int(((kr < unknown_threshold) == (kc < unknown_threshold)).sum())
        n += len(ref)
        agree += int((ref.argmax(1) == cand.argmax(1)).sum())
        max_logit = max(max_logit, float(np.abs(ref - cand).max(initial=0.0)))
        max_ref = max(max_ref, float(np.abs(ref).max(initial=0.0)))
        act = sigmoid if multi_label else softmax
        p, q = act(ref), act(cand)
        max_prob = max(max_prob, float(np.abs(p - q).max(initial=0.0)))
        kl_sum += float(kl_divergence(p, q, bernoulli=multi_label).sum())
    out = {"top1_agreement": agree / n if n else float("nan"), "max_abs_prob_diff": max_prob,
           "mean_kl": kl_sum / n if n else float("nan"),
           "max_abs_logit_diff": max_logit, "max_abs_reference": max_ref, "n": n}
    if known:
        out["max_abs_known_diff"] = max_known
        if unknown_threshold is not None:
            out["unknown_agreement"] = same_decision / n if n else float("nan")
    return out
