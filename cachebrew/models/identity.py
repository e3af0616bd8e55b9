"""What a model *is*, as the cache manifest records it: class, config hash and weights hash.

Two loads of the same checkpoint give the same identity, so a cache can tell whether it was
built by this teacher; keys that only say how the model runs (output flags, the transformers
version) are left out of the config hash.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch

# config keys that describe how we run the model, not what it is
_VOLATILE_CONFIG_KEYS = {"transformers_version", "output_hidden_states", "output_attentions"}


def model_identity(
    model: torch.nn.Module,
    kind: str,
    source: Path | str,
    weights: tuple[str, str],
    fresh: bool,
    tokenizer_sha: str | None = None,
) -> dict[str, Any]:
    """What a cache manifest records about a model (see :class:`LoadedModel`'s ``identity``)."""
    config = getattr(model, "config", None)
    return {
        "class": type(model).__name__,
        "kind": kind,
        "config_sha256": hash_config(config) if hasattr(config, "to_dict") else None,
        "weights_sha256": weights[0],
        "weights_hash_of": weights[1],
        "fresh_head": fresh,
        "tokenizer_sha256": tokenizer_sha,
        "source": str(source),
    }


def hash_config(config: Any) -> str:
    """sha256 of an HF config's JSON, without the keys that say how it runs, not what it is."""
    values = {
        key: value
        for key, value in config.to_dict().items()
        if key not in _VOLATILE_CONFIG_KEYS and not key.startswith("_")
    }
    text = json.dumps(values, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def hash_state_dict(model: torch.nn.Module) -> str:
    """sha256 over (name, dtype, shape, bytes) of every tensor, in name order."""
    digest = hashlib.sha256()
    state = model.state_dict()
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
