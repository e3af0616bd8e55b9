"""Precompute side of ``--logits exact``: the teacher's LM head, and the check that it is exact.

``exact`` stores the final hidden state ``h`` and recomputes ``W h + b`` at train time
(:mod:`cachebrew.cache.logits.exact`). That is the teacher's distribution only if the model
does nothing to its logits after the head: Gemma-2 soft-caps them (``c * tanh(z / c)``),
Cohere scales them, and a model whose last ``hidden_states`` entry comes before its final norm
would not match either. So on the first batch of each precompute process, the logits
recomputed from the final hidden state (fp32) must equal the teacher's logits within
:data:`REL_TOLERANCE` of the largest logit, or precompute stops with a ConfigError pointing at
``topk:K`` or ``dense``.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch

from cachebrew.cache.format.lm_head import write_head
from cachebrew.cache.format.spec import FeatureSpec
from cachebrew.cache.format.storage import CacheLocation
from cachebrew.cache.logits.exact import LMHead
from cachebrew.errors import ConfigError

#: max |head(h) - logits| allowed, relative to max(1, max |logits|): far above fp32 rounding and
#: fp16 autocast (~1e-3), far below a soft-cap or a scale at realistic logits (> 0.1).
REL_TOLERANCE = 1e-2
_CHECKED: weakref.WeakSet[torch.nn.Module] = weakref.WeakSet()


def is_exact(spec: FeatureSpec) -> bool:
    """Whether the cache stores ``--logits exact``."""
    logits = spec.get("logits")
    return logits is not None and logits.logits_mode == "exact"


def lm_head_of(model: torch.nn.Module) -> LMHead:
    """The model's output head (``get_output_embeddings()``) as an :class:`LMHead`.

    Raises:
        ConfigError: the model has no linear output head to store.
    """
    get_head = getattr(model, "get_output_embeddings", None)
    head = get_head() if callable(get_head) else None
    if not isinstance(head, torch.nn.Linear):
        raise ConfigError(
            f"--logits exact needs the teacher's linear LM head, but {type(model).__name__}."
            f"get_output_embeddings() gives {type(head).__name__}; precompute with "
            "--logits topk:K or --logits dense"
        )
    bias = None if head.bias is None else head.bias.detach()
    return LMHead(head.weight.detach(), bias)


def write_teacher_head(model: torch.nn.Module, spec: FeatureSpec, out: str, is_main: bool) -> None:
    """Rank or part 0 of an exact-logits precompute writes the head into the cache root."""
    if is_exact(spec) and is_main:
        write_head(CacheLocation(out), lm_head_of(model))


@contextmanager
def final_hidden_capture(model: torch.nn.Module) -> Iterator[list[torch.Tensor]]:
    """Collect the input of the model's LM head during a forward: the final hidden state
    (B, L, H), without asking the model for every layer's hidden states.

    Raises:
        ConfigError: the model has no linear output head (:func:`lm_head_of`).
    """
    lm_head_of(model)  # the same refusal as for storing the head
    captured: list[torch.Tensor] = []
    head: torch.nn.Module = model.get_output_embeddings()  # type: ignore[operator]
    handle = head.register_forward_pre_hook(lambda _module, args: captured.append(args[0]))
    try:
        yield captured
    finally:
        handle.remove()


def with_final_hidden(model: torch.nn.Module, adapted: Mapping[str, Any]) -> dict[str, Any]:
    """The adaptor output with ``logits`` replaced by the final hidden state (B, L, H).

    The first call for a model checks that its head reproduces its logits from that state.

    Raises:
        ConfigError: no hidden states, or a head that does not reproduce the logits (names
            the difference and the modes to use instead).
    """
    hidden = adapted.get("hidden")
    if not hidden:
        raise ConfigError(
            "--logits exact needs the teacher's final hidden state, but its adaptor returns no "
            "'hidden'; precompute with --logits topk:K or --logits dense"
        )
    final = hidden[-1]  # (B, L, H), after the final norm in HF models
    if model not in _CHECKED:
        check_head(lm_head_of(model), final, adapted.get("logits"), type(model).__name__)
        _CHECKED.add(model)
    return {**adapted, "logits": final}


def check_head(head: LMHead, hidden: torch.Tensor, logits: Any, name: str) -> float:
    """Max |head(hidden) - logits| over a batch; raise if above the tolerance.

    Args:
        head: the teacher's head; hidden: (B, L, H); logits: (B, L, V) or a one-element list.
        name: the teacher, for the message.

    Raises:
        ConfigError: different widths, or a difference above ``REL_TOLERANCE * max(1, max |z|)``.
    """
    if isinstance(logits, list | tuple):
        logits = logits[0]
    if logits is None or tuple(logits.shape[:-1]) != tuple(hidden.shape[:-1]):
        raise ConfigError(
            f"--logits exact: teacher {name} gives no per-token logits matching its final hidden "
            "state; precompute with --logits topk:K or --logits dense"
        )
    head = head.to(hidden.device)
    if logits.shape[-1] != head.num_classes or hidden.shape[-1] != head.hidden_size:
        raise ConfigError(
            f"--logits exact: teacher {name}'s LM head is {head.num_classes} x {head.hidden_size} "
            f"but it gives {logits.shape[-1]} logits from a {hidden.shape[-1]}-wide hidden state; "
            "precompute with --logits topk:K or --logits dense"
        )
    flat = hidden.reshape(-1, hidden.shape[-1])
    reference = logits.reshape(-1, logits.shape[-1]).float()
    worst = 0.0
    for start in range(0, flat.shape[0], 64):  # (64, V) temporaries at most
        stop = start + 64
        diff = (head.logits(flat[start:stop]) - reference[start:stop]).abs().max()
        worst = max(worst, float(diff))
    allowed = REL_TOLERANCE * max(1.0, float(reference.abs().max()))
    if not worst <= allowed:
        raise ConfigError(
            f"--logits exact: teacher {name}'s LM head applied to its final hidden state does "
            f"not reproduce its logits (max |difference| {worst:.3g} on the first batch, allowed "
            f"{allowed:.3g}): the model changes its logits after the head (soft-capping, a "
            "scale or a norm after the last hidden state); precompute with --logits topk:K or "
            "--logits dense"
        )
    return worst
