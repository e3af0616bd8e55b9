"""What a model is asked for: outputs, attention kernel, weight dtype, placement (DESIGN §8).

Every forward of an HF model with ``output_attentions`` materialises each layer's (B, H, L, L)
attention map, and ``eager`` attention is the slowest kernel; so a model is asked only for what
its run reads. :class:`ModelRequest` says it; :func:`resolve_attn_implementation` picks the
kernel: ``eager`` exactly when attention maps are read (``sdpa`` and flash attention return
none: transformers silently gives an empty tuple), otherwise ``flash_attention_2`` when the
``flash_attn`` package is installed and the device is CUDA, else ``sdpa``.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from cachebrew.errors import ConfigError

if TYPE_CHECKING:
    from cachebrew.config import DistillationConfig

ATTN_IMPLEMENTATIONS: tuple[str, ...] = ("auto", "eager", "sdpa", "flash_attention_2")
#: ``--teacher-dtype`` name -> torch dtype of the weights (``auto`` is resolved per device)
WEIGHT_DTYPES: dict[str, torch.dtype | None] = {
    "auto": None,
    "fp32": torch.float32,
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
}


@dataclass(frozen=True)
class ModelRequest:
    """What one run asks of a model.

    Attributes:
        hidden_states: return every layer's hidden state (``output_hidden_states``).
        attentions: return every layer's attention map (``output_attentions``; needs eager).
        attn_implementation: one of :data:`ATTN_IMPLEMENTATIONS`; ``auto`` picks the kernel.
        dtype: weight dtype name, ``fp32``/``bf16``/``fp16`` (resolve ``auto`` first:
            :func:`resolve_weight_dtype`).
        device: where the model will run (``cpu``, ``cuda:0`` ...), for the kernel choice.
        device_map: None, ``"auto"`` or a module -> device mapping (accelerate's placement).
        max_memory: device -> memory limit for ``device_map="auto"`` (e.g. ``{"cpu": "2GB"}``).
        offload_folder: where accelerate puts weights placed on ``"disk"``.
        gradient_checkpointing: students: recompute activations in backward (HF's).
    """

    hidden_states: bool = False
    attentions: bool = False
    attn_implementation: str = "auto"
    dtype: str = "fp32"
    device: str = "cpu"
    device_map: Any = None
    max_memory: dict[str, Any] | None = None
    offload_folder: str | None = None
    gradient_checkpointing: bool = False

    @classmethod
    def everything(cls) -> ModelRequest:
        """Every hidden state and attention map, eager attention: what every load asked for
        before issue 21, and the default for callers that say nothing."""
        return cls(hidden_states=True, attentions=True, attn_implementation="eager")


def attn_implementation_problems(name: Any, field: str = "attn_implementation") -> list[str]:
    """What is wrong with an ``attn_implementation`` value, as messages (empty when valid)."""
    if name in ATTN_IMPLEMENTATIONS:
        return []
    return [
        f"{field}: unknown attention kernel {name!r}; choose one of {list(ATTN_IMPLEMENTATIONS)}"
    ]


def resolve_attn_implementation(request: ModelRequest) -> str:
    """The attention kernel to build the model with (module docstring).

    Raises:
        ConfigError: an unknown name; attention maps asked of a kernel that gives none;
            ``flash_attention_2`` without the ``flash_attn`` package or a CUDA device.
    """
    name = request.attn_implementation
    problems = attn_implementation_problems(name)
    if problems:
        raise ConfigError(problems)
    if name == "auto":
        if request.attentions:
            return "eager"
        return "flash_attention_2" if flash_attention_usable(request.device) else "sdpa"
    if request.attentions and name != "eager":
        raise ConfigError(
            f"attn_implementation: {name} returns no attention maps, but this run reads "
            "attention features (stored or matched); use eager or auto"
        )
    if name == "flash_attention_2" and not flash_attention_usable(request.device):
        raise ConfigError(
            "attn_implementation: flash_attention_2 needs the flash_attn package and a CUDA "
            f"device (device {request.device}); use sdpa or auto"
        )
    return name


def flash_attention_usable(device: str | torch.device) -> bool:
    """Whether ``flash_attention_2`` can run: ``flash_attn`` installed and a CUDA device."""
    on_cuda = torch.device(device).type == "cuda" and torch.cuda.is_available()
    return on_cuda and importlib.util.find_spec("flash_attn") is not None


def resolve_weight_dtype(name: str, device: str | torch.device, all_half: bool) -> str:
    """``auto`` -> ``bf16`` on a CUDA device that supports it when every stored feature is
    16-bit or less (``all_half``), ``fp32`` otherwise and on CPU; other names unchanged.

    Raises:
        ConfigError: a name not in :data:`WEIGHT_DTYPES`.
    """
    if name not in WEIGHT_DTYPES:
        raise ConfigError(
            f"teacher_dtype: unknown dtype {name!r}; choose one of {list(WEIGHT_DTYPES)}"
        )
    if name != "auto":
        return name
    on_cuda = torch.device(device).type == "cuda" and torch.cuda.is_available()
    return "bf16" if on_cuda and all_half and torch.cuda.is_bf16_supported() else "fp32"


def apply_outputs(config: Any, request: ModelRequest) -> None:
    """Set the HF config's output flags to what ``request`` asks for."""
    config.output_hidden_states = request.hidden_states
    config.output_attentions = request.attentions


def matched_features(distill: DistillationConfig | None) -> set[str]:
    """What a distillation's matches read from both models: a subset of ``{"hidden",
    "attention"}`` (empty for hard-label training), so each model is asked for only those."""
    return {match.feature for match in distill.intermediate_matches} if distill else set()
