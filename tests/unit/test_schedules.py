"""Parity of cachebrew.schedules with textbrewer==0.2.1.post1's schedulers."""

from __future__ import annotations

import pytest
import textbrewer.presets as tb_presets
import textbrewer.schedulers as tb_schedulers
import torch

from cachebrew import schedules

LOGIT_SHAPES = [(6, 4), (32, 10), (3, 5, 7)]
DTYPES = [torch.float32, torch.float64]
ATOL = {torch.float32: 1e-7, torch.float64: 1e-12}


def make_logits(shape, dtype, seed):
    generator = torch.Generator().manual_seed(seed)
    logits_S = torch.randn(shape, generator=generator, dtype=torch.float64) * 3
    logits_T = torch.randn(shape, generator=generator, dtype=torch.float64) * 3
    # correlate some rows so the cosine term spans a range of values
    logits_T[::2] = logits_S[::2] + 0.1 * logits_T[::2]
    return logits_S.to(dtype).requires_grad_(), logits_T.to(dtype)


def assert_detached_and_untouched(tau, logits_S, logits_T, before_S, before_T):
    assert not tau.requires_grad
    assert tau.grad_fn is None
    assert logits_S.grad is None
    assert torch.equal(logits_S.detach(), before_S)
    assert torch.equal(logits_T, before_T)


@pytest.mark.parametrize("base", [1.0, 4, 8.0])
def test_constant_scheduler_matches_textbrewer(base):
    scheduler = schedules.constant_temperature_scheduler_builder()
    assert scheduler is schedules.constant_temperature_scheduler
    logits_S, logits_T = make_logits((4, 3), torch.float32, 0)
    theirs = tb_presets.TEMPERATURE_SCHEDULER["constant"](logits_S, logits_T, base)
    assert scheduler(logits_S, logits_T, base) == theirs == base


@pytest.mark.parametrize("beta, gamma", [(1, 1), (1, 2), (0.5, 3), (2.0, 0.5)])
@pytest.mark.parametrize("shape", LOGIT_SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_flsw_matches_textbrewer(beta, gamma, shape, dtype):
    logits_S, logits_T = make_logits(shape, dtype, seed=len(shape) * 10 + shape[-1])
    before_S, before_T = logits_S.detach().clone(), logits_T.clone()
    ours = schedules.flsw_temperature_scheduler_builder(beta, gamma)(logits_S, logits_T, 4.0)
    theirs = tb_presets.TEMPERATURE_SCHEDULER[["flsw", beta, gamma]](logits_S, logits_T, 4.0)

    assert ours.shape == shape[:-1]
    torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=ATOL[dtype])
    assert ours.std() > 0.01  # the temperature actually varies per row
    # the batch mean of (mean(w) - w) is 0, so the mean temperature stays at the base
    torch.testing.assert_close(ours.mean().item(), 4.0, rtol=1e-5, atol=1e-5)
    assert_detached_and_untouched(ours, logits_S, logits_T, before_S, before_T)


def test_flsw_keyword_and_eps_forms_match_textbrewer():
    logits_S, logits_T = make_logits((8, 5), torch.float64, 1)
    keyword = tb_presets.TEMPERATURE_SCHEDULER[["flsw", {"beta": 1.5, "gamma": 2}]]
    ours = schedules.flsw_temperature_scheduler_builder(beta=1.5, gamma=2)
    torch.testing.assert_close(ours(logits_S, logits_T, 2.0), keyword(logits_S, logits_T, 2.0))

    # rows of very different norms, some comparable to eps, so eps changes the result
    scale = torch.tensor([[1e-2], [1.0], [1e-1]], dtype=torch.float64)
    small_S, small_T = logits_S[:3] * scale, logits_T[:3] * scale
    theirs = tb_schedulers.flsw_temperature_scheduler_builder(1, 1, 0.05)(small_S, small_T, 2.0)
    ours_eps = schedules.flsw_temperature_scheduler_builder(1, 1, eps=0.05)
    torch.testing.assert_close(ours_eps(small_S, small_T, 2.0), theirs)
    default_eps = schedules.flsw_temperature_scheduler_builder(1, 1)(small_S, small_T, 2.0)
    assert not torch.allclose(default_eps, theirs)


@pytest.mark.parametrize("beta", [0.5, 1, 3.0])
@pytest.mark.parametrize("shape", LOGIT_SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_cwsm_matches_textbrewer(beta, shape, dtype):
    logits_S, logits_T = make_logits(shape, dtype, seed=shape[0] + shape[-1])
    before_S, before_T = logits_S.detach().clone(), logits_T.clone()
    ours = schedules.cwsm_temperature_scheduler_builder(beta)(logits_S, logits_T, 3.0)
    theirs = tb_presets.TEMPERATURE_SCHEDULER[["cwsm", beta]](logits_S, logits_T, 3.0)

    assert ours.shape == shape[:-1]
    torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=ATOL[dtype])
    assert ours.std() > 0.01
    assert_detached_and_untouched(ours, logits_S, logits_T, before_S, before_T)


def test_cwsm_ignores_the_teacher_and_gives_confident_rows_a_higher_temperature():
    logits_S = torch.tensor([[10.0, 0.0, 0.0], [0.1, 0.0, 0.0]])
    scheduler = schedules.cwsm_temperature_scheduler_builder(1.0)
    generator = torch.Generator().manual_seed(5)
    teacher_a, teacher_b = torch.randn(2, 2, 3, generator=generator)
    tau = scheduler(logits_S, teacher_a, 2.0)
    torch.testing.assert_close(tau, scheduler(logits_S, teacher_b, 2.0), rtol=0, atol=0)
    assert tau[0] > 2.0 > tau[1]


def test_schedulers_are_stateless():
    scheduler = schedules.flsw_temperature_scheduler_builder(1.0, 2.0)
    batch_a = make_logits((6, 4), torch.float64, 2)
    batch_b = make_logits((9, 4), torch.float64, 3)
    first = scheduler(*batch_a, 4.0)
    scheduler(*batch_b, 4.0)
    torch.testing.assert_close(scheduler(*batch_a, 4.0), first, rtol=0, atol=0)


@pytest.mark.parametrize("x", [0.0, 0.1, 1 / 3, 0.5, 0.999, 1.0])
def test_weight_schedulers_match_textbrewer(x):
    growth = schedules.linear_growth_weight_scheduler(x)
    decay = schedules.linear_decay_weight_scheduler(x)
    assert growth == tb_presets.WEIGHT_SCHEDULER["linear_growth"](x) == pytest.approx(x)
    assert decay == tb_presets.WEIGHT_SCHEDULER["linear_decay"](x) == pytest.approx(1 - x)
