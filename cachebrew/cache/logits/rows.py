"""Math on teacher logits rows, one place for each job: top-k rows -> full log-probabilities,
log-softmax of stored rows, and ``KL(p || q)`` per row.

``distill``'s collate (:func:`cachebrew.cache.feed.collate.rebuild_topk`), ``cachebrew compare``,
``cachebrew verify`` and the fidelity report all call these (docs/decisions.md, "One function
for each logits job").
"""

from __future__ import annotations

import numpy as np
import torch

# The smallest tail mass a top-k row is rebuilt with (a row whose k entries hold all the mass
# would otherwise give log(0) = -inf to every other id).
MIN_REST_MASS = 1e-30


def topk_logprobs(
    logp: torch.Tensor, ids: torch.Tensor, num_classes: int, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Full log-probabilities (rows, V) from top-k log-probabilities.

    The k stored entries keep their log-probability; the remaining mass ``1 - sum(exp(logp))``
    is spread evenly over the other V - k ids. At T = 1 every top-k probability and the tail's
    total are exact; the tail's shape is not stored.

    Args:
        logp: (rows, k) top-k log-probabilities (any float dtype).
        ids: (rows, k) their vocabulary ids.
        num_classes: V.
        dtype: the output dtype (the rest mass is always summed in float64).
    """
    k = logp.shape[1]
    rest = (1 - logp.double().exp().sum(1, keepdim=True)).clamp_min(MIN_REST_MASS)
    fill = (rest / max(num_classes - k, 1)).log().to(dtype)  # (rows, 1)
    out = fill.expand(-1, num_classes).clone()
    return out.scatter_(1, ids.long(), logp.to(dtype))


def log_softmax_rows(values: np.ndarray) -> np.ndarray:
    """``log_softmax`` over the last axis in float64: (rows, V) -> (rows, V)."""
    x = np.asarray(values, dtype=np.float64)
    shifted = x - x.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def kl_rows(logp: np.ndarray, logq: np.ndarray) -> np.ndarray:
    """``KL(p || q)`` per row (rows,), from log-probabilities (rows, V); clipped at 0.

    Ids where p is 0 (``logp = -inf``) contribute 0; q = 0 where p > 0 gives inf.
    """
    logp, logq = np.asarray(logp, dtype=np.float64), np.asarray(logq, dtype=np.float64)
    if logp.shape[0] == 0:
        return np.zeros(0)
    p = np.exp(logp)
    with np.errstate(invalid="ignore"):  # -inf - -inf where p = 0: masked just below
        terms = p * (logp - logq)
    terms[p == 0] = 0.0
    return np.clip(terms.sum(axis=-1), 0.0, None)
