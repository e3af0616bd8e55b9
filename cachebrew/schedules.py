"""Temperature and loss-weight schedules, as TextBrewer's ``schedulers.py``, kept stateless.

A temperature scheduler is ``scheduler(logits_S, logits_T, base_temperature) -> float | Tensor``
and is called once per (student, teacher) logits pair after ``logits_mask`` selection and
``probability_shift``. :data:`cachebrew.presets.TEMPERATURE_SCHEDULER` maps names to
*builders* ``builder(*params) -> scheduler``. Weight schedulers map training progress
``x = global_step / total_steps`` to a weight that *replaces* the configured one.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

TemperatureScheduler = Callable[[Tensor, Tensor, float], "float | Tensor"]


def constant_temperature_scheduler(
    logits_S: Tensor, logits_T: Tensor, base_temperature: float
) -> float:
    """Return ``base_temperature`` unchanged.

    Args:
        logits_S: student logits ``(N, C)`` or ``(B, L, C)``; unused.
        logits_T: teacher logits, same shape; unused.
        base_temperature: the configured temperature.

    Returns:
        ``base_temperature``.
    """
    return base_temperature


def constant_temperature_scheduler_builder() -> TemperatureScheduler:
    """Build :func:`constant_temperature_scheduler` (so every preset entry is a builder).

    Returns:
        The constant scheduler.
    """
    return constant_temperature_scheduler


def flsw_temperature_scheduler_builder(
    beta: float, gamma: float, eps: float = 1e-4
) -> TemperatureScheduler:
    """Build the FLSW per-row temperature (arXiv:1911.07471, as adapted by TextBrewer).

    ``w = (1 - cos(z_S, z_T))^gamma`` on the raw logit vectors (each divided by its norm
    plus ``eps``), and ``tau = base + beta * (mean(w) - w)``, the mean running over every
    row of the batch: rows where student and teacher disagree get a lower temperature.

    Args:
        beta: strength of the adjustment; large values can make ``tau <= 0`` (unguarded).
        gamma: exponent on the cosine distance.
        eps: added to each norm.

    Returns:
        ``scheduler(logits_S, logits_T, base_temperature)`` returning ``tau`` shaped
        ``logits.shape[:-1]``, detached.
    """

    def flsw_temperature_scheduler(
        logits_S: Tensor, logits_T: Tensor, base_temperature: float
    ) -> Tensor:
        with torch.no_grad():
            student = logits_S.detach()
            teacher = logits_T.detach()
            student = student / (torch.norm(student, dim=-1, keepdim=True) + eps)
            teacher = teacher / (torch.norm(teacher, dim=-1, keepdim=True) + eps)
            weight = torch.pow(1 - (student * teacher).sum(dim=-1), gamma)
            return base_temperature + (weight.mean() - weight) * beta

    return flsw_temperature_scheduler


def cwsm_temperature_scheduler_builder(beta: float) -> TemperatureScheduler:
    """Build the CWSM per-row temperature (arXiv:1911.07471, as adapted by TextBrewer).

    ``w = 1 / (max_c softmax(z_S)_c + 1e-3)`` from the student alone, and
    ``tau = base + beta * (mean(w) - w)`` over every row of the batch: confident student
    rows get a higher temperature.

    Args:
        beta: strength of the adjustment; large values can make ``tau <= 0`` (unguarded).

    Returns:
        ``scheduler(logits_S, logits_T, base_temperature)`` returning ``tau`` shaped
        ``logits.shape[:-1]``, detached.
    """

    def cwsm_temperature_scheduler(
        logits_S: Tensor, logits_T: Tensor, base_temperature: float
    ) -> Tensor:
        with torch.no_grad():
            probs = torch.softmax(logits_S.detach(), dim=-1)
            weight = 1 / (probs.max(dim=-1)[0] + 1e-3)
            return base_temperature + (weight.mean() - weight) * beta

    return cwsm_temperature_scheduler


def linear_growth_weight_scheduler(x: float) -> float:
    """Weight growing linearly from 0 to 1 over training.

    Args:
        x: progress ``global_step / total_steps`` in ``[0, 1]``.

    Returns:
        ``x``.
    """
    return x


def linear_decay_weight_scheduler(x: float) -> float:
    """Weight decaying linearly from 1 to 0 over training.

    Args:
        x: progress ``global_step / total_steps`` in ``[0, 1]``.

    Returns:
        ``1 - x``.
    """
    return 1 - x


LR_SCHEDULES = ("linear", "cosine", "constant")


def lr_factor(step: int, *, warmup: int, total: int, name: str = "linear") -> float:
    """Multiplier of the base learning rate for optimizer step ``step`` (0-based).

    The schedules of ``transformers``' ``get_{linear,cosine,constant}_schedule_with_warmup``
    (tested against them), as a pure function of the step, for ``distill`` and ``finetune``
    alike: warmup ramps ``step / warmup`` (so the first step has learning rate 0, as HF),
    then ``linear`` decays as ``(total - step) / (total - warmup)`` to 0, ``cosine`` follows
    half a cosine to 0, ``constant`` stays at 1.

    Args:
        step: optimizer steps taken so far.
        warmup: warmup steps (0: none).
        total: optimizer steps of the whole run.
        name: one of :data:`LR_SCHEDULES`.
    """
    if step < warmup:
        return step / max(1, warmup)
    if name == "constant":
        return 1.0
    if name == "cosine":
        progress = (step - warmup) / max(1, total - warmup)
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))
    return max(0.0, (total - step) / max(1, total - warmup))
