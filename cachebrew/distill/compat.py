"""``DistillationConfig(textbrewer_compat=True)``: TextBrewer 0.2.1.post1's numbers, fixes undone.

cachebrew reproduces TextBrewer by default except for a few deliberate fixes that change the
numbers (README "Differences from TextBrewer"). The switch undoes each of them:

- ``nst``/``mmd`` with a mask: the PyPI release divides the Gram matrices by the sequence
  length ``size(1)`` (cachebrew and TextBrewer's repository HEAD, commit 3496f3e, divide by
  the hidden size);
- gradient clipping (``max_grad_norm > 0``): TextBrewer clips only the student's parameters in
  fp32 (cachebrew clips the projections too);
- ``probability_shift`` on 2-D logits with a negative label: TextBrewer indexes with it, so
  ``-1`` swaps with the last class (cachebrew ignores negative labels);
- the ``len(dataloader) % gradient_accumulation_steps`` micro-batches at an epoch's end:
  TextBrewer runs them and discards their gradients (cachebrew skips them, so the random
  draws of later steps -- dropout -- differ); under the switch their forwards run.

Not covered, because TextBrewer's value there is a crash or NaN rather than a number: masked
losses with an all-zero mask (NaN), and the inputs on which TextBrewer raises.

Without the switch, the first use of each differing behaviour logs one line naming the
difference and the switch (:func:`note_difference`), once per process.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from cachebrew import losses

logger = logging.getLogger(__name__)

SWITCH = "DistillationConfig(textbrewer_compat=True) (run YAML: distill: {textbrewer_compat: true})"

# name -> what cachebrew does differently from TextBrewer 0.2.1.post1.
DIFFERENCES = {
    "nst_divisor": (
        "masked nst/mmd divides the Gram matrices by the hidden size (TextBrewer 0.2.1.post1 "
        "divides by the sequence length, fixed only in its repository)"
    ),
    "clip_projections": (
        "gradient clipping covers the projections as well as the student (TextBrewer "
        "0.2.1.post1 clips only the student's parameters)"
    ),
    "leftover_batches": (
        "the len(dataloader) % gradient_accumulation_steps micro-batches left at an epoch's "
        "end are not run (TextBrewer 0.2.1.post1 runs them and discards their gradients, so "
        "later dropout draws differ)"
    ),
    "negative_label_shift": (
        "probability_shift ignores negative labels (TextBrewer 0.2.1.post1 swaps a 2-D row "
        "labelled -1 with its last class)"
    ),
}

_noted: set[str] = set()


def note_difference(name: str) -> None:
    """Log, once per process, that cachebrew behaves differently from TextBrewer here."""
    if name in _noted:
        return
    _noted.add(name)
    logger.warning(
        "TextBrewer difference: %s; to get TextBrewer's numbers use %s", DIFFERENCES[name], SWITCH
    )


def reset_notes() -> None:
    """Forget which differences were logged (tests)."""
    _noted.clear()


def pypi_mmd_loss(state_S: Any, state_T: Any, mask: Tensor | None = None) -> Tensor:
    """TextBrewer 0.2.1.post1's ``mmd_loss``: masked Grams divided by the length ``size(1)``.

    Args and returns as :func:`cachebrew.losses.mmd_loss`; identical to it without a mask.
    """
    if mask is None:
        return losses.mmd_loss(state_S, state_T)
    gram_S = torch.bmm(state_S[0], state_S[1].transpose(1, 2)) / state_S[1].size(1)
    gram_T = torch.bmm(state_T[0], state_T[1].transpose(1, 2)) / state_T[1].size(1)
    mask = mask.to(state_S[0])
    valid_count = torch.pow(mask.sum(dim=1), 2).sum()
    squared = torch.nn.functional.mse_loss(gram_S, gram_T, reduction="none")
    return (squared * mask.unsqueeze(-1) * mask.unsqueeze(1)).sum() / valid_count


def _noting_mmd_loss(state_S: Any, state_T: Any, mask: Tensor | None = None) -> Tensor:
    if mask is not None:
        note_difference("nst_divisor")
    return losses.mmd_loss(state_S, state_T, mask=mask)


def match_loss(loss_fn: Callable[..., Tensor], compat: bool) -> Callable[..., Tensor]:
    """The match loss to call: the PyPI ``mmd`` under the switch, a noting one without it.

    Only the built-in :func:`cachebrew.losses.mmd_loss` is replaced; a user's registered loss
    is returned as it is.
    """
    if loss_fn is not losses.mmd_loss:
        return loss_fn
    return pypi_mmd_loss if compat else _noting_mmd_loss


def clipped_parameters(
    student: nn.Module, projections: nn.Module, compat: bool, max_grad_norm: float
) -> list[nn.Parameter]:
    """The parameters whose gradient norm is clipped: student only under the switch."""
    projection_params = list(projections.parameters())
    if compat:
        return list(student.parameters())
    if max_grad_norm > 0 and projection_params:
        note_difference("clip_projections")
    return [*student.parameters(), *projection_params]


def shift_labels(logits_T: Tensor, labels: Tensor, compat: bool) -> Tensor:
    """Labels for :func:`cachebrew.losses.probability_shift` of 2-D or 3-D teacher logits.

    Under the switch a 2-D row's label in ``[-C, -1]`` indexes from the end, as TextBrewer's
    ``tensor[index, labels]`` does; other negative labels stay ignored (TextBrewer raises).
    Without it, a negative 2-D label is noted once as a difference.
    """
    if logits_T.dim() != 2:
        return labels
    negative = labels < 0
    if not bool(negative.any()):
        return labels
    if not compat:
        note_difference("negative_label_shift")
        return labels
    classes = logits_T.size(-1)
    return torch.where(negative & (labels >= -classes), labels + classes, labels)
