"""KD against an ``--logits exact`` cache: teacher logits recomputed in vocabulary chunks.

The teacher side is an :class:`~cachebrew.cache.logits.exact.ExactLogits`: the stored final
hidden states ``h`` (rows, H) and the LM head ``W`` (V, H), ``b``. The loss walks the
vocabulary in chunks of ``c`` ids; per chunk it computes the teacher logits ``t = h W_c^T + b_c``
and reads the student's ``z_c``, and keeps per-row running sums with an online log-sum-exp
(the running maximum rescales the sums when it grows), so no (rows, V) tensor is built on the
teacher side, forward or backward: the temporaries are (rows, c). The backward recomputes
each chunk and writes the student's gradient chunk by chunk.

TextBrewer's losses at temperature T, with ``p = softmax(t / T)``, ``s = softmax(z / T)``:

- ``ce``: ``mean_rows(-sum_j p_j log s_j) = mean_rows(lse(z / T) - sum_j p_j z_j / T)``;
  gradient ``(s - p) / (T rows)``.
- ``kl``: ``ce`` minus the teacher's entropy ``lse(t / T) - sum_j p_j t_j / T`` (same gradient).
- ``mse``: ``mean over rows and ids of (z / T - t / T)^2``; gradient
  ``2 (z - t) / (T^2 rows V)``.

They equal :func:`~cachebrew.losses.kd_ce_loss`, ``kd_kl_loss`` and ``kd_mse_loss`` on the
dense logits ``h W^T + b`` (tested to 1e-6, loss and gradient). Row sums accumulate in float64;
the chunk temporaries are float32. ``kd_t2_scale`` is applied by the caller.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from cachebrew.cache.logits.exact import ExactLogits, LMHead
from cachebrew.errors import ConfigError

EXACT_KD_LOSSES: tuple[str, ...] = ("ce", "kl", "mse")
#: Vocabulary ids per chunk: (rows, 4096) float32 temporaries, 2 MB per 128 rows.
DEFAULT_CHUNK = 4096


def _chunks(num_classes: int, chunk: int) -> range:
    return range(0, num_classes, chunk)


def _row_dot(a: Tensor, b: Tensor) -> Tensor:
    """``sum_j a_ij b_ij`` per row, (rows, c) x (rows, c) -> (rows,) float64 (one BLAS pass)."""
    return torch.bmm(a.unsqueeze(1), b.unsqueeze(2)).view(-1).double()


def _teacher_chunk(head: LMHead, hidden: Tensor, start: int, stop: int, t: float) -> Tensor:
    return head.logits(hidden, start, stop).div_(t)  # (rows, c) float32


class _ExactKD(torch.autograd.Function):
    """Per-row KD loss (rows,) of student logits against ``head(hidden)``, chunk by chunk."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        logits_S: Tensor,
        hidden: Tensor,
        head: LMHead,
        temperature: float,
        loss_type: str,
        chunk: int,
    ) -> Tensor:
        rows, vocab = logits_S.shape

        def zeros() -> Tensor:
            return logits_S.new_zeros(rows, dtype=torch.float64)

        if loss_type == "mse":
            total = zeros()
            for a in _chunks(vocab, chunk):
                t = _teacher_chunk(head, hidden, a, a + chunk, temperature)
                diff = logits_S[:, a : a + chunk].float().div(temperature).sub_(t)
                total += _row_dot(diff, diff)
            ctx.save_for_backward(logits_S, hidden)
            ctx.args = (head, temperature, loss_type, chunk, None, None)
            return (total / vocab).float()
        lse_t, lse_z = zeros() - torch.inf, zeros() - torch.inf  # running log-sum-exps
        p_dot_z, p_dot_t = zeros(), zeros()  # running sum_j p_j z_j / T, sum_j p_j t_j / T
        for a in _chunks(vocab, chunk):
            t = _teacher_chunk(head, hidden, a, a + chunk, temperature)  # (rows, c)
            z = logits_S[:, a : a + chunk].float().div(temperature)  # (rows, c)
            lse_c = torch.logsumexp(t, 1)  # (rows,)
            p_c = t.sub(lse_c[:, None]).exp_()  # (rows, c): softmax within the chunk
            new = torch.logaddexp(lse_t, lse_c.double())
            old_share, chunk_share = (lse_t - new).exp(), (lse_c.double() - new).exp()
            p_dot_z = p_dot_z * old_share + _row_dot(p_c, z) * chunk_share
            if loss_type == "kl":
                p_dot_t = p_dot_t * old_share + _row_dot(p_c, t) * chunk_share
            lse_t = new
            lse_z = torch.logaddexp(lse_z, torch.logsumexp(z, 1).double())
        loss = lse_z - p_dot_z  # ce
        if loss_type == "kl":
            loss = loss + p_dot_t - lse_t
        ctx.save_for_backward(logits_S, hidden)
        ctx.args = (head, temperature, loss_type, chunk, lse_t.float(), lse_z.float())
        return loss.float()

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        logits_S, hidden = ctx.saved_tensors
        head, temperature, loss_type, chunk, lse_t, lse_z = ctx.args
        grad_S = torch.empty_like(logits_S)
        vocab = logits_S.shape[1]
        for a in _chunks(vocab, chunk):
            t = _teacher_chunk(head, hidden, a, a + chunk, temperature)
            z = logits_S[:, a : a + chunk].float().div(temperature)  # a copy: never in place
            if loss_type == "mse":  # d/dz of sum_j (z/T - t/T)^2 / V
                part = z.sub_(t).mul_(grad[:, None] * (2.0 / (temperature * vocab)))
            else:  # (s - p) / T
                p = t.sub_(lse_t[:, None]).exp_()
                part = z.sub_(lse_z[:, None]).exp_().sub_(p).mul_(grad[:, None] / temperature)
            grad_S[:, a : a + chunk] = part
        return grad_S, None, None, None, None, None


def exact_kd_loss(
    logits_S: Tensor,
    teacher: ExactLogits,
    temperature: float | Tensor,
    *,
    loss_type: str = "ce",
    chunk: int = DEFAULT_CHUNK,
) -> Tensor:
    """The KD loss of (rows, V) student logits against an exact-logits teacher (module doc).

    Args:
        logits_S: (rows, V) student logits (already selected by ``logits_mask``).
        teacher: the cache's hidden states and LM head, same row order.
        temperature: a float (a per-row tensor temperature is refused).
        loss_type: ``ce``, ``kl`` or ``mse`` (``kd_loss_type``).
        chunk: vocabulary ids per chunk.

    Raises:
        ConfigError: a per-row temperature, another loss type, or a row/vocabulary mismatch.
    """
    if isinstance(temperature, Tensor):
        raise ConfigError(
            "exact teacher logits take a constant temperature; per-row schedulers (flsw, cwsm) "
            "need the dense teacher logits"
        )
    if loss_type not in EXACT_KD_LOSSES:
        raise ConfigError(
            f"kd_loss_type {loss_type!r} has no chunked form; with an exact cache choose one of "
            f"{list(EXACT_KD_LOSSES)}"
        )
    if tuple(logits_S.shape) != teacher.shape:
        raise ConfigError(
            f"student logits {tuple(logits_S.shape)} do not match the cache's exact teacher "
            f"rows {teacher.shape} (rows, vocabulary of its LM head)"
        )
    head = teacher.head.to(logits_S.device)
    hidden = teacher.hidden.to(logits_S.device)
    per_row: Tensor = _ExactKD.apply(
        logits_S, hidden, head, float(temperature), loss_type, max(1, int(chunk))
    )
    return per_row.mean()
