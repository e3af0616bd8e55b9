"""KD losses on sparse teacher rows (``--logits topk:K`` / ``sample:N`` caches), never (rows, V).

The teacher side is a :class:`~cachebrew.cache.logits.sparse.SparseLogits`: (rows, k) ids and
log-probabilities. The student's log-softmax is needed only at those ids, which
``_StudentLogprobs`` computes in row chunks with a hand-written backward that writes the
log-sum-exp's and the gather's gradients into one buffer, so the temporaries are (chunk, V) and
the student's gradient is the only (rows, V) tensor (:func:`scaled_logsumexp` is the same
log-sum-exp on its own). Every loss is TextBrewer's ``ce`` form,
``mean_rows(-sum_j p_j log s_j)`` with ``s = softmax(z_S / T)`` (Hinton et al. 2015), over a
sparse target ``p``; ``kl`` subtracts the target's entropy (same gradient). ``kd_t2_scale``
is applied by the caller as for dense logits.

Targets ``p`` (q = the teacher's distribution at T = 1, K = the stored top-k ids):

- ``topk`` + ``tail`` (default): k + 1 buckets, the top-k ids and one tail bucket holding
  ``1 - sum_K q`` (from the stored log-sum-exp), ``p = softmax(log q_K / T, log tail / T)``;
  the student's tail is ``1 - sum_K s``. At T = 1 every bucket mass is the teacher's exact
  mass. At T != 1 the tail's tempered mass ``sum_tail q_j^(1/T)`` would need the tail's shape,
  which is not stored: the bucket gets ``tail^(1/T)``, what a tail held by one id would give
  (for T > 1 this underweights a spread tail, whose tempered mass is up to
  ``(V - k)^(1 - 1/T)`` times larger).
- ``topk`` + ``renorm``: DistillKit's ``missing_probability_handling: zero``:
  ``p = softmax(log q_K / T)`` over K only, the tail dropped; a biased estimator
  (Anshumann et al. 2025), kept for comparison.
- ``sample`` (random-sampling KD, Anshumann et al., ACL 2025): ``p_j = counts_j / N`` from N
  draws of the teacher at the cache's sampling temperature; ``E[p] = q_T``, so the loss and
  its gradient are unbiased estimates of the dense ones **at T = the sampling temperature**
  (another T is refused: ``counts^(1/T)`` is not an unbiased estimate of anything useful).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from cachebrew.cache.logits.sparse import SparseLogits
from cachebrew.errors import ConfigError

TOPK_TARGETS: tuple[str, ...] = ("tail", "renorm")
SPARSE_KD_LOSSES: tuple[str, ...] = ("ce", "kl")
# Rows per chunk of the student's log-sum-exp: the (chunk, V) temporaries stay ~40 MB at V=152k.
DEFAULT_CHUNK_ROWS = 64


def _scaled(chunk: Tensor, temperature: float) -> Tensor:
    """``chunk / T`` in float32 (no copy of a float32 chunk at T = 1)."""
    chunk = chunk.float()
    return chunk if temperature == 1 else chunk * (1.0 / temperature)


def _softmax_chunk(chunk: Tensor, lse: Tensor, temperature: float, dest: Tensor) -> Tensor:
    """``softmax(chunk / T)`` (c, V) float32 from the rows' ``logsumexp(chunk / T)`` (c,).

    ``exp(chunk / T - lse)`` in two passes, written into ``dest`` (the gradient's rows) when it
    is float32, so the caller copies nothing; a new tensor otherwise (half-precision logits).
    """
    out = dest if dest.dtype == torch.float32 else None
    return torch.add(-lse[:, None], chunk, alpha=1.0 / temperature, out=out).exp_()


class _ScaledLogSumExp(torch.autograd.Function):
    """``logsumexp(z / T)`` per row, in row chunks; saves only ``z`` and the result."""

    @staticmethod
    def forward(ctx: Any, logits: Tensor, temperature: float, chunk_rows: int) -> Tensor:
        out = logits.new_empty(logits.shape[0], dtype=torch.float32)
        for start in range(0, logits.shape[0], chunk_rows):
            chunk = _scaled(logits[start : start + chunk_rows], temperature)  # (c, V)
            out[start : start + chunk_rows] = torch.logsumexp(chunk, dim=-1)
        ctx.save_for_backward(logits, out)
        ctx.temperature, ctx.chunk_rows = temperature, chunk_rows
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None]:
        logits, out = ctx.saved_tensors
        temperature, chunk_rows = ctx.temperature, ctx.chunk_rows
        grad_logits = torch.empty_like(logits)
        for start in range(0, logits.shape[0], chunk_rows):
            stop = start + chunk_rows
            dest = grad_logits[start:stop]
            chunk = _softmax_chunk(logits[start:stop], out[start:stop], temperature, dest)
            chunk.mul_(grad[start:stop, None] / temperature)  # d lse / d z = softmax(z / T) / T
            if chunk is not dest:
                dest.copy_(chunk)
        return grad_logits, None, None


def scaled_logsumexp(
    logits: Tensor, temperature: float, chunk_rows: int = DEFAULT_CHUNK_ROWS
) -> Tensor:
    """``logsumexp(logits / T, dim=-1)``: (rows, V) -> (rows,) float32, with (chunk, V) memory."""
    result: Tensor = _ScaledLogSumExp.apply(logits, float(temperature), max(1, chunk_rows))
    return result


def _log1mexp(x: Tensor) -> Tensor:
    """``log(1 - exp(x))`` for x <= 0, stable on both sides of -ln 2 (float64)."""
    x = x.double().clamp_max(-1e-30)
    return torch.where(x > -math.log(2), torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


class _StudentLogprobs(torch.autograd.Function):
    """``log softmax(z / T)`` at ``ids`` (rows, k), in row chunks. The backward writes the
    log-sum-exp's and the gather's gradients into one (rows, V) buffer (autograd would hold
    two: the gather scatters into a dense zeros tensor before the sum)."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, logits: Tensor, ids: Tensor, temperature: float, chunk_rows: int
    ) -> Tensor:
        lse = logits.new_empty(logits.shape[0], dtype=torch.float32)
        for start in range(0, logits.shape[0], chunk_rows):
            chunk = _scaled(logits[start : start + chunk_rows], temperature)  # (c, V)
            lse[start : start + chunk_rows] = torch.logsumexp(chunk, dim=-1)
        ctx.save_for_backward(logits, ids, lse)
        ctx.temperature, ctx.chunk_rows = temperature, chunk_rows
        return logits.gather(1, ids).float() / temperature - lse[:, None]

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None, None]:  # type: ignore[override]
        logits, ids, lse = ctx.saved_tensors
        temperature, chunk_rows = ctx.temperature, ctx.chunk_rows
        grad = grad.float() / temperature  # (rows, k)
        total = grad.sum(1, keepdim=True)  # (rows, 1)
        grad_logits = torch.empty_like(logits)
        for start in range(0, logits.shape[0], chunk_rows):
            stop = start + chunk_rows
            dest = grad_logits[start:stop]
            chunk = _softmax_chunk(logits[start:stop], lse[start:stop], temperature, dest)
            chunk.mul_(-total[start:stop]).scatter_add_(1, ids[start:stop], grad[start:stop])
            if chunk is not dest:  # -softmax * sum g, plus g at the ids
                dest.copy_(chunk)
        return grad_logits, None, None, None


def _student_logprobs(logits_S: Tensor, ids: Tensor, temperature: float, chunk_rows: int) -> Tensor:
    """``log softmax(z_S / T)`` at ``ids``: (rows, k)."""
    result: Tensor = _StudentLogprobs.apply(logits_S, ids, float(temperature), max(1, chunk_rows))
    return result


def _cross_entropy(target: Tensor, log_student: Tensor, loss_type: str) -> Tensor:
    """``mean_rows(-sum p log s)``; ``kl`` subtracts the target's entropy (a constant)."""
    present = target > 0
    safe_log_student = torch.where(present, log_student, torch.zeros_like(log_student))
    loss = -(target * safe_log_student).sum(-1).mean()
    if loss_type == "kl":
        entropy = -(target * torch.where(present, target.log(), torch.zeros_like(target)))
        loss = loss - entropy.sum(-1).mean()
    return loss


def topk_tail_targets(teacher: SparseLogits, temperature: float) -> Tensor:
    """The (rows, k + 1) target of ``tail``: top-k buckets then the tail (module docstring)."""
    logq = teacher.logprobs.double()  # (rows, k), T = 1
    log_tail = _log1mexp(torch.logsumexp(logq, dim=-1))  # (rows,), exact at T = 1
    buckets = torch.cat([logq, log_tail[:, None]], dim=1) / temperature
    return buckets.softmax(dim=-1).float()


def topk_tail_loss(
    logits_S: Tensor, teacher: SparseLogits, temperature: float, loss_type: str = "ce",
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
) -> Tensor:  # fmt: skip
    """Top-k with a tail bucket: exact bucket masses at T = 1 (module docstring)."""
    log_s = _student_logprobs(logits_S, teacher.ids, temperature, chunk_rows)  # (rows, k)
    log_s_tail = _log1mexp(torch.logsumexp(log_s, dim=-1)).float()  # (rows,)
    log_student = torch.cat([log_s, log_s_tail[:, None]], dim=1)
    return _cross_entropy(topk_tail_targets(teacher, temperature), log_student, loss_type)


def topk_renorm_loss(
    logits_S: Tensor, teacher: SparseLogits, temperature: float, loss_type: str = "ce",
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
) -> Tensor:  # fmt: skip
    """DistillKit's renormalised top-k: ``p = softmax(log q_K / T)``, the tail dropped."""
    target = (teacher.logprobs.float() / temperature).softmax(dim=-1)
    log_s = _student_logprobs(logits_S, teacher.ids, temperature, chunk_rows)
    return _cross_entropy(target, log_s, loss_type)


def sample_loss(
    logits_S: Tensor, teacher: SparseLogits, temperature: float, loss_type: str = "ce",
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
) -> Tensor:  # fmt: skip
    """Random-sampling KD: ``p = counts / N``, unbiased at the sampling temperature.

    Raises:
        ConfigError: ``temperature`` differs from the temperature the cache sampled at.
    """
    if not math.isclose(temperature, teacher.temperature, rel_tol=1e-6):
        raise ConfigError(
            f"this sample cache drew its ids at temperature {teacher.temperature:g}, and its "
            f"counts are unbiased only there; set distill.temperature to {teacher.temperature:g} "
            f"(got {temperature:g}) or precompute with --logits sample:N@{temperature:g}"
        )
    target = teacher.logprobs.float().exp()  # counts / N, 0 on empty slots
    log_s = _student_logprobs(logits_S, teacher.ids, temperature, chunk_rows)
    return _cross_entropy(target, log_s, loss_type)


def sparse_kd_loss(
    logits_S: Tensor,
    teacher: SparseLogits,
    temperature: float | Tensor,
    *,
    loss_type: str = "ce",
    topk_target: str = "tail",
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
) -> Tensor:
    """The KD loss of (rows, V) student logits against sparse teacher rows.

    Args:
        logits_S: (rows, V) student logits (already selected by ``logits_mask``).
        teacher: the cache's sparse rows, same row order.
        temperature: a float (a per-row tensor temperature is refused).
        loss_type: ``ce`` or ``kl`` (``kd_loss_type``).
        topk_target: ``tail`` or ``renorm`` for top-k caches.

    Raises:
        ConfigError: a loss, target or temperature the sparse path cannot compute exactly,
            or a row/vocabulary mismatch between student and teacher.
    """
    if isinstance(temperature, Tensor):
        raise ConfigError(
            "sparse teacher logits take a constant temperature; per-row schedulers (flsw, "
            "cwsm) need the dense teacher logits"
        )
    if loss_type not in SPARSE_KD_LOSSES:
        raise ConfigError(
            f"kd_loss_type {loss_type!r} has no sparse form; with a {teacher.kind} cache choose "
            f"one of {list(SPARSE_KD_LOSSES)}"
        )
    if tuple(logits_S.shape) != teacher.shape:
        raise ConfigError(
            f"student logits {tuple(logits_S.shape)} do not match the cache's sparse teacher "
            f"rows {teacher.shape} (rows, vocabulary)"
        )
    if teacher.kind == "sample":
        return sample_loss(logits_S, teacher, float(temperature), loss_type, chunk_rows)
    if topk_target not in TOPK_TARGETS:
        raise ConfigError(f"topk target {topk_target!r}; choose one of {list(TOPK_TARGETS)}")
    loss_fn = topk_tail_loss if topk_target == "tail" else topk_renorm_loss
    return loss_fn(logits_S, teacher, float(temperature), loss_type, chunk_rows)
