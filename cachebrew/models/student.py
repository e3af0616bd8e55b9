"""Preparing a model to train: initialise it from a teacher, count it, group its parameters."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from cachebrew.errors import ConfigError
from cachebrew.models.loading import LoadedModel, unreadable_weights

logger = logging.getLogger(__name__)


def count_parameters(model: torch.nn.Module, *, trainable_only: bool = False) -> int:
    """Number of parameters (shared tensors counted once)."""
    unique = {id(p): p for p in model.parameters() if p.requires_grad or not trainable_only}
    return sum(p.numel() for p in unique.values())


def init_from_teacher(
    student: torch.nn.Module,
    teacher: torch.nn.Module | LoadedModel | str | Path,
    layers: list[int],
) -> torch.nn.Module:
    """Copy a BERT-family teacher's embeddings and chosen layers into a student, in place.

    Student encoder layer ``i`` gets teacher layer ``layers[i]`` (0-based encoder layers, so
    not the ``hidden`` index, which is shifted by the embeddings). Heads and pooler stay as they are.

    Args:
        student: BERT-family model (``base_model.embeddings``, ``base_model.encoder.layer``).
        teacher: a model, a ``LoadedModel`` or a local HF directory (loaded as its backbone).
        layers: one teacher layer index per student layer.

    Returns:
        the student.

    Raises:
        ConfigError: not BERT-family, different hidden size or embedding shapes, wrong number
            of layers, or a layer index out of range (all problems at once).
    """
    teacher_model = _teacher_backbone(teacher)
    student_emb, student_layers = _bert_parts(student, "student")
    teacher_emb, teacher_layers = _bert_parts(teacher_model, "teacher")
    problems = _shape_problems(student_emb, teacher_emb, "embeddings")
    if len(layers) != len(student_layers):
        problems.append(
            f"layers has {len(layers)} entries; the student has {len(student_layers)} layers"
        )
    bad = [i for i in layers if not 0 <= i < len(teacher_layers)]
    if bad:
        problems.append(f"teacher layer indices {bad} out of range [0, {len(teacher_layers) - 1}]")
    elif student_layers and not problems:
        problems += _shape_problems(student_layers[0], teacher_layers[layers[0]], "layer")
    if problems:
        raise ConfigError(problems)
    with torch.no_grad():
        student_emb.load_state_dict(teacher_emb.state_dict())
        for student_index, teacher_index in enumerate(layers):
            student_layers[student_index].load_state_dict(
                teacher_layers[teacher_index].state_dict()
            )
    logger.info("initialised student from teacher embeddings and layers %s", layers)
    return student


def _teacher_backbone(teacher: torch.nn.Module | LoadedModel | str | Path) -> torch.nn.Module:
    if isinstance(teacher, LoadedModel):
        return teacher.model
    if isinstance(teacher, torch.nn.Module):
        return teacher
    path = Path(teacher)
    if not (path / "config.json").is_file():
        raise ConfigError(f"teacher {str(teacher)!r} is not an HF directory with config.json")
    from safetensors import SafetensorError
    from transformers import AutoModel

    weight_files = sorted(path.glob("*.safetensors"))
    if not weight_files:  # a pytorch_model.bin is a pickle: never loaded
        raise ConfigError(f"teacher {path} has no *.safetensors weights (pickle not loaded)")
    try:
        return AutoModel.from_pretrained(path, use_safetensors=True)
    except (OSError, ValueError, SafetensorError) as error:
        raise unreadable_weights(weight_files, error) from error


def _bert_parts(model: torch.nn.Module, role: str) -> tuple[torch.nn.Module, torch.nn.ModuleList]:
    base = getattr(model, "base_model", model)
    embeddings = getattr(base, "embeddings", None)
    layers = getattr(getattr(base, "encoder", None), "layer", None)
    if embeddings is None or layers is None:
        raise ConfigError(
            f"{role} {type(model).__name__} is not BERT-family "
            "(needs base_model.embeddings and base_model.encoder.layer)"
        )
    return embeddings, layers


def _shape_problems(
    student_part: torch.nn.Module, teacher_part: torch.nn.Module, what: str
) -> list[str]:
    student_state, teacher_state = student_part.state_dict(), teacher_part.state_dict()
    problems = [
        f"{what}.{name}: student {tuple(student_state[name].shape)} vs teacher "
        f"{tuple(tensor.shape)} (hidden sizes must match)"
        for name, tensor in teacher_state.items()
        if name in student_state and student_state[name].shape != tensor.shape
    ]
    missing = sorted(set(teacher_state) ^ set(student_state))
    if missing:
        problems.append(f"{what}: parameter names differ between student and teacher: {missing}")
    return problems


def adamw_param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW parameter groups: no weight decay on biases and LayerNorm weights (BERT's recipe).

    Every trainable parameter of fewer than 2 dimensions (biases, norm weights) goes to the
    ``weight_decay=0`` group; empty groups are left out.
    """
    decay: list[torch.nn.Parameter] = []
    no_decay: list[torch.nn.Parameter] = []
    for param in model.parameters():
        if param.requires_grad:
            (no_decay if param.ndim < 2 else decay).append(param)
    groups = [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return [group for group in groups if group["params"]]
