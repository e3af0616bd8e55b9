"""How faithful a cache's stored logits are to the teacher: the fidelity part of ``verify --teacher``.

For every token row of the examples ``verify`` recomputes, the teacher's fresh (rows, V) logits
are compared with the rows the cache stores, read by the reader ``distill`` uses
(:func:`~cachebrew.cache.feed.collate.teacher_outputs`), so only the rows of the ``logits_mask`` count
(padding and masked positions are never stored):

- **top-1 agreement**: teacher argmax == argmax of the reconstructed distribution;
- **retained mass**: the teacher's probability at T = 1 on the ids the cache stores (1 for a
  dense row), mean and min over rows;
- **KL(teacher || reconstructed)** per row at T = 1, mean and p95. A ``sample`` row gives zero
  probability to every id it did not draw, so its KL is infinite (reported as None, with a note);
- **KD loss gap and gradient gap** at the training temperature T: the KD loss ``distill``
  computes from the stored rows (:class:`~cachebrew.distill.loss.DistillationLoss`, so sparse
  rows go through :mod:`cachebrew.distill.sparse_kd`, for each top-k target) against the dense
  KD loss on the teacher's true logits, for one student
  proxy: **the teacher's logits plus N(0, noise^2) noise** (seeded), a student close to its
  teacher as late in training, where a target's errors weigh most against the gradient.
  ``kl_gap`` and ``ce_gap`` = sparse - dense loss (mean over rows) for ``kd_loss_type`` ``kl``
  and ``ce``: the two have the same gradient but differ by the target's entropy, which a top-k
  target's buckets lack inside the tail (so ``kl`` is the fair gap there) and which one sample
  draw underestimates (so ``ce``, linear in the target, is the unbiased one for ``sample``).
  ``grad_gap`` = ||g_sparse - g_dense|| / ||g_dense|| over all rows, g = d loss / d student
  logits (None when g_dense is 0). No ``kd_t2_scale`` (a common factor T^2).

Reconstruction hook: :data:`RECONSTRUCTIONS` maps a mode's kind (the part of ``--logits`` before
the first ``:``) to a function (stored rows as the reader returns them, V) -> (rows, V) float64
log-probabilities at T = 1, built densely for the sampled rows only. A new mode adds its own
to that dict; rows read as a dense tensor (``dense``, raw or log-probs)
are log-softmaxed, and so are the logits of rows with a ``dense()`` method (rows that rebuild
their full (rows, V) logits) when no function is registered. Memory: one example's (rows, V)
float64 at a time.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any

import numpy as np
import torch
from torch import Tensor

from cachebrew.cache.feed.collate import reader_layout, teacher_outputs
from cachebrew.cache.logits.rows import kl_rows, topk_logprobs
from cachebrew.cache.logits.sparse import SparseLogits
from cachebrew.cache.read.reader import CacheReader
from cachebrew.config import DistillationConfig
from cachebrew.distill.loss import DistillationLoss
from cachebrew.distill.sparse_kd import TOPK_TARGETS
from cachebrew.errors import CachebrewError

Reconstruct = Callable[[Any, int], Tensor]
DEFAULT_NOISE = 1.0
LOSS_TYPES: tuple[str, ...] = ("kl", "ce")  # the first one's gradient is the one compared


def _topk_logprobs(rows: SparseLogits, num_classes: int) -> Tensor:
    """The k stored log-probs exactly, the rest of the mass spread evenly over the other ids."""
    return topk_logprobs(rows.logprobs, rows.ids, num_classes).double()


def _sample_logprobs(rows: SparseLogits, num_classes: int) -> Tensor:
    """``log(counts / N)`` on the drawn ids, -inf elsewhere: the target sampling KD trains on."""
    out = torch.full((rows.ids.shape[0], num_classes), -math.inf, dtype=torch.float64)
    return out.scatter_reduce_(1, rows.ids.long(), rows.logprobs.double(), reduce="amax")


RECONSTRUCTIONS: dict[str, Reconstruct] = {"topk": _topk_logprobs, "sample": _sample_logprobs}


def logits_mode_name(reader: CacheReader) -> str | None:
    """The cache's ``--logits`` mode (``topk:K`` for a ``--topk`` cache), None without logits."""
    feature = reader.spec.get("logits")
    if feature is None:
        return None
    return feature.logits_mode or (f"topk:{feature.topk}" if feature.topk else "dense")


@dataclass
class _KDGap:
    rows: int = 0
    sums: dict[str, float] = field(default_factory=dict)  # kl, kl_dense, ce, ce_dense: x rows
    diff_sq: float = 0.0
    dense_sq: float = 0.0
    skipped: str | None = None

    def add(self, count: int, losses: dict[str, float], grad: Tensor, dense_grad: Tensor) -> None:
        self.rows += count
        for name, value in losses.items():
            self.sums[name] = self.sums.get(name, 0.0) + value
        self.diff_sq += float(((grad - dense_grad) ** 2).sum())
        self.dense_sq += float((dense_grad**2).sum())

    def summary(self) -> dict[str, Any]:
        if self.skipped is not None:
            return {"skipped": self.skipped}
        means = {name: total / max(self.rows, 1) for name, total in self.sums.items()}
        out: dict[str, float | None] = dict(means)
        for loss in LOSS_TYPES:
            out[f"{loss}_gap"] = means[loss] - means[f"{loss}_dense"]
        out["grad_gap"] = math.sqrt(self.diff_sq / self.dense_sq) if self.dense_sq > 0 else None
        return out


@dataclass
class FidelityAccumulator:
    """Collects the fidelity numbers example by example (module docstring); see :meth:`report`.

    Args:
        reader: the cache; temperature: the training temperature of the KD gaps;
        noise: std of the student proxy's noise; seed: its seed.
    """

    reader: CacheReader
    temperature: float = 1.0
    noise: float = DEFAULT_NOISE
    seed: int = 0
    examples: int = 0
    _top1: list[np.ndarray] = field(default_factory=list)
    _mass: list[np.ndarray] = field(default_factory=list)
    _kl: list[np.ndarray] = field(default_factory=list)
    _gaps: dict[str, _KDGap] = field(default_factory=dict)
    _skipped: str | None = None

    def __post_init__(self) -> None:
        self.mode = logits_mode_name(self.reader) or "dense"
        self.kind = self.mode.split(":", 1)[0]
        self.configs = {
            loss: DistillationConfig(temperature=self.temperature, kd_loss_type=loss)
            for loss in LOSS_TYPES
        }
        targets = TOPK_TARGETS if self.kind == "topk" else (self.kind,)
        self._gaps = {target: _KDGap() for target in targets}
        self._generator = torch.Generator().manual_seed(self.seed)

    def add(self, fresh_logits: Any, cached: dict[str, Any]) -> None:
        """One recomputed example: the teacher's fresh logits rows and the cache's example."""
        teacher = torch.as_tensor(np.asarray(fresh_logits, dtype=np.float32))
        teacher = teacher.reshape(-1, teacher.shape[-1])  # (rows, V); a sequence head: (1, V)
        num_classes = int(teacher.shape[1])
        try:
            rows = self._stored_rows(cached, num_classes)
        except CachebrewError as error:  # a reader that needs more than the example's arrays
            self._skipped = f"the cache's logits rows could not be read: {error}"
            return
        logq = self._reconstruct(rows, num_classes)
        if logq is None:
            return
        if tuple(logq.shape) != tuple(teacher.shape):
            self._skipped = (
                f"example {cached['example_id']!r}: the cache stores {tuple(logq.shape)} logits "
                f"rows, the teacher gives {tuple(teacher.shape)}"
            )
            return
        self.examples += 1
        logp = torch.log_softmax(teacher.double(), dim=-1)
        self._top1.append((logp.argmax(1) == logq.argmax(1)).numpy())
        self._mass.append(_retained_mass(rows, logp.exp()).numpy())
        self._kl.append(kl_rows(logp.numpy(), logq.numpy()))
        student = teacher + self.noise * torch.randn(teacher.shape, generator=self._generator)
        self._add_gaps(rows, teacher, student)

    def _stored_rows(self, cached: dict[str, Any], num_classes: int) -> Any:
        """The example's logits rows as ``distill`` reads them (a ``--topk`` cache as topk:K)."""
        layout = replace(reader_layout(self.reader, num_classes), hidden={}, attention={})
        if layout.logits == "topk":  # written by --topk before --logits: read sparse, not rebuilt
            layout = replace(layout, logits="sparse", logits_mode=self.mode)
        return teacher_outputs([cached], layout, torch.ones(1, 1))["logits"]

    def _reconstruct(self, rows: Any, num_classes: int) -> Tensor | None:
        if isinstance(rows, Tensor):  # dense rows, raw or log-probs: log_softmax fits both
            return torch.log_softmax(rows.double(), dim=-1)
        reconstruct = RECONSTRUCTIONS.get(self.kind)
        if reconstruct is not None:
            return reconstruct(rows, num_classes).double()
        dense = getattr(rows, "dense", None)  # rows that rebuild their full logits
        if callable(dense):
            return torch.log_softmax(torch.as_tensor(dense()).double(), dim=-1)
        self._skipped = (
            f"no reconstruction for --logits {self.mode}: add one to "
            "cachebrew.teacher.fidelity.RECONSTRUCTIONS"
        )
        return None

    def _add_gaps(self, rows: Any, teacher: Tensor, student: Tensor) -> None:
        count = int(teacher.shape[0])
        dense: dict[str, float] = {}
        dense_grads: list[Tensor] = []  # d loss / d student of the first loss type only
        for loss_type, config in self.configs.items():
            fn = partial(_dense_kd, config.kd_loss_fn(), teacher, self.temperature)
            dense[f"{loss_type}_dense"], grad = _loss_and_grad(fn, student, count, not dense_grads)
            dense_grads += [grad] if grad is not None else []
        for target, gap in self._gaps.items():
            if gap.skipped is not None:
                continue
            losses, grads = dict(dense), list[Tensor]()
            topk_target = target if target in TOPK_TARGETS else "tail"
            try:
                for loss_type, config in self.configs.items():
                    loss = DistillationLoss(config, topk_target=topk_target)
                    fn = partial(_stored_kd, loss, rows)
                    losses[loss_type], grad = _loss_and_grad(fn, student, count, not grads)
                    grads += [grad] if grad is not None else []
            except CachebrewError as error:  # e.g. a sample cache at another temperature
                gap.skipped = str(error)
                continue
            gap.add(count, losses, grads[0], dense_grads[0])

    def report(self) -> dict[str, Any] | None:
        """The numbers over every added row (module docstring), or None without logits."""
        if logits_mode_name(self.reader) is None:
            return None
        out: dict[str, Any] = {
            "mode": self.mode,
            "temperature": self.temperature,
            "student": f"teacher logits + N(0, {self.noise:g}^2) noise, seed {self.seed}",
            "examples": self.examples,
            "rows": int(sum(len(t) for t in self._top1)),
            "notes": [],
        }
        if self._skipped is not None or not self._top1:
            out["skipped"] = self._skipped or "no example recomputed"
            return out
        kl = np.concatenate(self._kl)
        mass = np.concatenate(self._mass)
        finite = bool(np.all(np.isfinite(kl)))
        out.update(
            top1_agreement=float(np.concatenate(self._top1).mean()),
            retained_mass=float(mass.mean()),
            retained_mass_min=float(mass.min()),
            kl_mean=float(kl.mean()) if finite else None,
            kl_p95=float(np.percentile(kl, 95)) if finite else None,
            kd={target: gap.summary() for target, gap in self._gaps.items()},
        )
        out["notes"] = _notes(self.kind, self.temperature, finite)
        return out


def _dense_kd(
    kd_loss: Callable[..., Tensor], teacher: Tensor, temperature: float, student: Tensor
) -> Tensor:
    return kd_loss(student, teacher, temperature)


def _stored_kd(loss: DistillationLoss, rows: Any, student: Tensor) -> Tensor:
    return loss.kd_term({"logits": [student]}, {"logits": [rows]})[0]


def _loss_and_grad(
    loss_of: Callable[[Tensor], Tensor], student: Tensor, count: int, with_grad: bool = True
) -> tuple[float, Tensor | None]:
    """(loss x rows, d (loss x rows) / d student or None): sums over rows, so examples add up."""
    if not with_grad:
        with torch.no_grad():
            return float(loss_of(student)) * count, None
    logits = student.clone().requires_grad_(True)
    loss = loss_of(logits) * count
    (grad,) = torch.autograd.grad(loss, logits)
    return float(loss.detach()), grad


def _retained_mass(rows: Any, teacher_probs: Tensor) -> Tensor:
    """Teacher probability on the stored ids per row (rows with ids/logprobs), else 1."""
    ids, logprobs = getattr(rows, "ids", None), getattr(rows, "logprobs", None)
    if ids is None or logprobs is None:
        return torch.ones(teacher_probs.shape[0], dtype=torch.float64)
    kept = torch.isfinite(logprobs)  # a sample row's empty slots are -inf
    return (teacher_probs.gather(1, ids.long()) * kept).sum(1)


def _notes(kind: str, temperature: float, finite_kl: bool) -> list[str]:
    notes = []
    if not finite_kl:
        notes.append(
            "KL is infinite: the reconstruction gives zero probability to ids the teacher does "
            "not (a sample row holds only its drawn ids)"
        )
    if kind == "sample":
        notes.append(
            "sample: the gaps are one stored draw's; random-sampling KD is unbiased only in "
            "expectation over draws: its ce loss and gradient (one draw's grad gap is not 0; it "
            "shrinks as N grows); the kl value also subtracts the draw's own entropy (biased)"
        )
    if kind == "topk" and temperature != 1:
        notes.append(
            "topk tail at T != 1: the tail bucket's tempered mass is approximated (its shape is "
            "not stored); bucket masses are exact at T = 1 only"
        )
    return notes


def describe_fidelity(report: dict[str, Any]) -> str:
    """The fidelity report as a small table (``cachebrew verify --teacher``)."""
    head = (
        f"fidelity of logits ({report['mode']}) against the teacher: {report['rows']} token "
        f"rows of {report['examples']} examples"
    )
    if "skipped" in report:
        return f"{head}: not computed ({report['skipped']})"
    kl = (
        f"mean {report['kl_mean']:.4g}, p95 {report['kl_p95']:.4g}"
        if report["kl_mean"] is not None
        else "infinite (see note)"
    )
    lines = [
        head,
        f"  {'top-1 agreement':<30} {report['top1_agreement']:.4f}",
        f"  {'retained mass (T = 1)':<30} mean {report['retained_mass']:.4f}, "
        f"min {report['retained_mass_min']:.4f}",
        f"  {'KL(teacher || reconstructed)':<30} {kl}",
        f"  KD at T = {report['temperature']:g}, sparse - dense loss, student = "
        f"{report['student']}:",
        f"    {'target':<8} {'kl':>9} {'dense kl':>9} {'kl gap':>10} {'ce gap':>10} "
        f"{'grad gap':>9}",
    ]
    for target, gap in report["kd"].items():
        if "skipped" in gap:
            lines.append(f"    {target:<8} not computed: {gap['skipped']}")
            continue
        grad = "n/a" if gap["grad_gap"] is None else f"{gap['grad_gap']:.3g}"
        lines.append(
            f"    {target:<8} {gap['kl']:>9.4g} {gap['kl_dense']:>9.4g} {gap['kl_gap']:>+10.3g} "
            f"{gap['ce_gap']:>+10.3g} {grad:>9}"
        )
    lines += [f"  note: {note}" for note in report["notes"]]
    return "\n".join(lines)
