"""TextBrewer's distillation losses as pure functions, with the same names and values.

Every function reproduces ``textbrewer==0.2.1.post1`` (``textbrewer/losses.py``) exactly --
same inputs, reductions and the absence of a T² factor -- except for the fixes listed here,
each of which only changes inputs on which TextBrewer crashes or returns NaN:

- a mask with no valid position gives 0 with finite gradients, not 0/0 = NaN;
- ``att_mse_loss`` and ``att_ce_loss`` accept ``(B, L, L)`` input with a mask (one head);
- ``cos_loss`` accepts non-contiguous input;
- ``mmd_loss`` uses the masked normalisation of TextBrewer's repository HEAD (commit 3496f3e);
- ``probability_shift_`` ignores negative labels in both ranks.

Masks may be long, float or bool; they are always cast to the feature dtype with ``.to(x)``.
The two extra KD losses, :func:`kd_kl_loss` and :func:`kd_multilabel_loss`, are not in
TextBrewer (see its issues #90/#91 and #50).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

# TextBrewer's attention losses expect pre-softmax scores with the additive -10000 mask
# applied; its unmasked branches zero every value <= -1e-3 to drop those positions. The rule
# also zeroes genuinely negative scores -- kept because reproducing TextBrewer is the point.
NEGATIVE_SCORE_THRESHOLD = -1e-3


def _row_temperature(temperature: float | Tensor, logits: Tensor) -> float | Tensor:
    """Make a per-row temperature broadcast over classes, in the logits' dtype."""
    if isinstance(temperature, Tensor):
        temperature = temperature.to(logits)
        if temperature.dim() > 0:
            temperature = temperature.unsqueeze(-1)
    return temperature


def _safe_divide(total: Tensor, count: Tensor) -> Tensor:
    """``total / count``, but 0 (not NaN) when ``count == 0``; exact whenever ``count > 0``."""
    # where() on the denominator rather than on the quotient keeps the backward pass finite.
    return total / torch.where(count > 0, count, torch.ones_like(count))


def _heads_reduced(attention: Tensor, how: str) -> Tensor:
    """``(B, H, L, L)`` summed (``"sum"``) or averaged (``"mean"``) over heads; 3-D as it is."""
    if attention.dim() != 4:
        return attention
    return attention.sum(dim=1) if how == "sum" else attention.mean(dim=1)


def _zero_negative(scores: Tensor) -> Tensor:
    """Zero the scores at or below :data:`NEGATIVE_SCORE_THRESHOLD`."""
    return scores.masked_fill(scores <= NEGATIVE_SCORE_THRESHOLD, 0)


def kd_mse_loss(logits_S: Tensor, logits_T: Tensor, temperature: float | Tensor = 1) -> Tensor:
    """Mean squared error between temperature-scaled logits (no T² factor).

    ``mean((S/T - T_logits/T)²)`` over all elements, as TextBrewer's ``kd_mse_loss``.

    Args:
        logits_S: student logits, ``(B, C)`` or ``(B, L, C)``.
        logits_T: teacher logits, same shape.
        temperature: a float, or a per-row tensor shaped ``logits.shape[:-1]``.

    Returns:
        Scalar loss.
    """
    temperature = _row_temperature(temperature, logits_S)
    return F.mse_loss(logits_S / temperature, logits_T / temperature)


def kd_ce_loss(logits_S: Tensor, logits_T: Tensor, temperature: float | Tensor = 1) -> Tensor:
    """Soft cross-entropy H(p_T, p_S) at temperature T (Hinton et al. 2015, no T² factor).

    ``-sum_c softmax(T_logits/T)_c * log_softmax(S/T)_c``, averaged over every row (all of
    ``B`` or ``B*L``, padding included when unmasked).

    Args:
        logits_S: student logits, ``(B, C)`` or ``(B, L, C)``.
        logits_T: teacher logits, same shape.
        temperature: a float, or a per-row tensor shaped ``logits.shape[:-1]``.

    Returns:
        Scalar loss.
    """
    temperature = _row_temperature(temperature, logits_S)
    probs_T = F.softmax(logits_T / temperature, dim=-1)
    return -(probs_T * F.log_softmax(logits_S / temperature, dim=-1)).sum(dim=-1).mean()


def kd_kl_loss(logits_S: Tensor, logits_T: Tensor, temperature: float | Tensor = 1) -> Tensor:
    """KL(p_T || p_S) at temperature T, averaged over rows (no T² factor).

    Equals :func:`kd_ce_loss` minus the teacher entropy, so it has the same gradient but a
    value that is 0 when the student matches (TextBrewer issues #90/#91).

    Args:
        logits_S: student logits, ``(B, C)`` or ``(B, L, C)``.
        logits_T: teacher logits, same shape.
        temperature: a float, or a per-row tensor shaped ``logits.shape[:-1]``.

    Returns:
        Scalar loss.
    """
    temperature = _row_temperature(temperature, logits_S)
    log_probs_S = F.log_softmax(logits_S / temperature, dim=-1)
    probs_T = F.softmax(logits_T / temperature, dim=-1)
    # kl_div uses xlogy for p_T * log p_T, so classes with p_T == 0 contribute 0, not NaN.
    return F.kl_div(log_probs_S, probs_T, reduction="none").sum(dim=-1).mean()


def kd_multilabel_loss(
    logits_S: Tensor, logits_T: Tensor, temperature: float | Tensor = 1
) -> Tensor:
    """Binary cross-entropy between sigmoid outputs, for multi-label heads (TextBrewer issue #50).

    ``p_T = sigmoid(T_logits/T)``; ``-(p_T*logsigmoid(S/T) + (1-p_T)*logsigmoid(-S/T))``,
    averaged over all elements.

    Args:
        logits_S: student logits, ``(B, C)`` or ``(B, L, C)``.
        logits_T: teacher logits, same shape.
        temperature: a float, or a per-row tensor shaped ``logits.shape[:-1]``.

    Returns:
        Scalar loss.
    """
    temperature = _row_temperature(temperature, logits_S)
    scaled_S = logits_S / temperature
    probs_T = torch.sigmoid(logits_T / temperature)
    return -(probs_T * F.logsigmoid(scaled_S) + (1 - probs_T) * F.logsigmoid(-scaled_S)).mean()


def att_mse_loss(attention_S: Tensor, attention_T: Tensor, mask: Tensor | None = None) -> Tensor:
    """MSE between attention scores (TinyBERT, arXiv:1909.10351).

    Unmasked: scores ``<= -1e-3`` are zeroed on both sides, then the mean over ``B*H*L*L``.
    Masked: the mean over valid (query, key) cells of every head, without the zeroing.

    Args:
        attention_S: student scores, ``(B, H, L, L)`` or ``(B, L, L)`` (one head).
        attention_T: teacher scores, same shape (same head count).
        mask: ``(B, L)``, 1 for valid tokens; long, float or bool.

    Returns:
        Scalar loss.
    """
    if attention_S.dim() == 3:
        attention_S, attention_T = attention_S.unsqueeze(1), attention_T.unsqueeze(1)
    if mask is None:
        return F.mse_loss(_zero_negative(attention_S), _zero_negative(attention_T))
    mask = mask.to(attention_S).unsqueeze(1).expand(-1, attention_S.size(1), -1)  # (B, H, L)
    valid_count = torch.pow(mask.sum(dim=2), 2).sum()
    squared = F.mse_loss(attention_S, attention_T, reduction="none")
    return _safe_divide((squared * mask.unsqueeze(-1) * mask.unsqueeze(2)).sum(), valid_count)


def att_mse_sum_loss(
    attention_S: Tensor, attention_T: Tensor, mask: Tensor | None = None
) -> Tensor:
    """MSE between head-summed attention scores; head counts may differ.

    Same reductions as :func:`att_mse_loss` applied to ``(B, L, L)`` after summing heads.

    Args:
        attention_S: student scores, ``(B, H_S, L, L)`` or ``(B, L, L)``.
        attention_T: teacher scores, ``(B, H_T, L, L)`` or ``(B, L, L)``.
        mask: ``(B, L)``, 1 for valid tokens; long, float or bool.

    Returns:
        Scalar loss.
    """
    # Each side is reduced on its own, so a cached head-sum (B, L, L) teacher pairs with a
    # (B, H, L, L) student; with both 4-D this is TextBrewer's computation.
    return att_mse_loss(
        _heads_reduced(attention_S, "sum"), _heads_reduced(attention_T, "sum"), mask
    )


def att_ce_loss(attention_S: Tensor, attention_T: Tensor, mask: Tensor | None = None) -> Tensor:
    """Cross-entropy between per-query attention distributions (softmax over keys).

    Unmasked: teacher probabilities at scores ``<= -1e-3`` are zeroed (not renormalised),
    then the mean over ``B*H*L`` queries. Masked: padded keys are dropped without
    renormalising and the mean runs over valid (head, query) pairs. No temperature.

    Args:
        attention_S: student scores (not probabilities), ``(B, H, L, L)`` or ``(B, L, L)``.
        attention_T: teacher scores, same shape.
        mask: ``(B, L)``, 1 for valid tokens; long, float or bool.

    Returns:
        Scalar loss.
    """
    if attention_S.dim() == 3:
        attention_S, attention_T = attention_S.unsqueeze(1), attention_T.unsqueeze(1)
    probs_T = F.softmax(attention_T, dim=-1)
    log_probs_S = F.log_softmax(attention_S, dim=-1)
    if mask is None:
        probs_T = probs_T.masked_fill(attention_T <= NEGATIVE_SCORE_THRESHOLD, 0)
        return -((probs_T * log_probs_S).sum(dim=-1)).mean()
    mask = mask.to(attention_S).unsqueeze(1).expand(-1, attention_S.size(1), -1)  # (B, H, L)
    per_query = (probs_T * log_probs_S * mask.unsqueeze(2)).sum(dim=-1) * mask
    return -_safe_divide(per_query.sum(), mask.sum())


def att_ce_mean_loss(
    attention_S: Tensor, attention_T: Tensor, mask: Tensor | None = None
) -> Tensor:
    """Cross-entropy between attention distributions of the head-mean scores.

    The scores (not probabilities) are averaged over heads first, then as :func:`att_ce_loss`
    on ``(B, L, L)``; head counts may differ.

    Args:
        attention_S: student scores, ``(B, H_S, L, L)`` or ``(B, L, L)``.
        attention_T: teacher scores, ``(B, H_T, L, L)`` or ``(B, L, L)``.
        mask: ``(B, L)``, 1 for valid tokens; long, float or bool.

    Returns:
        Scalar loss.
    """
    # Each side is reduced on its own (a cached head-mean teacher is (B, L, L)).
    return att_ce_loss(
        _heads_reduced(attention_S, "mean"), _heads_reduced(attention_T, "mean"), mask
    )


def hid_mse_loss(state_S: Tensor, state_T: Tensor, mask: Tensor | None = None) -> Tensor:
    """MSE between hidden states (TinyBERT), the mean over valid ``token * dim`` elements.

    Args:
        state_S: student hidden states (projected to the teacher dim), ``(B, L, D)``.
        state_T: teacher hidden states, ``(B, L, D)``.
        mask: ``(B, L)``, 1 for valid tokens; long, float or bool.

    Returns:
        Scalar loss.
    """
    if mask is None:
        return F.mse_loss(state_S, state_T)
    mask = mask.to(state_S)
    valid_count = mask.sum() * state_S.size(-1)
    squared = F.mse_loss(state_S, state_T, reduction="none")
    return _safe_divide((squared * mask.unsqueeze(-1)).sum(), valid_count)


def cos_loss(state_S: Tensor, state_T: Tensor, mask: Tensor | None = None) -> Tensor:
    """Cosine embedding loss ``mean_tokens(1 - cos(s, t))`` (DistilBERT, arXiv:1910.01108).

    Args:
        state_S: student hidden states (projected to the teacher dim), ``(B, L, D)``; may be
            non-contiguous (TextBrewer's ``.view`` crashes there).
        state_T: teacher hidden states, ``(B, L, D)``.
        mask: ``(B, L)``, nonzero for valid tokens; long, float or bool.

    Returns:
        Scalar loss; 0 if no token is valid.
    """
    dim = state_S.size(-1)
    state_S, state_T = state_S.reshape(-1, dim), state_T.reshape(-1, dim)
    if mask is not None:
        # Select rows instead of multiplying by the mask: padded rows never enter the graph.
        keep = mask.to(state_S).reshape(-1) != 0
        state_S, state_T = state_S[keep], state_T[keep]
    target = state_S.new_ones(state_S.size(0))
    per_token = F.cosine_embedding_loss(state_S, state_T, target, reduction="none")
    if per_token.numel() == 0:
        return per_token.sum()  # 0, still attached to the graph
    return per_token.mean()


def pkd_loss(state_S: Tensor, state_T: Tensor, mask: Tensor | None = None) -> Tensor:
    """Squared distance of unit-normalised position-0 vectors (BERT-PKD, arXiv:1908.09355).

    ``mean_b ||s_b/|s_b| - t_b/|t_b|||²``. No epsilon in the norm, as TextBrewer: a zero
    vector gives NaN.

    Args:
        state_S: student states ``(B, L, D)`` (position 0 is used) or ``(B, D)``.
        state_T: teacher states ``(B, L, D)`` or ``(B, D)``.
        mask: ignored, accepted for the match-loss signature.

    Returns:
        Scalar loss.
    """
    cls_S = state_S[:, 0] if state_S.dim() == 3 else state_S  # (B, D)
    cls_T = state_T[:, 0] if state_T.dim() == 3 else state_T
    normed_S = cls_S / torch.norm(cls_S, dim=1, keepdim=True)
    normed_T = cls_T / torch.norm(cls_T, dim=1, keepdim=True)
    return (normed_S - normed_T).pow(2).sum(dim=-1).mean()


def fsp_loss(
    state_S: Sequence[Tensor], state_T: Sequence[Tensor], mask: Tensor | None = None
) -> Tensor:
    """MSE between ``D x D`` feature Gram matrices of two layers (FSP, Yim et al. CVPR 2017).

    ``gram = X0ᵀ X1 / length`` per example (length = L unmasked, the valid count masked);
    the loss is the mean over ``B*D*D``. An example with no valid token has a zero Gram
    (TextBrewer: NaN).

    Args:
        state_S: two student states, each ``(B, L, D)`` (projected to the teacher dim).
        state_T: two teacher states, each ``(B, L, D)``.
        mask: ``(B, L)``, 1 for valid tokens; long, float or bool.

    Returns:
        Scalar loss.
    """
    if mask is None:
        gram_S = torch.bmm(state_S[0].transpose(1, 2), state_S[1]) / state_S[1].size(1)
        gram_T = torch.bmm(state_T[0].transpose(1, 2), state_T[1]) / state_T[1].size(1)
        return F.mse_loss(gram_S, gram_T)  # grams: (B, D, D)
    mask = mask.to(state_S[0]).unsqueeze(-1)  # (B, L, 1)
    lengths = mask.sum(dim=1, keepdim=True)  # (B, 1, 1)
    gram_S = torch.bmm((state_S[0] * mask).transpose(1, 2), state_S[1] * mask)
    gram_T = torch.bmm((state_T[0] * mask).transpose(1, 2), state_T[1] * mask)
    return F.mse_loss(_safe_divide(gram_S, lengths), _safe_divide(gram_T, lengths))


def mmd_loss(
    state_S: Sequence[Tensor], state_T: Sequence[Tensor], mask: Tensor | None = None
) -> Tensor:
    """MSE between ``L x L`` token Gram matrices of two layers (NST-style, arXiv:1707.01219).

    ``gram = X0 X1ᵀ / D`` per example, so student and teacher dims may differ; the loss is
    the mean over ``B*L*L`` cells, or over valid (i, j) cells when masked. Despite the name
    this is not a kernel MMD.

    Both branches divide by the hidden dim ``size(2)``, as TextBrewer's repository HEAD
    (commit 3496f3e). The PyPI release 0.2.1.post1 divides the *masked* grams by ``size(1)``
    (the length) instead, so its masked values are ``(D/L)²`` times ours and differ from its
    own unmasked values even for an all-ones mask.

    Args:
        state_S: two student states, each ``(B, L, D_S)``.
        state_T: two teacher states, each ``(B, L, D_T)``.
        mask: ``(B, L)``, 1 for valid tokens; long, float or bool.

    Returns:
        Scalar loss.
    """
    gram_S = torch.bmm(state_S[0], state_S[1].transpose(1, 2)) / state_S[1].size(2)
    gram_T = torch.bmm(state_T[0], state_T[1].transpose(1, 2)) / state_T[1].size(2)
    if mask is None:
        return F.mse_loss(gram_S, gram_T)  # grams: (B, L, L)
    mask = mask.to(state_S[0])
    valid_count = torch.pow(mask.sum(dim=1), 2).sum()
    squared = F.mse_loss(gram_S, gram_T, reduction="none")
    return _safe_divide((squared * mask.unsqueeze(-1) * mask.unsqueeze(1)).sum(), valid_count)


def probability_shift_(tensor: Tensor, labels: Tensor) -> Tensor:
    """Swap, in place, each row's largest value with its gold-label value (TextBrewer).

    Applied to teacher logits so the teacher's top class is always the gold one. Rows whose
    label is negative (e.g. -100) are left untouched in both ranks; TextBrewer raises
    ``IndexError`` for -100 on rank 2 and swaps with the last class for -1.

    Args:
        tensor: logits ``(N, C)`` or ``(B, L, C)``; modified in place.
        labels: class indices ``(N,)`` or ``(B, L)``.

    Returns:
        ``tensor`` itself.

    Raises:
        ValueError: ``tensor`` is not rank 2 or 3, or ``labels`` is not shaped
            ``tensor.shape[:-1]``.
    """
    if tensor.dim() not in (2, 3):
        raise ValueError(f"probability_shift_: tensor must be rank 2 or 3, got {tensor.dim()}")
    if labels.shape != tensor.shape[:-1]:
        raise ValueError(
            f"probability_shift_: labels shape {tuple(labels.shape)} must equal the logits "
            f"shape without the class dim {tuple(tensor.shape[:-1])}"
        )
    rows = tensor.reshape(-1, tensor.size(-1))  # (N, C); a view when tensor is contiguous
    labels = labels.reshape(-1).to(rows.device)
    max_position = rows.argmax(dim=-1)
    # Swapping the max with itself is a no-op: that is how ignored rows are skipped.
    target = torch.where(labels < 0, max_position, labels)
    index = torch.arange(rows.size(0), device=rows.device)
    max_value = rows[index, max_position].clone()
    target_value = rows[index, target].clone()
    rows[index, max_position] = target_value
    rows[index, target] = max_value
    if rows.data_ptr() != tensor.data_ptr():  # reshape copied a non-contiguous tensor
        tensor.copy_(rows.view(tensor.shape))
    return tensor


def probability_shift(tensor: Tensor, labels: Tensor) -> Tensor:
    """Out-of-place :func:`probability_shift_`: return a shifted copy.

    Args:
        tensor: logits ``(N, C)`` or ``(B, L, C)``; not modified.
        labels: class indices ``(N,)`` or ``(B, L)``; negative means "ignore".

    Returns:
        A new tensor of the same shape.
    """
    return probability_shift_(tensor.clone(), labels)
