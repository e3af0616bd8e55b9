"""``DistillationTrainer``: a ``transformers.Trainer`` whose loss is cachebrew's, from a cache.

The student trains on the batches of a teacher cache (:mod:`cachebrew.hf.data`) with the loss
``cachebrew distill`` computes (:class:`~cachebrew.distill.objectives.DistillObjective` over
:class:`~cachebrew.distill.loss.DistillationLoss`): soft targets from dense, ``topk:K[:qN]``,
``sample:N`` or ``exact`` logits, the hard-label loss the student returns, and every
intermediate match with its projection. No teacher runs. Everything else is Trainer's:
optimizer and schedule, gradient accumulation, bf16/fp16, DDP/FSDP/DeepSpeed through
accelerate, evaluation with ``compute_metrics``, checkpoints, ``save_total_limit``,
``resume_from_checkpoint``, callbacks and ``report_to``.

The projections (one per match with ``proj``) live beside the student, not inside it, so the
saved student stays a plain Hugging Face model:

- they are seeded with ``args.seed`` and initialised as ``cachebrew distill`` does;
- :meth:`DistillationTrainer.create_optimizer` adds one param group per projection with the match's ``proj[3]``
  options (TextBrewer), so Trainer's scheduler drives them too;
- gradient clipping covers the student and the projections together (as cachebrew's loop);
- under several processes each projection is wrapped in DDP (its gradient averaged like the
  student's);
- :meth:`save_model` writes ``projections.safetensors`` next to the student in every
  checkpoint (and the final directory); ``train`` loads it back on resume.

The unweighted loss terms (``unweighted_kd_loss``, ``unweighted_hidden_mse_2_1``,
``unweighted_hard_label_loss``...) are logged with Trainer's ``loss``, averaged over the
micro-batches since the last log and over the ranks.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Mapping
from typing import Any

import torch
import transformers
from safetensors.torch import load_file, save_file
from torch import nn
from transformers.trainer_utils import get_last_checkpoint

from cachebrew.distill.base import build_projections
from cachebrew.distill.batches import TEACHER_CACHE, Adaptor
from cachebrew.distill.checkpoint import PROJECTIONS_FILE
from cachebrew.distill.loss import DistillationLoss, scheduled_weights
from cachebrew.distill.objectives import DistillObjective, TeacherSide
from cachebrew.errors import CheckpointError, ConfigError
from cachebrew.hf.config import DistillSource, as_distill_config
from cachebrew.hf.data import CacheBatchLoader, CacheSource, cache_train_dataset
from cachebrew.models import default_adaptor, kind_from_architectures
from cachebrew.models.request import matched_features
from cachebrew.runner.tokens import StudentTokens

logger = logging.getLogger(__name__)


def forward_flags(config: Any) -> dict[str, bool]:
    """What the student's forward must return for the config's matches (keyword arguments)."""
    reads = matched_features(config)
    flags = {"output_hidden_states": "hidden" in reads, "output_attentions": "attention" in reads}
    return {name: True for name, wanted in flags.items() if wanted}


class _TermMeans:
    """Sums of the detached loss terms since the last log (no host sync per micro-batch)."""

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.count = 0

    def add(self, terms: Mapping[str, torch.Tensor]) -> None:
        for name, value in terms.items():
            value = value.detach().float()
            self.sums[name] = self.sums[name] + value if name in self.sums else value
        self.count += 1

    def pop(self, accelerator: Any) -> dict[str, float]:
        """The means, averaged over the ranks; then reset."""
        if not self.count:
            return {}
        names = sorted(self.sums)
        values = torch.stack([self.sums[name] for name in names]) / self.count
        if accelerator.num_processes > 1:
            values = accelerator.reduce(values, reduction="mean")
        self.sums, self.count = {}, 0
        return {name: round(float(v), 6) for name, v in zip(names, values.tolist(), strict=True)}


class _ZeroProjectionGrads(transformers.TrainerCallback):
    """Trainer zeroes the model's gradients after each step; this zeroes the projections'."""

    def __init__(self, projections: nn.ModuleDict):
        self.projections = projections

    def on_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.projections.zero_grad(set_to_none=True)


class DistillationTrainer(transformers.Trainer):
    """``transformers.Trainer`` that distils ``model`` from a teacher cache (module docstring).

    Args:
        model: the student (an HF model; its forward returns the loss when given ``labels``).
        args: ``TrainingArguments`` (or a subclass such as TRL's ``SFTConfig``). The global
            batch is ``per_device_train_batch_size * world_size``; ``seed`` (or ``data_seed``)
            fixes the epoch order; ``remove_unused_columns`` is turned off (the batches hold
            the cache part, which no model signature names).
        cache: the teacher cache: a path / fsspec URL, a ``CacheReader`` or a ``CacheDataset``.
        distill_config: a ``DistillationConfig``, a mapping of its fields, or a YAML file (a
            run config's ``distill:`` section, or the fields alone).
        processing_class: (Trainer's) the student's tokenizer: the pad id, ``[SEP]`` and token
            type ids of the batches, as ``cachebrew distill`` takes them from it.
        adaptor: the student adaptor ``(batch, outputs) -> dict``; default: cachebrew's
            ``default_adaptor`` for the model's head.
        kind: the head for the default adaptor (default: from the model's class name).
        dataset_options: more ``CacheDataset`` keywords (``buffer_size``, ``example_ids``,
            ``student_items``, ``pad_id``...).
        topk_target: KD target of a top-k cache, ``tail`` or ``renorm``.
        **kwargs: every other ``Trainer`` argument (``eval_dataset``, ``data_collator`` for
            evaluation, ``compute_metrics``, ``callbacks``...).

    Raises:
        ConfigError: invalid ``distill:`` fields, or a dataset that does not fit ``args``.
    """

    def __init__(
        self,
        model: nn.Module,
        args: transformers.TrainingArguments,
        *,
        cache: CacheSource,
        distill_config: DistillSource,
        adaptor: Adaptor | None = None,
        kind: str | None = None,
        dataset_options: Mapping[str, Any] | None = None,
        topk_target: str = "tail",
        **kwargs: Any,
    ):
        if "train_dataset" in kwargs:
            raise ConfigError("DistillationTrainer reads its training batches from cache=")
        self.distill_config = distill_config_ = as_distill_config(distill_config)
        if args.remove_unused_columns:
            args.remove_unused_columns = False  # the batches carry teacher_cache (module doc)
        torch.manual_seed(args.seed)  # projections initialised as cachebrew distill does
        self.projections = build_projections(distill_config_)
        dataset = cache_train_dataset(
            cache,
            per_device_batch_size=args.per_device_train_batch_size,
            rank=args.process_index,
            world_size=args.world_size,
            seed=args.data_seed if args.data_seed is not None else args.seed,
            drop_last=args.dataloader_drop_last,
            device=args.device,
            options=_dataset_options(kwargs.get("processing_class"), dataset_options),
        )
        self.cache_dataset = dataset
        super().__init__(model=model, args=args, train_dataset=dataset, **kwargs)
        self.projections.to(self.args.device)
        adaptor = adaptor or functools.partial(
            default_adaptor, kind=kind or kind_from_architectures([type(model).__name__])
        )
        loss_fn = DistillationLoss(distill_config_, topk_target=topk_target)
        teachers: dict[str | None, TeacherSide] = {None: TeacherSide([None], [None])}
        self.objective: DistillObjective = DistillObjective(
            teachers, {None: adaptor}, loss_fn, self.args.device
        )
        self.forward_args = forward_flags(distill_config_)
        self.model_accepts_loss_kwargs = False  # per-batch mean losses: Trainer divides by GA
        self._loss_projections: Mapping[str, nn.Module] = dict(self.projections.items())
        self._terms = _TermMeans()
        self.add_callback(_ZeroProjectionGrads(self.projections))

    # ------------------------------------------------------------------ data

    def get_train_dataloader(self) -> CacheBatchLoader:
        """The cache's batches, one per Trainer micro-batch (:mod:`cachebrew.hf.data`)."""
        return CacheBatchLoader(self.cache_dataset, self.args.dataloader_num_workers)

    def get_resumed_dataloader(self, dataloader: Any, num_batches: int) -> Any:
        """A resumed epoch starts at its batch position without decoding the skipped batches."""
        if isinstance(dataloader, CacheBatchLoader):
            return dataloader.skipping(num_batches)
        return super().get_resumed_dataloader(dataloader, num_batches)

    def num_examples(self, dataloader: Any) -> int:
        """Examples per epoch (all ranks together), for Trainer's log."""
        if isinstance(dataloader, CacheBatchLoader):
            return int(dataloader.cache_dataset.num_examples)
        return super().num_examples(dataloader)

    # ------------------------------------------------------------------ loss

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: Any = None,
    ) -> Any:
        """cachebrew's distillation loss on a cache batch; the model's own loss otherwise
        (evaluation batches from ``eval_dataset``)."""
        if TEACHER_CACHE not in inputs:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        forwarded = self.objective.forward(model, inputs, None, self.forward_args)
        total_steps = max(int(self.state.max_steps), 1)
        weights = scheduled_weights(self.distill_config, self.state.global_step, total_steps)
        output = self.objective.loss(forwarded, weights, self._loss_projections)
        if model.training:
            self._terms.add(output.terms)
        return (output.total, forwarded[0]) if return_outputs else output.total

    def floating_point_ops(self, inputs: dict[str, Any]) -> int:
        """Trainer's FLOP estimate from the student's inputs (``total_flos``)."""
        return super().floating_point_ops(inputs.get("student", inputs))

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Trainer's log, plus the loss terms with each training ``loss``."""
        if "loss" in logs:
            logs = {**logs, **self._terms.pop(self.accelerator)}
        super().log(logs, start_time)

    # ------------------------------------------------------------------ projections

    def create_optimizer(self, model: nn.Module | None = None) -> torch.optim.Optimizer:
        """Trainer's optimizer plus one param group per projection (``proj[3]`` options)."""
        optimizer = (
            super().create_optimizer(model) if model is not None else super().create_optimizer()
        )
        present = {id(p) for group in optimizer.param_groups for p in group["params"]}
        matches = self.distill_config.intermediate_matches
        for name, projection in self.projections.items():
            params = [p for p in projection.parameters() if id(p) not in present]
            proj = matches[int(name)].proj
            if params and proj is not None:
                optimizer.add_param_group({"params": params, **proj[3]})
        if self.args.world_size > 1 and len(self.projections):
            self._loss_projections = _ddp_projections(self.projections, self.args.device)
        return optimizer

    def _clip_grad_norm(self, model: nn.Module) -> Any:
        # cachebrew's loop clips the student and the projections as one set of parameters.
        if not len(self.projections) or self.is_fsdp_enabled or self.is_deepspeed_enabled:
            return super()._clip_grad_norm(model)
        params = [*model.parameters(), *self.projections.parameters()]
        return self.accelerator.clip_grad_norm_(params, self.args.max_grad_norm)

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """Trainer's save, plus ``projections.safetensors`` beside the student."""
        super().save_model(output_dir, _internal_call)
        if len(self.projections) and self.args.should_save:
            directory = str(output_dir or self.args.output_dir)
            state = {
                k: v.detach().cpu().contiguous() for k, v in self.projections.state_dict().items()
            }
            save_file(state, os.path.join(directory, PROJECTIONS_FILE))

    def train(  # type: ignore[override]
        self, resume_from_checkpoint: str | bool | None = None, **kwargs: Any
    ) -> Any:
        """Trainer's ``train``; on resume the projections come back from the checkpoint."""
        if resume_from_checkpoint is True:
            resume_from_checkpoint = get_last_checkpoint(self.args.output_dir)
            if resume_from_checkpoint is None:
                raise CheckpointError(f"no checkpoint to resume in {self.args.output_dir}")
        if resume_from_checkpoint:
            self.load_projections(str(resume_from_checkpoint))
        return super().train(resume_from_checkpoint=resume_from_checkpoint, **kwargs)

    def load_projections(self, checkpoint: str) -> None:
        """Load ``projections.safetensors`` from a checkpoint directory (none: nothing to do).

        Raises:
            CheckpointError: the config has projections but the checkpoint does not.
        """
        if not len(self.projections):
            return
        path = os.path.join(checkpoint, PROJECTIONS_FILE)
        if not os.path.exists(path):
            raise CheckpointError(
                f"{checkpoint} has no {PROJECTIONS_FILE} but the distill config trains "
                f"{len(self.projections)} projections; was it saved by DistillationTrainer?"
            )
        self.projections.load_state_dict(load_file(path))  # copied onto their device


def _dataset_options(tokenizer: Any, options: Mapping[str, Any] | None) -> dict[str, Any]:
    """The collate options ``cachebrew distill`` derives from the student's tokenizer (pad id,
    ``[SEP]``, token type ids), then the caller's ``dataset_options``."""
    derived: dict[str, Any] = {}
    if tokenizer is not None and hasattr(tokenizer, "model_input_names"):
        derived = StudentTokens(tokenizer).dataset_kwargs()
        derived.pop("student_items")
    return {**derived, **(options or {})}


def _ddp_projections(projections: nn.ModuleDict, device: torch.device) -> dict[str, nn.Module]:
    ids = [device.index] if device.type == "cuda" and device.index is not None else None
    return {
        name: nn.parallel.DistributedDataParallel(module, device_ids=ids)
        for name, module in projections.items()
    }
