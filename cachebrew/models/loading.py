"""Load teachers and students: a local HF directory, an HF config file, or a factory.

Specs: a local HF directory (``config.json`` + ``*.safetensors``, ``tokenizer.json`` if present);
an HF config JSON file (fresh, seeded weights); ``"module:function"`` (no arguments, returns a
model or ``(model, adaptor)``). HF models are asked only for what the run reads
(:class:`~cachebrew.models.request.ModelRequest`: hidden states, attention maps, the attention
kernel, the weight dtype, accelerate's placement); teachers are put in eval mode with gradients
off. Every load is local: no hub download ever happens.
"""

from __future__ import annotations

import importlib
import json
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch

from cachebrew.errors import ConfigError
from cachebrew.files import sha256_files
from cachebrew.models.adaptors import Adaptor, default_adaptor
from cachebrew.models.identity import hash_state_dict, model_identity
from cachebrew.models.request import (
    WEIGHT_DTYPES,
    ModelRequest,
    apply_outputs,
    resolve_attn_implementation,
)
from cachebrew.models.tokenizer import tokenizer_next_to

logger = logging.getLogger(__name__)

# task name -> transformers auto class that builds that head
TASK_MODEL_CLASSES: dict[str, str] = {
    "sequence_classification": "AutoModelForSequenceClassification",
    "token_classification": "AutoModelForTokenClassification",
    "masked_lm": "AutoModelForMaskedLM",
    "causal_lm": "AutoModelForCausalLM",
}
# architecture class-name suffix -> task (``BertForTokenClassification`` -> token_classification)
ARCHITECTURE_SUFFIXES: dict[str, str] = {
    "ForSequenceClassification": "sequence_classification",
    "ForTokenClassification": "token_classification",
    "ForMaskedLM": "masked_lm",
    "ForCausalLM": "causal_lm",
    "LMHeadModel": "causal_lm",
}
ROLES: tuple[str, ...] = ("teacher", "student")

_FACTORY_SPEC = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


@dataclass
class LoadedModel:
    """A model ready for precompute or distill.

    Attributes:
        model: the ``torch.nn.Module``.
        adaptor: ``(batch, outputs) -> dict`` with cachebrew's adaptor keys.
        kind: one of ``TASK_MODEL_CLASSES`` or ``"custom"`` (factory models of unknown type).
        tokenizer: the tokenizer saved next to the weights, or None.
        identity: what the cache manifest records: ``class``, ``kind``, ``config_sha256``,
            ``weights_sha256``, ``weights_hash_of`` (``"file"``: the safetensors bytes;
            ``"state_dict"``: the tensors, for fresh or partly fresh weights), ``fresh_head``,
            ``tokenizer_sha256`` and ``source``.
    """

    model: torch.nn.Module
    adaptor: Adaptor
    kind: str
    tokenizer: Any = None
    identity: dict[str, Any] = field(default_factory=dict)


def load_model(
    spec: str | Path,
    *,
    task: str | None = None,
    num_labels: int | None = None,
    role: str = "teacher",
    seed: int = 0,
    request: ModelRequest | None = None,
) -> LoadedModel:
    """Load a teacher or student from a directory, a config file or a factory.

    Args:
        spec: HF directory, HF config JSON file, or ``"module:function"``.
        task: head to build; overrides ``architectures`` (a checkpoint without that head gets a
            fresh one, logged); needed when ``architectures`` names no head (``BertModel``).
        num_labels: label count of a fresh classification head (a checkpoint head of another
            size is an error).
        role: ``"teacher"`` (eval mode, no gradients) or ``"student"`` (train mode).
        seed: seeds fresh weights; the global RNG state is left as it was.
        request: what the run reads (outputs, kernel, dtype, placement); None asks for
            everything with eager attention (:meth:`ModelRequest.everything`). Factory models
            are built by their factory: only the dtype, placement and checkpointing apply.

    Raises:
        ConfigError: missing path, unknown task or role, no head known, factory import failure,
            label-count mismatch, a request the model cannot honour (attention maps from a
            kernel that gives none, an unknown kernel, checkpointing it does not support).
    """
    problems = []
    if task is not None and task not in TASK_MODEL_CLASSES:
        problems.append(f"unknown task {task!r}; choose one of {sorted(TASK_MODEL_CLASSES)}")
    if role not in ROLES:
        problems.append(f"unknown role {role!r}; choose one of {list(ROLES)}")
    if problems:
        raise ConfigError(problems)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        loaded = _load_from_spec(spec, task, num_labels, request or ModelRequest.everything())
    _finish(loaded.model, request or ModelRequest.everything())
    if role == "teacher":
        loaded.model.eval().requires_grad_(False)
    else:
        loaded.model.train()
    return loaded


def _load_from_spec(
    spec: str | Path, task: str | None, num_labels: int | None, request: ModelRequest
) -> LoadedModel:
    path = Path(spec)
    if isinstance(spec, str) and _FACTORY_SPEC.match(spec) and not path.exists():
        return _load_factory(spec, request)
    if path.is_dir():
        return _load_directory(path, task, num_labels, request)
    if path.is_file():
        return _load_config_file(path, task, num_labels, request)
    raise ConfigError(
        f"model spec {str(spec)!r}: no such file or directory (expected an HF directory, "
        "an HF config JSON file or 'module:function')"
    )


def _load_directory(
    path: Path, task: str | None, num_labels: int | None, request: ModelRequest
) -> LoadedModel:
    from safetensors import SafetensorError
    from transformers import AutoConfig

    if not (path / "config.json").is_file():
        raise ConfigError(f"model directory {path} has no config.json")
    weight_files = sorted(path.glob("*.safetensors"))
    if not weight_files:
        raise ConfigError(
            f"model directory {path} has no *.safetensors weights (pickle not loaded)"
        )
    config = AutoConfig.from_pretrained(path)
    kind, model_class = _prepare_config(config, task, num_labels, path, request)
    placement = {}
    if request.device_map is not None:  # accelerate's big-model placement, weights streamed
        placement = {"device_map": request.device_map, "max_memory": request.max_memory}
        placement["offload_folder"] = request.offload_folder
    try:
        model, info = _with_kernel(
            request,
            partial(
                model_class.from_pretrained,
                path,
                config=config,
                output_loading_info=True,
                ignore_mismatched_sizes=task is not None,
                **placement,
            ),
        )
    except (OSError, ValueError, SafetensorError) as error:
        raise unreadable_weights(weight_files, error) from error
    mismatched = {k if isinstance(k, str) else k[0] for k in info["mismatched_keys"]}
    fresh = sorted(set(info["missing_keys"]) | mismatched)
    if fresh:  # transformers' own LOAD REPORT table is silenced unless `cachebrew --verbose`
        modules = sorted({key.rsplit(".", 1)[0] for key in fresh})
        logger.info(
            "%s: %s weights are new (fresh, not in the checkpoint; fine-tuning or distillation "
            "trains them)", path, ", ".join(modules),
        )  # fmt: skip
    weights_sha, hash_of = (
        (hash_state_dict(model), "state_dict") if fresh else (sha256_files(weight_files), "file")
    )
    tokenizer = tokenizer_next_to(path)
    tokenizer_sha = sha256_files([path / "tokenizer.json"]) if tokenizer else None
    identity = model_identity(model, kind, path, (weights_sha, hash_of), bool(fresh), tokenizer_sha)
    return LoadedModel(model, partial(default_adaptor, kind=kind), kind, tokenizer, identity)


def _with_kernel(request: ModelRequest, build: Any) -> Any:
    """``build(attn_implementation=..., dtype=...)`` with the kernel the request resolves to.

    ``auto`` falls back to ``eager`` for a model without that kernel (logged); a kernel named
    explicitly that the model does not have is a ConfigError.
    """
    name = resolve_attn_implementation(request)
    dtype = WEIGHT_DTYPES[request.dtype]
    try:
        return build(attn_implementation=name, dtype=dtype)
    except (ValueError, ImportError) as error:
        if name == "eager" or "attn" not in str(error).lower():
            raise
        if request.attn_implementation != "auto":
            reason = (str(error).splitlines() or [type(error).__name__])[0][:200]
            raise ConfigError(
                f"attn_implementation: this model cannot use {name} ({reason}); use eager or auto"
            ) from error
        logger.info("the model has no %s attention kernel; using eager", name)
        return build(attn_implementation="eager", dtype=dtype)


def _dispatch(model: torch.nn.Module, request: ModelRequest) -> None:
    """Spread a model built in memory over devices (accelerate), as ``from_pretrained`` does
    for a directory given ``device_map``."""
    from accelerate import dispatch_model, infer_auto_device_map

    device_map = request.device_map
    if device_map == "auto":
        no_split = getattr(model, "_no_split_modules", None) or []
        device_map = infer_auto_device_map(
            model, max_memory=request.max_memory, no_split_module_classes=list(no_split)
        )
    dispatch_model(model, device_map=device_map, offload_dir=request.offload_folder)


def _finish(model: torch.nn.Module, request: ModelRequest) -> None:
    """Gradient checkpointing for a student that asks for it.

    Raises:
        ConfigError: the model does not support HF gradient checkpointing.
    """
    if not request.gradient_checkpointing:
        return
    if not getattr(model, "supports_gradient_checkpointing", False):
        raise ConfigError(
            f"training.gradient_checkpointing: {type(model).__name__} does not support HF "
            "gradient checkpointing; set it to false"
        )
    # transformers 5.x's name; gradient_checkpointing_enable (deprecated there) before it
    name = "activation_checkpointing_enable"
    enable: Any = getattr(model, name, None) or model.gradient_checkpointing_enable
    enable()


def unreadable_weights(files: list[Path], error: BaseException) -> ConfigError:
    """Weights that are not safetensors (e.g. a pickle renamed): one line, never unpickled."""
    reason = (str(error).splitlines() or [type(error).__name__])[0][:200]
    return ConfigError(
        f"{', '.join(map(str, files))}: cannot be read as safetensors weights "
        f"({type(error).__name__}: {reason}); nothing was loaded: save the model with "
        "save_pretrained(safe_serialization=True)"
    )


def _load_config_file(
    path: Path, task: str | None, num_labels: int | None, request: ModelRequest
) -> LoadedModel:
    from transformers import AutoConfig

    try:  # json.JSONDecodeError and an unknown model_type are ValueErrors
        values = json.loads(path.read_text())
        config = AutoConfig.for_model(values.pop("model_type"), **values)
    except (ValueError, KeyError, AttributeError, TypeError) as error:
        raise ConfigError(
            f"{path} is not an HF config JSON with a known 'model_type': "
            f"{type(error).__name__}: {error}"
        ) from error
    kind, model_class = _prepare_config(config, task, num_labels, path, request)
    model = _with_kernel(request, partial(model_class.from_config, config))
    if request.device_map is not None:
        _dispatch(model, request)
    identity = model_identity(model, kind, path, (hash_state_dict(model), "state_dict"), True)
    return LoadedModel(model, partial(default_adaptor, kind=kind), kind, None, identity)


def _prepare_config(
    config: Any, task: str | None, num_labels: int | None, source: Path, request: ModelRequest
) -> tuple[str, Any]:
    """Pick the head, set output flags and label count; return (kind, auto class)."""
    import transformers

    kind = task or kind_from_architectures(config.architectures)
    if kind is None:
        raise ConfigError(
            f"{source}: architectures {config.architectures} name no known head; "
            f"pass task= one of {sorted(TASK_MODEL_CLASSES)}"
        )
    checkpoint_kind = kind_from_architectures(config.architectures)
    if checkpoint_kind is not None and checkpoint_kind != kind:
        logger.info(
            "%s: building a fresh %s head (checkpoint has %s)", source, kind, checkpoint_kind
        )
    if num_labels is not None and num_labels != config.num_labels:
        if checkpoint_kind == kind and source.is_dir():
            raise ConfigError(
                f"{source}: the checkpoint's {kind} head has {config.num_labels} labels, "
                f"num_labels={num_labels} asked; drop num_labels or pass another task"
            )
        config.num_labels = num_labels
    apply_outputs(config, request)
    return kind, getattr(transformers, TASK_MODEL_CLASSES[kind])


def kind_from_architectures(architectures: Iterable[str] | None) -> str | None:
    """The head (``sequence_classification``, ``causal_lm`` ...) named by HF class names."""
    for name in architectures or ():
        for suffix, kind in ARCHITECTURE_SUFFIXES.items():
            if name.endswith(suffix):
                return kind
    return None


def _load_factory(spec: str, request: ModelRequest) -> LoadedModel:
    module_name, function_name = spec.split(":")
    try:
        factory = getattr(importlib.import_module(module_name), function_name)
    except (ImportError, AttributeError) as error:
        raise ConfigError(
            f"cannot import model factory {spec!r}: {type(error).__name__}: {error}"
        ) from error
    result = factory()
    model, adaptor = result if isinstance(result, tuple) and len(result) == 2 else (result, None)
    if not isinstance(model, torch.nn.Module):
        raise ConfigError(
            f"model factory {spec!r} returned {type(model).__name__}; "
            "expected a torch.nn.Module or (module, adaptor)"
        )
    if request.dtype != "fp32":
        model.to(WEIGHT_DTYPES[request.dtype])
    if request.device_map is not None:
        _dispatch(model, request)
    kind = kind_from_architectures([type(model).__name__]) or "custom"
    adaptor = adaptor or partial(default_adaptor, kind=kind)
    identity = model_identity(model, kind, spec, (hash_state_dict(model), "state_dict"), False)
    return LoadedModel(model, adaptor, kind, None, identity)
