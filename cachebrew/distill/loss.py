"""The distillation loss of one micro-batch, from adapted student and teacher outputs.

Faithful to TextBrewer's ``compute_loss`` (``distiller_general.py``)::

    total = kd_loss_weight * sum_heads KD(l_S, l_T, T)
          + sum_matches weight_i * match_loss_i(proj_i(S[layer_S]), T[layer_T], mask=inputs_mask_S)
          + hard_label_weight * sum(losses_S[i].mean())

with the same order of additions (so fp32 values agree bit for bit) and the same loss keys.
Fixes, each on inputs where TextBrewer crashes:

- one ``logits_mask`` shared by several 3-D logits heads is applied to each head (TextBrewer
  overwrote its loop variable and crashed on the second head);
- with ``probability_shift`` and ``logits_mask``, the labels are selected with the same mask as
  the logits (TextBrewer raised IndexError); the teacher logits are shifted out of place, so a
  ``teacher_cache`` tensor is never modified;
- a match whose feature or layer the adaptor did not return is a ConfigError naming the match.

``textbrewer_compat=True`` undoes the fixes that change numbers (:mod:`.compat`).
``kd_t2_scale=True`` multiplies each head's KD loss by ``T**2`` (Hinton et al. 2015), keeping
the soft and hard gradients balanced across temperatures. For a per-row tensor temperature
(``flsw``/``cwsm``) the factor is ``mean(T**2)`` over rows, detached: a batch-level
approximation of scaling each row, which the KD losses' mean reduction does not allow.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from torch import Tensor, nn

from cachebrew.cache.logits.exact import ExactLogits
from cachebrew.cache.logits.sparse import SparseLogits
from cachebrew.config import DistillationConfig, IntermediateMatch
from cachebrew.distill import compat as compat_
from cachebrew.distill.exact_kd import exact_kd_loss
from cachebrew.distill.sparse_kd import sparse_kd_loss
from cachebrew.errors import ConfigError
from cachebrew.losses import probability_shift


@dataclass(frozen=True)
class LossWeights:
    """The weights of one optimizer step (scheduled values, never written to the config)."""

    kd_loss_weight: float
    hard_label_weight: float


def scheduled_weights(
    config: DistillationConfig | None, global_step: int, total_steps: int
) -> LossWeights:
    """Weights for the optimizer step that follows ``global_step`` completed steps.

    TextBrewer's trajectory, replicated exactly: the schedule value *replaces* the configured
    weight, it is evaluated at ``global_step / total_steps`` with ``global_step`` the number of
    steps already taken, and step 0 uses the configured weight (TextBrewer updates the weight
    only after each optimizer step). Pure: the config is only read.
    """
    if config is None:
        return LossWeights(kd_loss_weight=1.0, hard_label_weight=1.0)
    kd_weight, hard_weight = config.kd_loss_weight, config.hard_label_weight
    if global_step > 0:
        progress = global_step / total_steps
        kd_schedule = config.kd_loss_weight_scheduler_fn()
        hard_schedule = config.hard_label_weight_scheduler_fn()
        kd_weight = kd_schedule(progress) if kd_schedule else kd_weight
        hard_weight = hard_schedule(progress) if hard_schedule else hard_weight
    return LossWeights(kd_loss_weight=kd_weight, hard_label_weight=hard_weight)


class LossOutput(NamedTuple):
    """What one micro-batch contributes.

    Attributes:
        total: the weighted loss to back-propagate (scalar, with grad).
        terms: detached unweighted terms keyed as TextBrewer's ``losses_dict``.
        temperature: the KD temperature used (mean over heads and rows), or None without KD.
    """

    total: Tensor
    terms: dict[str, Tensor]
    temperature: float | Tensor | None


def _apply_mask(values: Tensor, mask: Tensor, needs_rank: int) -> Tensor:
    # (B, L, ...) selected by (B, L) -> (N_sel, ...); other ranks pass through (TextBrewer).
    if values.dim() != needs_rank:
        return values
    return values[mask.to(values.device).bool()]


def _pair_masks(masks: Sequence[Tensor], count: int, what: str) -> Sequence[Tensor]:
    if len(masks) == count:
        return masks
    if len(masks) == 1:
        return list(masks) * count  # one mask shared by every head
    raise ConfigError(
        f"{what}: {len(masks)} logits_mask tensors for {count} logits heads; give one per head "
        "or a single shared one"
    )


def select_logits_with_mask(logits: Sequence[Tensor], masks: Sequence[Tensor]) -> list[Tensor]:
    """Keep the rows of 3-D logits ``(B, L, C)`` where the mask ``(B, L)`` is set -> ``(N, C)``.

    2-D logits ``(B, C)`` are unchanged. One mask per head, or one mask shared by all heads.
    """
    masks = _pair_masks(masks, len(logits), "logits_mask")
    return [_apply_mask(head, mask, needs_rank=3) for head, mask in zip(logits, masks, strict=True)]


def select_labels_with_mask(
    labels: Sequence[Tensor], masks: Sequence[Tensor], logits: Sequence[Tensor]
) -> list[Tensor]:
    """Select labels ``(B, L)`` with the mask of their 3-D logits head, like the logits."""
    masks = _pair_masks(masks, len(logits), "logits_mask")
    return [
        label[mask.to(label.device).bool()] if head.dim() == 3 else label
        for label, mask, head in zip(labels, masks, logits, strict=False)
    ]


def _t2_factor(temperature: float | Tensor) -> float | Tensor:
    if isinstance(temperature, Tensor):
        return temperature.detach().pow(2).mean()
    return temperature * temperature


def _mean_temperature(temperatures: list[float | Tensor]) -> float | Tensor:
    values = [t.detach().float().mean() if isinstance(t, Tensor) else t for t in temperatures]
    return sum(values) / len(values)


def match_name(match: IntermediateMatch) -> str:
    """TextBrewer's key ``unweighted_{feature}_{loss}_{layerS}_{layerT}`` (pairs joined by '-')."""

    def layers(value: int | tuple[int, ...]) -> str:
        return "-".join(map(str, value)) if isinstance(value, tuple) else str(value)

    return (
        f"unweighted_{match.feature}_{match.loss}_{layers(match.layer_S)}_{layers(match.layer_T)}"
    )


def _pick(results: Mapping[str, Any], match: IntermediateMatch, index: int, side: str) -> Any:
    layer = match.layer_S if side == "S" else match.layer_T
    who = "adaptor_S" if side == "S" else "the teacher adaptor (or teacher_cache)"
    features = results.get(match.feature)
    if features is None:
        raise ConfigError(
            f"intermediate_matches[{index}] needs {match.feature!r} but {who} returned only "
            f"{sorted(results)}"
        )
    wanted = layer if isinstance(layer, tuple) else (layer,)
    if max(wanted) >= len(features):
        raise ConfigError(
            f"intermediate_matches[{index}]: layer_{side}={layer!r} is out of range; {who} "
            f"returned {len(features)} {match.feature!r} tensors (indices 0..{len(features) - 1})"
        )
    return [features[i] for i in layer] if isinstance(layer, tuple) else features[layer]


class DistillationLoss:
    """TextBrewer's loss for one micro-batch, resolved once from a read-only config.

    Args:
        config: the distillation config.
        use_matches: compute ``intermediate_matches`` (False for BasicDistiller, as TextBrewer).
        require_logits: raise if either side lacks ``logits`` (BasicDistiller and
            MultiTeacherDistiller); otherwise KD is skipped then (GeneralDistiller).
        topk_target: ``tail`` or ``renorm``: the KD target of a ``--logits topk:K`` cache
            (:mod:`cachebrew.distill.sparse_kd`; not a config field, which stays TextBrewer's).
    """

    def __init__(
        self,
        config: DistillationConfig,
        use_matches: bool = True,
        require_logits: bool = False,
        topk_target: str = "tail",
    ):
        self.config = config
        self.kd_loss = config.kd_loss_fn()
        self.temperature_scheduler = config.temperature_scheduler_fn()
        self.matches = config.intermediate_matches if use_matches else ()
        compat = config.textbrewer_compat
        self.match_losses = [compat_.match_loss(m.loss_fn(), compat) for m in self.matches]
        self.require_logits = require_logits
        self.topk_target = topk_target

    def __call__(
        self,
        results_S: Mapping[str, Any],
        results_T: Mapping[str, Any],
        weights: LossWeights,
        projections: Mapping[str, nn.Module],
    ) -> LossOutput:
        """Total loss and terms; ``projections`` maps a match index (as str) to its module."""
        total: Any = 0
        terms: dict[str, Tensor] = {}
        temperature = None
        if "logits" in results_S and "logits" in results_T:
            kd_loss, temperature = self.kd_term(results_S, results_T)
            total = total + kd_loss * weights.kd_loss_weight
            terms["unweighted_kd_loss"] = kd_loss.detach()
        elif self.require_logits:
            missing = "adaptor_S" if "logits" not in results_S else "the teacher side"
            raise ConfigError(f"this distiller needs 'logits' from both sides; {missing} has none")
        for index, (match, match_loss) in enumerate(
            zip(self.matches, self.match_losses, strict=True)
        ):
            loss = self.match_term(results_S, results_T, index, match_loss, projections)
            total = total + loss * match.weight
            terms[match_name(match)] = loss.detach()
        if "losses" in results_S:
            hard_loss = sum(loss.mean() for loss in results_S["losses"])
            total = total + hard_loss * weights.hard_label_weight
            terms["unweighted_hard_label_loss"] = hard_loss.detach()
        if not isinstance(total, Tensor):
            raise ConfigError(
                "nothing to optimise: no 'logits' on both sides, no intermediate_matches and no "
                "'losses' from adaptor_S"
            )
        return LossOutput(total, terms, temperature)

    def kd_term(
        self, results_S: Mapping[str, Any], results_T: Mapping[str, Any]
    ) -> tuple[Tensor, float | Tensor]:
        """Sum over logits heads of the KD loss, and the mean temperature used."""
        logits_S, logits_T = list(results_S["logits"]), list(results_T["logits"])
        if len(logits_S) != len(logits_T):
            raise ConfigError(
                f"adaptor_S returned {len(logits_S)} logits heads, the teacher {len(logits_T)}"
            )
        labels = self._shift_labels(results_S, logits_S)
        if "logits_mask" in results_S:
            logits_S = select_logits_with_mask(logits_S, results_S["logits_mask"])
        if "logits_mask" in results_T:
            logits_T = select_logits_with_mask(logits_T, results_T["logits_mask"])
        total: Any = 0
        temperatures: list[float | Tensor] = []
        for head, (l_S, l_T) in enumerate(zip(logits_S, logits_T, strict=True)):
            if isinstance(l_T, SparseLogits | ExactLogits):
                loss, temperature = self._sparse_kd(l_S, l_T, labels)
            else:
                if labels is not None:
                    shift = compat_.shift_labels(l_T, labels[head], self.config.textbrewer_compat)
                    l_T = probability_shift(l_T, shift)
                temperature = self._temperature(l_S, l_T)
                loss = self.kd_loss(l_S, l_T, temperature)
            if self.config.kd_t2_scale:
                loss = loss * _t2_factor(temperature)
            total = total + loss
            temperatures.append(temperature)
        return total, _mean_temperature(temperatures)

    def _sparse_kd(
        self, logits_S: Tensor, logits_T: SparseLogits | ExactLogits, labels: list[Tensor] | None
    ) -> tuple[Tensor, float | Tensor]:
        """KD against a sparse (top-k / sampled) or exact (hidden state + LM head) teacher
        without a dense (rows, V) teacher tensor."""
        if labels is not None or self.temperature_scheduler is not None:
            raise ConfigError(
                "probability_shift and temperature schedulers need dense teacher logits; this "
                f"cache stores {logits_T.kind} logits (precompute with --logits dense)"
            )
        temperature = self.config.temperature
        if isinstance(logits_T, ExactLogits):
            kd_type = self.config.kd_loss_type
            return exact_kd_loss(logits_S, logits_T, temperature, loss_type=kd_type), temperature
        loss = sparse_kd_loss(
            logits_S,
            logits_T,
            temperature,
            loss_type=self.config.kd_loss_type,
            topk_target=self.topk_target,
        )
        return loss, temperature

    def _temperature(self, logits_S: Tensor, logits_T: Tensor) -> float | Tensor:
        if self.temperature_scheduler is None:
            return self.config.temperature
        return self.temperature_scheduler(logits_S, logits_T, self.config.temperature)

    def _shift_labels(
        self, results_S: Mapping[str, Any], logits_S: list[Tensor]
    ) -> list[Tensor] | None:
        if not self.config.probability_shift:
            return None
        if "labels" not in results_S:
            raise ConfigError("probability_shift=True needs 'labels' from adaptor_S")
        labels = list(results_S["labels"])
        if len(labels) < len(logits_S):
            raise ConfigError(
                f"probability_shift: {len(labels)} labels for {len(logits_S)} logits heads"
            )
        if "logits_mask" in results_S:
            labels = select_labels_with_mask(labels, results_S["logits_mask"], logits_S)
        return labels

    def match_term(
        self,
        results_S: Mapping[str, Any],
        results_T: Mapping[str, Any],
        index: int,
        match_loss: Any,
        projections: Mapping[str, nn.Module],
    ) -> Tensor:
        """The unweighted loss of ``intermediate_matches[index]`` (projection on the student)."""
        match = self.matches[index]
        inter_S = _pick(results_S, match, index, "S")
        inter_T = _pick(results_T, match, index, "T")
        projection = projections.get(str(index))
        if projection is not None:
            is_pair = isinstance(inter_S, list)
            inter_S = [projection(s) for s in inter_S] if is_pair else projection(inter_S)
        return match_loss(inter_S, inter_T, mask=results_S.get("inputs_mask"))


def combine_teachers(
    results_T: Sequence[Mapping[str, Any]],
    teacher_weights: Sequence[float] | None,
    match_teacher: int,
) -> dict[str, Any]:
    """Merge several teachers' adapted outputs into one (MultiTeacherDistiller).

    The logits of each head are averaged after ``logits_mask`` selection (each teacher's own
    mask, else teacher 0's; TextBrewer used teacher 0's for all) and before probability shift
    and temperature: ``sum(l)/K`` exactly as TextBrewer, or ``sum(w_k * l_k)`` with the
    normalised ``teacher_weights``. Every other key (features, ``inputs_mask``) comes from
    teacher ``match_teacher``, which intermediate matches are computed against.
    """
    if not 0 <= match_teacher < len(results_T):
        raise ConfigError(
            f"match_teacher={match_teacher} is out of range for {len(results_T)} teacher outputs"
        )
    merged = {
        key: value
        for key, value in results_T[match_teacher].items()
        if key not in ("logits", "logits_mask")
    }
    if not all("logits" in results for results in results_T):
        return merged
    shared_mask = results_T[0].get("logits_mask")
    selected = []
    for results in results_T:
        masks = results.get("logits_mask", shared_mask)
        logits = list(results["logits"])
        selected.append(logits if masks is None else select_logits_with_mask(logits, masks))
    if teacher_weights is None:
        merged["logits"] = [sum(heads) / len(heads) for heads in zip(*selected, strict=False)]
    else:
        merged["logits"] = [
            sum(w * head for w, head in zip(teacher_weights, heads, strict=True))
            for heads in zip(*selected, strict=False)
        ]
    return merged


def normalise_teacher_weights(weights: Sequence[float] | None, count: int) -> list[float] | None:
    """Validate per-teacher weights and scale them to sum to 1 (None stays None)."""
    if weights is None:
        return None
    weights = [float(w) for w in weights]
    if len(weights) != count or any(w < 0 for w in weights) or sum(weights) <= 0:
        raise ConfigError(
            f"teacher_weights: expected {count} non-negative numbers with a positive sum, "
            f"got {weights!r}"
        )
    total = sum(weights)
    return [w / total for w in weights]


def supervised_loss(results: Mapping[str, Any]) -> LossOutput:
    """BasicTrainer's loss: ``sum(losses[i].mean())`` from the adaptor.

    Raises:
        ConfigError: the adaptor returned no ``'losses'``.
    """
    if "losses" not in results:
        raise ConfigError(
            f"BasicTrainer needs 'losses' from the adaptor, which returned only {sorted(results)}"
        )
    total = sum(loss.mean() for loss in results["losses"])
    if not isinstance(total, Tensor):
        raise ConfigError("BasicTrainer: the adaptor returned an empty 'losses' list")
    return LossOutput(total, {}, None)
