"""The distillation loop and TextBrewer-compatible distillers that can run the student alone.

Public classes, used exactly as TextBrewer's::

    from cachebrew.distill import GeneralDistiller

- :class:`BasicTrainer`: supervised training of one model.
- :class:`BasicDistiller`: one teacher, KD on logits and hard labels.
- :class:`GeneralDistiller`: one teacher plus intermediate feature matches.
- :class:`MultiTeacherDistiller`: several teachers of one task (weighted mean logits).
- :class:`MultiTaskDistiller`: one teacher per task, one student, sampled tasks.

Any of them trains from ``teacher_cache`` batches with ``model_T=None``. Module map:
``batches`` (batch splitting, adaptors), ``loss`` (the loss), ``objectives`` (forwards +
loss per micro-batch), ``loop`` (setup -> train -> save -> cleanup), ``plan`` (length and checkpoint schedule),
``sources`` (resumable batch streams, multi-task sampling), ``checkpoint``, ``tracking``
(TensorBoard metrics, throughput, the public ``TrainObserver`` hook),
``runtime`` (seeds, RNG, precision, DDP), ``base``/``distillers`` (the façades).

Differences from TextBrewer 0.2.1 (losses, their order of summation, weight-schedule
trajectories and checkpoint timing are otherwise reproduced; see the parity tests):

- ``teacher_cache`` needs no ``model_T`` (None) and no ``adaptor_T`` (identity); it also works
  in a plain Mapping batch; a missing teacher without a cache is a ConfigError.
- Adaptor keys are validated (``'input_mask'`` -> ConfigError suggesting ``'inputs_mask'``);
  any Mapping batch (HF ``BatchEncoding``) is called with ``**batch``.
- A shared ``logits_mask`` works for several 3-D heads; probability shift masks the labels with
  the ``logits_mask`` and never modifies a cached tensor; optional ``kd_t2_scale``.
- The teacher always runs in eval mode under ``no_grad``, also without ``with distiller:``;
  the student, projections and teacher are moved to the device.
- Weight schedules never write into the (frozen) config.
- ``num_steps`` works without ``ckpt_steps`` (saves at the end); ``scheduler_args=None`` is
  ``{}``; ``set_epoch`` is called on every pass in both modes; epoch-end leftover micro-batches
  are skipped instead of computed and discarded.
- Gradient clipping covers the projections; ``train()`` twice adds projection groups once.
- Full atomic checkpoints (student, projections, optimizer, scheduler, scaler, step, data
  position, RNG) with exact resume, instead of ``gs{N}.pkl`` student weights.
- ``torch.amp`` bf16/fp16 instead of apex; DDP wraps the student (and projections), never a
  teacher; the callback runs on rank 0 with the unwrapped student.
- Metrics: one point per optimizer step (mean over micro-batches), one host sync per
  ``log_flush_steps`` steps, plus ``lr``, ``temperature`` and throughput; the writer is closed.
- MultiTeacher: per-teacher weights, own ``logits_mask`` per teacher, intermediate matches
  against ``match_teacher``. MultiTask: sizes in examples (or batches), seeded sampler.
- ``is_caching_logits`` is ignored (warning); ``custom_matches`` is a ConfigError.
"""

from cachebrew.distill.checkpoint import CheckpointError
from cachebrew.distill.distillers import (
    BasicDistiller,
    BasicTrainer,
    GeneralDistiller,
    MultiTaskDistiller,
    MultiTeacherDistiller,
)
from cachebrew.distill.tracking import Throughput, TrainObserver

__all__ = [
    "BasicDistiller",
    "BasicTrainer",
    "CheckpointError",
    "GeneralDistiller",
    "MultiTaskDistiller",
    "MultiTeacherDistiller",
    "Throughput",
    "TrainObserver",
]
