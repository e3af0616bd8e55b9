"""The one learning-rate schedule of `distill` and `finetune` equals transformers' schedules."""

from __future__ import annotations

import pytest
import torch

from cachebrew import schedules


@pytest.mark.parametrize("name", ["linear", "cosine", "constant"])
@pytest.mark.parametrize(("warmup", "total"), [(0, 10), (3, 10), (10, 10), (1, 1), (4, 37)])
def test_lr_factor_equals_transformers_schedules(name: str, warmup: int, total: int) -> None:
    transformers = pytest.importorskip("transformers")
    builders = {
        "linear": transformers.get_linear_schedule_with_warmup,
        "cosine": transformers.get_cosine_schedule_with_warmup,
        "constant": transformers.get_constant_schedule_with_warmup,
    }
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    args = (optimizer, warmup) if name == "constant" else (optimizer, warmup, total)
    reference = builders[name](*args)
    for step in range(total + 2):
        expected = reference.get_last_lr()[0]
        factor = schedules.lr_factor(step, warmup=warmup, total=total, name=name)
        assert factor == pytest.approx(expected)
        optimizer.step()
        reference.step()


def test_warmup_starts_at_zero_and_linear_decays_to_zero() -> None:
    factors = [schedules.lr_factor(s, warmup=2, total=6) for s in range(7)]
    assert factors == pytest.approx([0.0, 0.5, 1.0, 0.75, 0.5, 0.25, 0.0])
