"""The default adaptor: HF model outputs in TextBrewer's vocabulary (``logits``, ``hidden`` ...)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch

from cachebrew.errors import ConfigError

# heads whose logits are per position; their adaptor output carries ``logits_mask``
TOKEN_LEVEL_KINDS: frozenset[str] = frozenset({"token_classification", "masked_lm", "causal_lm"})

# adaptor key -> HF output key
_OUTPUT_KEYS = {
    "logits": "logits",
    "hidden": "hidden_states",
    "attention": "attentions",
    "losses": "loss",
}
Adaptor = Callable[[Any, Any], dict[str, Any]]


def default_adaptor(batch: Any, outputs: Any, *, kind: str | None = None) -> dict[str, Any]:
    """Map HF model outputs to cachebrew's adaptor keys (TextBrewer's vocabulary).

    Args:
        batch: the Mapping the model was called with (``input_ids``, ``attention_mask`` (B, L),
            optional ``labels``); tuple batches give no ``inputs_mask`` / ``labels``.
        outputs: an HF ``ModelOutput`` or a Mapping (``logits``, ``hidden_states``, ...).
        kind: the head (``LoadedModel.kind``); decides ``logits_mask`` and ``labels``.

    Returns:
        ``logits`` (B, C) or (B, L, C); ``hidden``: num_layers + 1 tensors (B, L, D), ``hidden[0]``
        the embeddings as in TextBrewer; ``attention``: num_layers tensors (B, H, L, L);
        ``inputs_mask`` (B, L); ``losses``: the model's loss when computed; ``labels`` for
        sequence classification. Token-level heads also give ``logits_mask`` = attention mask:
        KD on every real position (TextBrewer's NER example, DistilBERT), which needs no labels
        and is the student's mask too when the tokenizer is shared. Their ``labels`` (not for
        causal LM: shifted inside the model) are pre-selected with it to (N_sel,), like the
        logits; -100 (specials, later sub-tokens) must be ignored.

    Note:
        HF returns attention **probabilities** (post-softmax, masked keys 0), not the pre-softmax
        scores TextBrewer's example models returned. ``attention_mse(_sum)`` work on them as they
        are (the ``<= -1e-3`` clamp is a no-op); ``attention_ce(_mean)`` softmax their input, so
        they compare softmax(probabilities), a flatter target. Use a custom adaptor for scores.
    """
    if not isinstance(outputs, Mapping):
        raise ConfigError(
            f"default_adaptor needs dict-like model outputs, got {type(outputs).__name__}; "
            "pass your own adaptor for tuple outputs"
        )
    result: dict[str, Any] = {}
    for key, output_key in _OUTPUT_KEYS.items():
        if outputs.get(output_key) is not None:
            result[key] = outputs[output_key]
    if isinstance(batch, Mapping):
        result.update(_batch_masks_and_labels(batch, kind))
    return result


def _batch_masks_and_labels(batch: Mapping[str, Any], kind: str | None) -> dict[str, Any]:
    result: dict[str, Any] = {}
    mask = batch.get("attention_mask")
    if mask is None and batch.get("input_ids") is not None:
        mask = torch.ones_like(batch["input_ids"])  # what HF assumes without a mask
    if mask is not None:
        result["inputs_mask"] = mask
    labels = batch.get("labels")
    if kind in TOKEN_LEVEL_KINDS and mask is not None:
        result["logits_mask"] = mask
        if labels is not None and kind != "causal_lm":
            result["labels"] = labels[mask.bool()]
    elif labels is not None and kind == "sequence_classification":
        result["labels"] = labels
    return result
