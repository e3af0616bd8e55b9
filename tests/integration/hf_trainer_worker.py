"""One DistillationTrainer run, for `torchrun` / `accelerate launch` tests (CPU, gloo).

    python hf_trainer_worker.py CACHE STUDENT_JSON TOKENIZER_DIR OUT PER_DEVICE_BATCH [MAX_GRAD_NORM]

Rank 0 writes OUT/student.safetensors and OUT/projections.safetensors (the final weights) and
OUT/log.json (the world size and Trainer's log history). For the kill test:
``HF_WORKER_SAVE_STEPS=N`` saves a checkpoint every N steps, ``HF_WORKER_KILL_AT=S`` SIGKILLs
the process when step S ends, ``HF_WORKER_RESUME=1`` resumes from the latest checkpoint in OUT.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from transformers import TrainerCallback, TrainingArguments

from cachebrew import models
from cachebrew.hf import DistillationTrainer

DISTILL = {
    "temperature": 4,
    "hard_label_weight": 0.5,
    "intermediate_matches": [
        {"layer_T": 2, "layer_S": 1, "feature": "hidden", "loss": "pkd", "weight": 1,
         "proj": ["linear", 16, 32]},
    ],
}  # fmt: skip  # per-example means only: N equal shares average to the one-process gradient


class KillAt(TrainerCallback):
    """SIGKILL this process when step ``step`` ends (before any checkpoint of that step)."""

    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


def main(
    cache: str, student_json: str, tokenizer: str, out: str, per_device: str, clip: str = "0.05"
) -> None:
    torch.set_num_threads(1)
    student = models.load_model(
        student_json, task="sequence_classification", num_labels=3, role="student", seed=3
    ).model
    args = TrainingArguments(
        output_dir=out, per_device_train_batch_size=int(per_device), num_train_epochs=2,
        learning_rate=1e-3, weight_decay=0.01, max_grad_norm=float(clip), warmup_steps=2,
        optim="adamw_torch", seed=3, report_to=[], use_cpu=True,
        logging_steps=1, ddp_backend="gloo", **_saving(),
    )  # fmt: skip
    trainer = DistillationTrainer(
        model=student, args=args, cache=cache, distill_config=DISTILL,
        processing_class=models.load_tokenizer(tokenizer), dataset_options={"buffer_size": 16},
    )  # fmt: skip
    if "HF_WORKER_KILL_AT" in os.environ:
        trainer.add_callback(KillAt(int(os.environ["HF_WORKER_KILL_AT"])))
    trainer.train(resume_from_checkpoint=os.environ.get("HF_WORKER_RESUME") == "1" or None)
    state = trainer.accelerator.get_state_dict(trainer.model_wrapped)  # FSDP: gathered on rank 0
    if trainer.args.process_index == 0:
        state = {k: v.detach().contiguous() for k, v in state.items()}
        save_file(state, str(Path(out) / "student.safetensors"))
        projections = {k: v.detach() for k, v in trainer.projections.state_dict().items()}
        save_file(projections, str(Path(out) / "projections.safetensors"))
        wrapped = type(trainer.model_wrapped).__name__
        run = {"world_size": trainer.args.world_size, "wrapped": wrapped,
               "log": trainer.state.log_history}  # fmt: skip
        (Path(out) / "log.json").write_text(json.dumps(run))
    trainer.accelerator.wait_for_everyone()
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()  # a clean exit for gloo


def _saving() -> dict[str, Any]:
    steps = os.environ.get("HF_WORKER_SAVE_STEPS")
    if steps is None:
        return {"save_strategy": "no"}
    return {"save_strategy": "steps", "save_steps": int(steps), "save_total_limit": 2}


if __name__ == "__main__":
    main(*sys.argv[1:7])
