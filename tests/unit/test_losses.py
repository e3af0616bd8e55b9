"""Parity of cachebrew.losses with textbrewer==0.2.1.post1, plus tests for every deliberate fix."""

from __future__ import annotations

import pytest
import textbrewer.losses as tb
import torch
import torch.nn.functional as F
from textbrewer.distiller_utils import probability_shift_ as tb_probability_shift_

from cachebrew import losses

FLOAT_DTYPES = [torch.float32, torch.float64]
MASK_DTYPES = [torch.long, torch.float32, torch.bool]
# Scalar losses of magnitude ~1e-3..1e1; the two implementations run the same ops in the same
# order, so these are far looser than the differences actually seen (usually exactly 0).
ATOL = {torch.float32: 1e-7, torch.float64: 1e-12}
RTOL = 1e-6


def assert_parity(ours: torch.Tensor, theirs: torch.Tensor, dtype: torch.dtype) -> None:
    assert ours.dtype == theirs.dtype == dtype
    assert torch.isfinite(ours)
    torch.testing.assert_close(ours, theirs, rtol=RTOL, atol=ATOL[dtype])


def make_generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def randn(*shape: int, dtype: torch.dtype, generator: torch.Generator) -> torch.Tensor:
    return torch.randn(*shape, generator=generator, dtype=torch.float64).to(dtype)


def make_mask(
    batch: int, length: int, dtype: torch.dtype, generator: torch.Generator, min_len: int = 1
) -> torch.Tensor:
    """Right-padded (B, L) mask with random lengths in [min_len, L]; one row is full."""
    lengths = torch.randint(min_len, length + 1, (batch,), generator=generator)
    lengths[0] = length
    mask = torch.arange(length).unsqueeze(0) < lengths.unsqueeze(1)
    return mask.to(dtype)


def make_scores(
    batch: int, heads: int | None, length: int, dtype: torch.dtype, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention scores with BERT's additive -10000 mask on padded keys, and the (B, L) mask.

    Half the scores are negative, so the ``<= -1e-3`` rule of the unmasked losses matters.
    """
    mask = make_mask(batch, length, torch.long, generator)
    shape = (batch, length, length) if heads is None else (batch, heads, length, length)
    scores = randn(*shape, dtype=dtype, generator=generator) * 2
    additive = (1 - mask.to(dtype)) * -10000.0  # (B, L) over keys
    if heads is None:
        return scores + additive[:, None, :], mask
    return scores + additive[:, None, None, :], mask


# ---------------------------------------------------------------------------------------------
# KD losses on logits
# ---------------------------------------------------------------------------------------------

KD_PAIRS = [(losses.kd_ce_loss, tb.kd_ce_loss), (losses.kd_mse_loss, tb.kd_mse_loss)]
LOGIT_SHAPES = [(4, 3), (16, 10), (2, 6, 7), (3, 5, 33)]


def make_temperature(kind: str, shape: tuple[int, ...], dtype: torch.dtype, generator):
    if kind == "default":
        return 1
    if kind == "float":
        return 2.5
    if kind == "scalar_tensor":
        return torch.tensor(3.0, dtype=dtype)
    # per-row, as returned by the flsw/cwsm schedulers: logits.shape[:-1]
    return (0.5 + 4 * torch.rand(shape[:-1], generator=generator, dtype=torch.float64)).to(dtype)


@pytest.mark.parametrize("ours, theirs", KD_PAIRS, ids=["ce", "mse"])
@pytest.mark.parametrize("shape", LOGIT_SHAPES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("temperature_kind", ["default", "float", "scalar_tensor", "per_row"])
def test_kd_loss_parity(ours, theirs, shape, dtype, temperature_kind):
    generator = make_generator(sum(shape))
    logits_S = randn(*shape, dtype=dtype, generator=generator) * 3
    logits_T = randn(*shape, dtype=dtype, generator=generator) * 3
    temperature = make_temperature(temperature_kind, shape, dtype, generator)
    expected = theirs(logits_S, logits_T, temperature)
    assert_parity(ours(logits_S, logits_T, temperature), expected, dtype)


def test_kd_ce_has_no_temperature_squared_factor():
    generator = make_generator(0)
    logits_S = randn(8, 5, dtype=torch.float64, generator=generator)
    logits_T = randn(8, 5, dtype=torch.float64, generator=generator)
    hand = -(F.softmax(logits_T / 4, -1) * F.log_softmax(logits_S / 4, -1)).sum(-1).mean()
    torch.testing.assert_close(losses.kd_ce_loss(logits_S, logits_T, 4.0), hand)


@pytest.mark.parametrize("shape", [(6, 9), (2, 5, 4)])
@pytest.mark.parametrize("per_row", [False, True])
def test_kd_kl_value_is_ce_minus_teacher_entropy_and_gradient_matches_ce(shape, per_row):
    generator = make_generator(7)
    logits_S = randn(*shape, dtype=torch.float64, generator=generator).requires_grad_()
    logits_T = randn(*shape, dtype=torch.float64, generator=generator) * 2
    temperature = make_temperature(
        "per_row" if per_row else "float", shape, torch.float64, generator
    )

    kl = losses.kd_kl_loss(logits_S, logits_T, temperature)
    (grad_kl,) = torch.autograd.grad(kl, logits_S)
    ce = losses.kd_ce_loss(logits_S, logits_T, temperature)
    (grad_ce,) = torch.autograd.grad(ce, logits_S)

    scaled_T = logits_T / (temperature.unsqueeze(-1) if per_row else temperature)
    entropy_T = -(F.softmax(scaled_T, -1) * F.log_softmax(scaled_T, -1)).sum(-1).mean()
    torch.testing.assert_close(kl, ce - entropy_T, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grad_kl, grad_ce, rtol=1e-10, atol=1e-14)
    assert kl.item() > 0


def test_kd_kl_is_zero_when_student_equals_teacher_and_handles_zero_probabilities():
    logits = torch.tensor([[1.0, 2.0, -3.0], [0.0, float("-inf"), 5.0]])
    assert losses.kd_kl_loss(logits[:1], logits[:1]).abs().item() < 1e-7
    # a -inf teacher logit gives p_T = 0 exactly: 0 * log 0 must count as 0, not NaN
    value = losses.kd_kl_loss(torch.zeros(1, 3), logits[1:])
    assert torch.isfinite(value)


@pytest.mark.parametrize("shape", [(5, 4), (2, 3, 6)])
@pytest.mark.parametrize("temperature_kind", ["default", "float", "per_row"])
def test_kd_multilabel_matches_hand_formula_and_bce_with_logits(shape, temperature_kind):
    generator = make_generator(3)
    logits_S = randn(*shape, dtype=torch.float64, generator=generator) * 3
    logits_T = randn(*shape, dtype=torch.float64, generator=generator) * 3
    temperature = make_temperature(temperature_kind, shape, torch.float64, generator)
    divisor = temperature.unsqueeze(-1) if temperature_kind == "per_row" else temperature
    scaled_S, probs_T = logits_S / divisor, torch.sigmoid(logits_T / divisor)

    ours = losses.kd_multilabel_loss(logits_S, logits_T, temperature)
    hand = -(probs_T * F.logsigmoid(scaled_S) + (1 - probs_T) * F.logsigmoid(-scaled_S)).mean()
    torch.testing.assert_close(ours, hand, rtol=1e-12, atol=1e-12)
    bce = F.binary_cross_entropy_with_logits(scaled_S, probs_T)
    torch.testing.assert_close(ours, bce, rtol=1e-10, atol=1e-12)
    # softmax CE would be a different number: the test can tell the two apart
    assert abs(ours.item() - losses.kd_ce_loss(logits_S, logits_T, temperature).item()) > 1e-3


# ---------------------------------------------------------------------------------------------
# Attention losses
# ---------------------------------------------------------------------------------------------

ATTENTION_PAIRS = {
    "attention_mse": (losses.att_mse_loss, tb.att_mse_loss),
    "attention_mse_sum": (losses.att_mse_sum_loss, tb.att_mse_sum_loss),
    "attention_ce": (losses.att_ce_loss, tb.att_ce_loss),
    "attention_ce_mean": (losses.att_ce_mean_loss, tb.att_ce_mean_loss),
}
# TextBrewer crashes on (B, L, L) input with a mask for these two (tested below).
NO_3D_MASK_IN_TEXTBREWER = {"attention_mse", "attention_ce"}
ATTENTION_SHAPES = [(2, 3, 5), (4, 2, 9), (3, 4, 16)]  # (B, H, L)


# Every (loss, rank, mask dtype) TextBrewer supports; the rest is covered by
# test_3d_attention_with_mask_is_one_head.
ATTENTION_CASES = [
    (name, rank, mask_dtype)
    for name in sorted(ATTENTION_PAIRS)
    for rank in (3, 4)
    for mask_dtype in (None, *MASK_DTYPES)
    if not (rank == 3 and mask_dtype is not None and name in NO_3D_MASK_IN_TEXTBREWER)
]


@pytest.mark.parametrize("name, rank, mask_dtype", ATTENTION_CASES)
@pytest.mark.parametrize("batch, heads, length", ATTENTION_SHAPES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_attention_loss_parity(name, rank, mask_dtype, batch, heads, length, dtype):
    ours, theirs = ATTENTION_PAIRS[name]
    generator = make_generator(batch * 100 + heads * 10 + length)
    head_dim = heads if rank == 4 else None
    scores_S, mask = make_scores(batch, head_dim, length, dtype, generator)
    scores_T = scores_S + randn(*scores_S.shape, dtype=dtype, generator=generator)
    mask = None if mask_dtype is None else mask.to(mask_dtype)
    assert_parity(ours(scores_S, scores_T, mask), theirs(scores_S, scores_T, mask), dtype)


def test_unmasked_attention_mse_zeroes_negative_scores():
    scores_S = torch.tensor([[[[-0.5, 2.0], [-0.0005, 1.0]]]])
    scores_T = torch.zeros_like(scores_S)
    # -0.5 is zeroed; -0.0005 is above the -1e-3 threshold and kept
    expected = torch.tensor((4.0 + 0.0005**2 + 1.0) / 4)
    torch.testing.assert_close(losses.att_mse_loss(scores_S, scores_T), expected)


@pytest.mark.parametrize("name", ["attention_mse_sum", "attention_ce_mean"])
def test_head_reduced_attention_losses_accept_different_head_counts(name):
    ours, theirs = ATTENTION_PAIRS[name]
    generator = make_generator(11)
    scores_S, mask = make_scores(3, 2, 7, torch.float64, generator)
    scores_T, _ = make_scores(3, 6, 7, torch.float64, generator)
    for m in (None, mask):
        assert_parity(ours(scores_S, scores_T, m), theirs(scores_S, scores_T, m), torch.float64)


@pytest.mark.parametrize("name", sorted(NO_3D_MASK_IN_TEXTBREWER))
@pytest.mark.parametrize("mask_dtype", MASK_DTYPES)
def test_3d_attention_with_mask_is_one_head(name, mask_dtype):
    ours, theirs = ATTENTION_PAIRS[name]
    generator = make_generator(5)
    scores_S, mask = make_scores(4, None, 8, torch.float64, generator)
    scores_T = scores_S + randn(*scores_S.shape, dtype=torch.float64, generator=generator)
    mask = mask.to(mask_dtype)
    with pytest.raises(RuntimeError):
        theirs(scores_S, scores_T, mask)
    value = ours(scores_S, scores_T, mask)
    one_head = theirs(scores_S.unsqueeze(1), scores_T.unsqueeze(1), mask)
    assert_parity(value, one_head, torch.float64)
    torch.testing.assert_close(value, ours(scores_S.unsqueeze(1), scores_T.unsqueeze(1), mask))


# ---------------------------------------------------------------------------------------------
# Hidden-state losses
# ---------------------------------------------------------------------------------------------

HIDDEN_PAIRS = {
    "hidden_mse": (losses.hid_mse_loss, tb.hid_mse_loss),
    "cos": (losses.cos_loss, tb.cos_loss),
}
HIDDEN_SHAPES = [(2, 5, 4), (4, 9, 16), (3, 17, 32)]  # (B, L, D)


@pytest.mark.parametrize("name", sorted(HIDDEN_PAIRS))
@pytest.mark.parametrize("shape", HIDDEN_SHAPES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("mask_dtype", [None, *MASK_DTYPES])
def test_hidden_loss_parity(name, shape, dtype, mask_dtype):
    ours, theirs = HIDDEN_PAIRS[name]
    generator = make_generator(sum(shape))
    state_S = randn(*shape, dtype=dtype, generator=generator)
    state_T = randn(*shape, dtype=dtype, generator=generator)
    mask = None
    if mask_dtype is not None:
        mask = make_mask(shape[0], shape[1], mask_dtype, generator)
    assert_parity(ours(state_S, state_T, mask), theirs(state_S, state_T, mask), dtype)


def test_cos_loss_accepts_non_contiguous_input():
    generator = make_generator(2)
    # (L, B, D) transposed to (B, L, D): a non-contiguous view
    state_S = randn(6, 3, 8, dtype=torch.float64, generator=generator).transpose(0, 1)
    state_T = randn(6, 3, 8, dtype=torch.float64, generator=generator).transpose(0, 1)
    assert not state_S.is_contiguous()
    with pytest.raises(RuntimeError, match="view size is not compatible"):
        tb.cos_loss(state_S, state_T)
    expected = tb.cos_loss(state_S.contiguous(), state_T.contiguous())
    assert_parity(losses.cos_loss(state_S, state_T), expected, torch.float64)


@pytest.mark.parametrize("rank", [2, 3])
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_pkd_loss_parity(rank, dtype):
    generator = make_generator(rank)
    shape = (5, 7, 12) if rank == 3 else (5, 12)
    state_S = randn(*shape, dtype=dtype, generator=generator)
    state_T = randn(*shape, dtype=dtype, generator=generator)
    mask = make_mask(5, 7, torch.long, generator)  # ignored by both
    assert_parity(losses.pkd_loss(state_S, state_T, mask), tb.pkd_loss(state_S, state_T), dtype)


def test_pkd_uses_position_zero_only():
    generator = make_generator(4)
    state_S = randn(3, 5, 6, dtype=torch.float64, generator=generator)
    state_T = randn(3, 5, 6, dtype=torch.float64, generator=generator)
    torch.testing.assert_close(
        losses.pkd_loss(state_S, state_T), losses.pkd_loss(state_S[:, 0], state_T[:, 0])
    )


# ---------------------------------------------------------------------------------------------
# Two-layer losses: fsp / gram and mmd / nst
# ---------------------------------------------------------------------------------------------


MMD_SHAPES = [(2, 5, 4, 4), (4, 11, 8, 20), (3, 16, 24, 6)]  # (B, L, D_S, D_T)


def make_pair(batch, length, dim, dtype, generator):
    return [randn(batch, length, dim, dtype=dtype, generator=generator) for _ in range(2)]


@pytest.mark.parametrize("batch, length, dim", [(2, 5, 4), (4, 11, 8), (3, 16, 24)])
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("mask_dtype", [None, *MASK_DTYPES])
def test_fsp_loss_parity(batch, length, dim, dtype, mask_dtype):
    generator = make_generator(batch + length + dim)
    state_S = make_pair(batch, length, dim, dtype, generator)
    state_T = make_pair(batch, length, dim, dtype, generator)
    mask = None if mask_dtype is None else make_mask(batch, length, mask_dtype, generator)
    assert_parity(
        losses.fsp_loss(state_S, state_T, mask), tb.fsp_loss(state_S, state_T, mask), dtype
    )


@pytest.mark.parametrize("batch, length, dim_S, dim_T", MMD_SHAPES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_mmd_loss_unmasked_parity(batch, length, dim_S, dim_T, dtype):
    generator = make_generator(batch + length + dim_S + dim_T)
    state_S = make_pair(batch, length, dim_S, dtype, generator)
    state_T = make_pair(batch, length, dim_T, dtype, generator)
    assert_parity(losses.mmd_loss(state_S, state_T), tb.mmd_loss(state_S, state_T), dtype)


def mmd_head_formula(state_S, state_T, mask):
    """TextBrewer HEAD (commit 3496f3e) masked mmd_loss, written out independently."""
    mask = mask.to(state_S[0])
    gram_S = state_S[0] @ state_S[1].transpose(1, 2) / state_S[1].shape[2]
    gram_T = state_T[0] @ state_T[1].transpose(1, 2) / state_T[1].shape[2]
    pair_mask = mask[:, :, None] * mask[:, None, :]
    return ((gram_S - gram_T) ** 2 * pair_mask).sum() / pair_mask.sum()


@pytest.mark.parametrize("batch, length, dim_S, dim_T", MMD_SHAPES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("mask_dtype", MASK_DTYPES)
def test_mmd_loss_masked_matches_head_formula(batch, length, dim_S, dim_T, dtype, mask_dtype):
    generator = make_generator(batch * length + dim_S * dim_T)
    state_S = make_pair(batch, length, dim_S, dtype, generator)
    state_T = make_pair(batch, length, dim_T, dtype, generator)
    mask = make_mask(batch, length, mask_dtype, generator)
    expected = mmd_head_formula(state_S, state_T, mask)
    assert_parity(losses.mmd_loss(state_S, state_T, mask), expected, dtype)


def test_mmd_loss_masked_differs_from_pypi_only_by_length_normalisation():
    batch, length, dim_S, dim_T = 3, 7, 12, 5
    generator = make_generator(99)
    state_S = make_pair(batch, length, dim_S, torch.float64, generator)
    state_T = make_pair(batch, length, dim_T, torch.float64, generator)
    mask = make_mask(batch, length, torch.long, generator)

    ours = losses.mmd_loss(state_S, state_T, mask)
    pypi = tb.mmd_loss(state_S, state_T, mask)
    assert not torch.allclose(ours, pypi, rtol=1e-2)
    # PyPI divides the masked grams by L instead of D: rescaling the first layer by D/L
    # turns our normalisation into PyPI's.
    rescaled_S = [state_S[0] * dim_S / length, state_S[1]]
    rescaled_T = [state_T[0] * dim_T / length, state_T[1]]
    assert_parity(losses.mmd_loss(rescaled_S, rescaled_T, mask), pypi, torch.float64)

    ones = torch.ones(batch, length, dtype=torch.long)
    unmasked = losses.mmd_loss(state_S, state_T)
    assert_parity(losses.mmd_loss(state_S, state_T, ones), unmasked, torch.float64)
    assert not torch.allclose(tb.mmd_loss(state_S, state_T, ones), unmasked, rtol=1e-2)


# ---------------------------------------------------------------------------------------------
# Empty masks, dtypes, gradients
# ---------------------------------------------------------------------------------------------

MASKED_LOSSES = {
    "attention_mse": (losses.att_mse_loss, "attention4"),
    "attention_mse_3d": (losses.att_mse_loss, "attention3"),
    "attention_mse_sum": (losses.att_mse_sum_loss, "attention4"),
    "attention_ce": (losses.att_ce_loss, "attention4"),
    "attention_ce_3d": (losses.att_ce_loss, "attention3"),
    "attention_ce_mean": (losses.att_ce_mean_loss, "attention4"),
    "hidden_mse": (losses.hid_mse_loss, "hidden"),
    "cos": (losses.cos_loss, "hidden"),
    "fsp": (losses.fsp_loss, "pair"),
    "mmd": (losses.mmd_loss, "pair"),
}


def make_features(kind: str, dtype: torch.dtype, generator: torch.Generator, requires_grad=False):
    batch, heads, length, dim = 2, 3, 6, 8
    shape = {
        "attention4": (batch, heads, length, length),
        "attention3": (batch, length, length),
        "hidden": (batch, length, dim),
    }
    if kind == "pair":
        state_S = [
            t.requires_grad_(requires_grad) for t in make_pair(batch, length, dim, dtype, generator)
        ]
        return state_S, make_pair(batch, length, dim, dtype, generator), state_S
    state_S = randn(*shape[kind], dtype=dtype, generator=generator).requires_grad_(requires_grad)
    return state_S, randn(*shape[kind], dtype=dtype, generator=generator), [state_S]


@pytest.mark.parametrize("name", sorted(MASKED_LOSSES))
@pytest.mark.parametrize("mask_dtype", MASK_DTYPES)
def test_all_zero_mask_gives_zero_and_finite_gradients(name, mask_dtype):
    loss_fn, kind = MASKED_LOSSES[name]
    state_S, state_T, leaves = make_features(kind, torch.float32, make_generator(1), True)
    mask = torch.zeros(2, 6, dtype=mask_dtype)
    value = loss_fn(state_S, state_T, mask)
    assert value.item() == 0.0
    grads = torch.autograd.grad(value, leaves)
    assert all(torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("name", ["hidden_mse", "cos", "attention_mse", "mmd"])
def test_textbrewer_gives_nan_on_an_all_zero_mask(name):
    """Pins the bug the fix above addresses (if TextBrewer changed, revisit the fix)."""
    theirs = {
        "hidden_mse": tb.hid_mse_loss,
        "cos": tb.cos_loss,
        "attention_mse": tb.att_mse_loss,
        "mmd": tb.mmd_loss,
    }[name]
    kind = MASKED_LOSSES[name][1]
    state_S, state_T, _ = make_features(kind, torch.float32, make_generator(1))
    assert torch.isnan(theirs(state_S, state_T, torch.zeros(2, 6, dtype=torch.long)))


def test_fsp_with_one_empty_example_counts_it_as_a_zero_gram():
    generator = make_generator(8)
    batch, length, dim = 3, 5, 4
    state_S = make_pair(batch, length, dim, torch.float64, generator)
    state_T = make_pair(batch, length, dim, torch.float64, generator)
    mask = make_mask(batch, length, torch.long, generator)
    mask[2] = 0
    assert torch.isnan(tb.fsp_loss(state_S, state_T, mask))
    # both grams of the empty example are 0, so it adds 0 to a mean over B*D*D
    rest = tb.fsp_loss([s[:2] for s in state_S], [t[:2] for t in state_T], mask[:2])
    torch.testing.assert_close(losses.fsp_loss(state_S, state_T, mask), rest * 2 / 3)


KD_LOSSES = {
    "kd_ce": losses.kd_ce_loss,
    "kd_mse": losses.kd_mse_loss,
    "kd_kl": losses.kd_kl_loss,
    "kd_multilabel": losses.kd_multilabel_loss,
}
LOW_PRECISION_CASES = [
    *[(name, "float") for name in KD_LOSSES],
    *[(name, "per_row") for name in KD_LOSSES],
    ("pkd", None),
    *[(name, masked) for name in MASKED_LOSSES for masked in ("masked", "unmasked")],
]


def call_loss(name, option, state_S, state_T, mask):
    """Call one loss on lists of features (two-layer losses take both, others the first)."""
    if name in KD_LOSSES:
        temperature = 2.0 if option == "float" else mask.to(state_S[0]) + 1.5  # (B, L)
        return KD_LOSSES[name](state_S[0], state_T[0], temperature)
    if name == "pkd":
        return losses.pkd_loss(state_S[0], state_T[0])
    loss_fn, kind = MASKED_LOSSES[name]
    if kind != "pair":
        state_S, state_T = state_S[0], state_T[0]
    return loss_fn(state_S, state_T, mask if option == "masked" else None)


@pytest.mark.parametrize("name, option", LOW_PRECISION_CASES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_smoke(name, option, dtype):
    kind = MASKED_LOSSES[name][1] if name in MASKED_LOSSES else "hidden"
    generator = make_generator(12)
    state_S, state_T, _ = make_features(kind, torch.float64, generator)
    state_S = state_S if isinstance(state_S, list) else [state_S]
    state_T = state_T if isinstance(state_T, list) else [state_T]
    mask = make_mask(2, 6, torch.long, generator, min_len=2)
    low_S = [s.to(dtype).requires_grad_() for s in state_S]
    low_T = [t.to(dtype) for t in state_T]

    value = call_loss(name, option, low_S, low_T, mask)
    assert value.dtype == dtype
    reference = call_loss(name, option, state_S, state_T, mask)
    torch.testing.assert_close(value.double(), reference, rtol=5e-2, atol=2e-2)
    grads = torch.autograd.grad(value, low_S)
    assert all(g.dtype == dtype and torch.isfinite(g).all() for g in grads)


# ---------------------------------------------------------------------------------------------
# probability_shift
# ---------------------------------------------------------------------------------------------


def make_logits_and_labels(shape, generator, ignored_fraction=0.0):
    logits = randn(*shape, dtype=torch.float32, generator=generator)
    labels = torch.randint(0, shape[-1], shape[:-1], generator=generator)
    ignored = torch.rand(shape[:-1], generator=generator) < ignored_fraction
    return logits, labels.masked_fill(ignored, -100), ignored


@pytest.mark.parametrize("shape", [(8, 5), (3, 4, 6)])
def test_probability_shift_matches_textbrewer_for_valid_labels(shape):
    logits, labels, _ = make_logits_and_labels(shape, make_generator(20))
    expected = tb_probability_shift_(logits.clone(), labels.clone())
    ours_input = logits.clone()
    result = losses.probability_shift_(ours_input, labels)
    assert result is ours_input
    assert torch.equal(result, expected)
    assert not torch.equal(result, logits)  # some rows were actually swapped
    assert (result.argmax(-1) == labels).all()


@pytest.mark.parametrize("shape", [(40, 5), (6, 7, 5)])
def test_probability_shift_ignores_negative_labels(shape):
    logits, labels, ignored = make_logits_and_labels(shape, make_generator(21), 0.4)
    assert ignored.any() and (~ignored).any()
    shifted = losses.probability_shift(logits, labels)
    assert torch.equal(shifted[ignored], logits[ignored])
    valid_rows = logits[~ignored].clone()
    expected = tb_probability_shift_(valid_rows, labels[~ignored])
    assert torch.equal(shifted[~ignored], expected)
    if len(shape) == 3:  # TextBrewer already skips negative labels on rank 3
        assert torch.equal(shifted, tb_probability_shift_(logits.clone(), labels.clone()))


def test_probability_shift_rank2_negative_labels_are_bugs_in_textbrewer():
    logits = torch.tensor([[0.1, 3.0, 0.2], [2.0, 0.0, 1.0]])
    with pytest.raises(IndexError):
        tb_probability_shift_(logits.clone(), torch.tensor([-100, 0]))
    # -1 silently swaps with the last class in TextBrewer; cachebrew leaves the row alone
    swapped = tb_probability_shift_(logits.clone(), torch.tensor([-1, 0]))
    assert torch.equal(swapped[0], torch.tensor([0.1, 0.2, 3.0]))
    ours = losses.probability_shift(logits, torch.tensor([-1, 2]))
    assert torch.equal(ours, torch.tensor([[0.1, 3.0, 0.2], [1.0, 0.0, 2.0]]))


def test_probability_shift_copy_leaves_input_and_in_place_handles_non_contiguous():
    logits, labels, _ = make_logits_and_labels((4, 3, 5), make_generator(22))
    original = logits.clone()
    shifted = losses.probability_shift(logits, labels)
    assert torch.equal(logits, original)
    # same values, non-contiguous layout
    transposed = original.transpose(0, 1).contiguous().transpose(0, 1)
    assert not transposed.is_contiguous()
    assert losses.probability_shift_(transposed, labels) is transposed
    assert torch.equal(transposed, shifted)


@pytest.mark.parametrize(
    "shape, label_shape, match",
    [
        ((5,), (5,), "rank 2 or 3"),
        ((2, 2, 3, 4), (2, 2, 3), "rank 2 or 3"),
        ((6, 4), (2, 3), "labels shape"),
    ],
)
def test_probability_shift_rejects_bad_shapes(shape, label_shape, match):
    with pytest.raises(ValueError, match=match):
        losses.probability_shift_(torch.zeros(shape), torch.zeros(label_shape, dtype=torch.long))


@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize(
    ("loss", "reduce"),
    [(losses.att_mse_sum_loss, "sum"), (losses.att_ce_mean_loss, "mean")],
)
def test_head_reduced_teacher_pairs_with_a_full_student(loss, reduce, masked) -> None:
    """A cache stores the teacher's head-sum/head-mean; the loss must equal the full-teacher one."""
    torch.manual_seed(0)
    student, teacher = torch.randn(3, 4, 6, 6), torch.randn(3, 2, 6, 6)  # head counts may differ
    mask = (torch.arange(6) < torch.tensor([[6], [4], [2]])).long() if masked else None
    reduced = teacher.sum(dim=1) if reduce == "sum" else teacher.mean(dim=1)
    torch.testing.assert_close(
        loss(student, reduced, mask=mask), loss(student, teacher, mask=mask), rtol=1e-6, atol=1e-7
    )
