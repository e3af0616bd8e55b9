"""The teacher's forward in ``precompute`` and ``verify``: what it is asked for, what is kept.

:func:`teacher_request` derives from the stored features what the teacher returns (hidden
states only for hidden features (``--logits exact`` takes the LM head's input from a hook),
attention maps only for attention
features: then, and only then, eager attention). :func:`teacher_features` runs one padded
batch and cuts out each example's stored inputs; for ``topk:K`` and ``sample:N`` the logits are
reduced on the teacher's device in row chunks (:mod:`cachebrew.teacher.sparse_rows`), so no
(rows, V) copy of the logits leaves the forward.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch

from cachebrew.cache import FeatureSpec
from cachebrew.cache.logits.sparse import REDUCED_KEYS, LogitsMode, parse_logits_mode
from cachebrew.corpus import pad_batch
from cachebrew.errors import ConfigError
from cachebrew.models import LoadedModel
from cachebrew.models.request import ModelRequest, resolve_weight_dtype
from cachebrew.teacher.exact_head import final_hidden_capture, is_exact, with_final_hidden
from cachebrew.teacher.sparse_rows import reduce_rows

_MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
#: On CUDA each example's features carry a ``torch.cuda.Event`` under this key: the features are
#: pinned host tensors still being copied, which the writer thread waits for before reading.
READY = "_ready"


@torch.inference_mode()
def teacher_features(
    teacher: LoadedModel,
    spec: FeatureSpec,
    items: list[dict[str, Any]],
    device: torch.device,
    *,
    reduce_logits: bool = True,
) -> list[dict[str, Any]]:
    """Run one padded batch; return per-example feature tensors (float32, CPU, unpadded).

    ``topk``/``sample`` logits come reduced (a mapping of (rows, K) tensors, see
    :func:`~cachebrew.teacher.sparse_rows.reduce_rows`) unless ``reduce_logits`` is False
    (``verify`` wants the raw rows). On CUDA the tensors are pinned host memory still being
    filled: wait for ``example[READY]`` (a ``torch.cuda.Event``) before reading them.
    """
    pad_id = teacher.tokenizer.pad_token_id or 0
    padded = pad_batch(
        [{k: v for k, v in it.items() if k in _MODEL_INPUTS} for it in items], pad_id
    )
    batch = {k: v.to(device) for k, v in padded.items()}
    weights = next(teacher.model.parameters(), torch.empty(0)).dtype
    # fp32 weights and 16-bit features on CUDA: autocast (bf16/fp16 weights run as they are)
    autocast = device.type == "cuda" and spec_dtype_is_half(spec) and weights == torch.float32
    exact = is_exact(spec)  # store the final hidden state (the head's input); its head gives logits
    capture: AbstractContextManager[list[torch.Tensor]] = (
        final_hidden_capture(teacher.model) if exact else nullcontext([])
    )
    with capture as final, torch.autocast(device.type, enabled=autocast):
        outputs = teacher.model(**batch)
    adapted = teacher.adaptor(batch, outputs)
    if exact:
        adapted = with_final_hidden(teacher.model, {**adapted, "hidden": final[-1:]})
    lengths = batch["attention_mask"].sum(dim=1).tolist()
    mode = reduced_logits_mode(spec) if reduce_logits else None
    per_kind = {name: _extract(adapted, name, batch, lengths, mode) for name in spec.input_names}
    examples: list[dict[str, Any]] = [
        {name: per_kind[name][b] for name in per_kind} for b in range(len(items))
    ]
    if device.type == "cuda":  # the writer thread waits for the copies, the teacher does not
        ready = torch.cuda.Event()
        ready.record()
        for example in examples:
            example[READY] = ready
    return examples


def reduced_logits_mode(spec: FeatureSpec) -> LogitsMode | None:
    """The logits mode whose rows the teacher's side reduces (``topk``, ``sample``), or None."""
    feature = spec.get("logits")
    if feature is None or not feature.logits_mode:
        return None
    mode = parse_logits_mode(feature.logits_mode)
    return mode if mode.kind in REDUCED_KEYS else None


def teacher_request(
    spec: FeatureSpec,
    device: torch.device,
    *,
    attn_implementation: str = "auto",
    dtype: str = "auto",
    device_map: Any = None,
    max_memory: dict[str, Any] | None = None,
    offload_folder: str | None = None,
) -> ModelRequest:
    """What the teacher is asked for when it stores ``spec`` (module docstring).

    Args:
        spec: the stored features; device: where the teacher runs; dtype: ``--teacher-dtype``
        (``auto`` resolved here); the others: :class:`~cachebrew.models.request.ModelRequest`.
    """
    kinds = {feature.kind for feature in spec}
    return ModelRequest(
        hidden_states=any(k.startswith("hidden") for k in kinds),  # exact: a hook on the head
        attentions=any(k.startswith("attention") for k in kinds),
        attn_implementation=attn_implementation,
        dtype=resolve_weight_dtype(dtype, device, spec_dtype_is_half(spec)),
        device=str(device),
        device_map=device_map,
        max_memory=max_memory,
        offload_folder=offload_folder,
    )


def input_device(model: torch.nn.Module) -> torch.device:
    """Where a batch goes: the model's device, or for a model spread by accelerate the first
    accelerator in its ``hf_device_map`` (CPU when it has none: CPU and disk placements)."""
    placement = getattr(model, "hf_device_map", None)
    if not placement:
        return next(model.parameters()).device
    gpus = [d for d in placement.values() if d not in ("cpu", "disk")]
    if not gpus:
        return torch.device("cpu")
    return torch.device(f"cuda:{gpus[0]}" if isinstance(gpus[0], int) else gpus[0])


def _to_host(values: torch.Tensor) -> torch.Tensor:
    """A CUDA tensor copied into pinned host memory without blocking (see :data:`READY`);
    a CPU tensor as it is."""
    if not values.is_cuda:
        return values
    host = torch.empty(values.shape, dtype=values.dtype, pin_memory=True)
    return host.copy_(values, non_blocking=True)


def spec_dtype_is_half(spec: FeatureSpec) -> bool:
    """Whether every stored feature is 16-bit or less (then the teacher may run in autocast)."""
    return all(feature.dtype != "fp32" for feature in spec)


def _extract(
    adapted: Mapping[str, Any],
    name: str,
    batch: Mapping[str, torch.Tensor],
    lengths: list[int],
    mode: LogitsMode | None,
) -> list[Any]:
    """One stored input (``logits``, ``hidden.4``, ``attention_sum.2`` ...) for each example."""
    kind, _, layer_text = name.partition(".")
    if kind == "logits":
        return _extract_logits(adapted, batch, mode)
    source = "hidden" if kind.startswith("hidden") else "attention"
    layers = adapted.get(source)
    layer = int(layer_text)
    if layers is None or layer >= len(layers):
        available = 0 if layers is None else len(layers)
        raise ConfigError(
            f"feature {name!r}: the teacher gives {available} {source} layers "
            f"(indices 0..{available - 1}); choose layers in that range"
        )
    values = layers[layer].float()  # (B, L, D) or (B, H, L, L)
    if kind in ("attention_sum", "attention_mean"):  # reduce heads on the device, then copy
        values = values.sum(1) if kind == "attention_sum" else values.mean(1)  # (B, L, L)
    values = _to_host(values)
    out = []
    for b, n in enumerate(lengths):
        if kind == "hidden_cls":
            out.append(values[b, 0])
        elif source == "hidden" or kind != "attention":
            out.append(values[b, :n] if source == "hidden" else values[b, :n, :n])
        else:
            out.append(values[b, :, :n, :n])
    return out


def _extract_logits(
    adapted: Mapping[str, Any], batch: Mapping[str, torch.Tensor], mode: LogitsMode | None
) -> list[Any]:
    """Each example's logits rows: raw (rows, C), or with ``mode`` (``topk``/``sample``) the
    rows reduced in chunks on the device (:func:`~cachebrew.teacher.sparse_rows.reduce_rows`)."""
    logits = adapted.get("logits")
    if isinstance(logits, list | tuple):
        if len(logits) != 1:
            raise ConfigError(
                f"the teacher adaptor gives {len(logits)} logits heads; cachebrew caches one"
            )
        logits = logits[0]
    if logits is None:
        raise ConfigError("feature 'logits': the teacher adaptor returns no 'logits'")
    if logits.dim() == 2 and mode is None:  # a sequence-level head: (C,) per example
        return [_to_host(row.float()) for row in logits]
    if logits.dim() == 2:
        selected = [torch.ones(1, dtype=torch.bool)] * logits.size(0)  # one row per example
        logits = logits[:, None]  # (B, 1, C)
    else:
        mask = adapted.get("logits_mask")
        mask = batch["attention_mask"] if mask is None else mask
        if isinstance(mask, list | tuple):
            mask = mask[0]
        selected = [row.bool() for row in mask]
    if mode is None:
        return [_to_host(logits[b][keep].float()) for b, keep in enumerate(selected)]
    batch_size, length, vocab = logits.shape
    reduced = reduce_rows(logits.reshape(-1, vocab), mode)  # padded rows too: no (rows, V) gather
    reduced = {
        key: _to_host(value.reshape(batch_size, length, -1)) for key, value in reduced.items()
    }
    return [
        {key: value[b][keep.to(value.device)] for key, value in reduced.items()}
        for b, keep in enumerate(selected)
    ]
