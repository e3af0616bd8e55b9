"""Exact KD (hidden state + LM head, logits recomputed in vocabulary chunks) against the dense
TextBrewer losses on the same logits: value and gradient to 1e-6."""

from __future__ import annotations

import pytest
import torch

from cachebrew.cache.logits.exact import ExactLogits, LMHead
from cachebrew.config import DistillationConfig
from cachebrew.distill.exact_kd import exact_kd_loss
from cachebrew.distill.loss import DistillationLoss, LossWeights
from cachebrew.errors import ConfigError
from cachebrew.losses import kd_ce_loss, kd_kl_loss, kd_mse_loss

ROWS, H, V = 9, 16, 203  # V is not a multiple of the chunk sizes below
DENSE = {"ce": kd_ce_loss, "kl": kd_kl_loss, "mse": kd_mse_loss}


def _teacher(bias: bool = True, seed: int = 0) -> ExactLogits:
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(ROWS, H, generator=g).half().float()  # the stored fp16 values
    weight = torch.randn(V, H, generator=g) / 2
    return ExactLogits(hidden, LMHead(weight, torch.randn(V, generator=g) if bias else None))


def _student(seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(ROWS, V, generator=g) * 2).requires_grad_()


def _value_and_grad(loss_fn, logits: torch.Tensor) -> tuple[float, torch.Tensor]:
    logits.grad = None
    loss = loss_fn(logits)
    loss.backward()
    return float(loss.detach()), logits.grad.clone()


@pytest.mark.parametrize("loss_type", ["ce", "kl", "mse"])
@pytest.mark.parametrize("temperature", [1.0, 2.5])
@pytest.mark.parametrize("chunk", [7, 64, 4096])
def test_exact_kd_equals_the_dense_loss_on_head_times_hidden(
    loss_type: str, temperature: float, chunk: int
) -> None:
    teacher = _teacher(bias=chunk != 64)
    dense_teacher = teacher.hidden @ teacher.head.weight.T
    if teacher.head.bias is not None:
        dense_teacher = dense_teacher + teacher.head.bias
    z = _student()
    ref_value, ref_grad = _value_and_grad(
        lambda x: DENSE[loss_type](x, dense_teacher, temperature), z
    )
    value, grad = _value_and_grad(
        lambda x: exact_kd_loss(x, teacher, temperature, loss_type=loss_type, chunk=chunk), z
    )
    # 1e-6, relative for values above 1 (a float32 loss of ~10 has an ulp of 1e-6)
    assert value == pytest.approx(ref_value, rel=1e-6, abs=1e-6)
    torch.testing.assert_close(grad, ref_grad, rtol=0, atol=1e-6)


def test_dense_helper_and_to_keep_the_rows() -> None:
    teacher = _teacher()
    moved = teacher.to("cpu")
    assert moved.head is teacher.head.to("cpu")  # one copy of the head per device
    assert moved.shape == (ROWS, V) and torch.equal(moved.dense(), teacher.dense())


def test_distillation_loss_dispatches_exact_with_t2_scale_and_hard_labels() -> None:
    teacher = _teacher(seed=3)
    z = _student(4)
    hard = torch.tensor([0.7, 0.3])
    config = DistillationConfig(temperature=2.0, kd_t2_scale=True, kd_loss_type="kl")
    weights = LossWeights(kd_loss_weight=0.5, hard_label_weight=2.0)
    out = DistillationLoss(config)(
        {"logits": [z], "losses": [hard]}, {"logits": [teacher]}, weights, {}
    )
    dense = DistillationLoss(config)(
        {"logits": [z], "losses": [hard]}, {"logits": [teacher.dense()]}, weights, {}
    )
    assert float(out.total.detach()) == pytest.approx(float(dense.total.detach()), rel=1e-6)
    assert out.terms.keys() == dense.terms.keys()
    kd = exact_kd_loss(z, teacher, 2.0, loss_type="kl")
    assert float(out.total.detach()) == pytest.approx(
        float(kd.detach()) * 4 * 0.5 + 0.5 * 2.0, rel=1e-6
    )


def test_exact_kd_refuses_what_it_cannot_compute() -> None:
    teacher, z = _teacher(), _student()
    with pytest.raises(ConfigError, match="choose one of \\['ce', 'kl', 'mse'\\]"):
        exact_kd_loss(z, teacher, 1.0, loss_type="multilabel")
    with pytest.raises(ConfigError, match="constant temperature"):
        exact_kd_loss(z, teacher, torch.ones(ROWS))
    with pytest.raises(ConfigError, match="do not match the cache's exact teacher rows"):
        exact_kd_loss(z[:, :-1], teacher, 1.0)
    scheduled = DistillationConfig(temperature_scheduler=["flsw", 1.0, 1.0])
    with pytest.raises(ConfigError, match="need dense teacher logits; this cache stores exact"):
        DistillationLoss(scheduled)({"logits": [z]}, {"logits": [teacher]}, LossWeights(1, 1), {})
