"""``--logits exact``: the teacher's final hidden state per token plus its LM head, stored once.

A causal LM's logits are ``z = W h + b`` with ``h`` (H,) the final hidden state (after any
final norm), ``W`` (V, H) and ``b`` (V,) the LM head. Storing ``h`` costs ``H x 2`` bytes per
token in fp16 (1,792 B at H = 896) against ``V x 2`` for dense logits (303,872 B at
V = 151,936), and the logits are recomputed exactly (up to the stored dtype of ``h``) at train
time, in vocabulary chunks (:mod:`cachebrew.distill.exact_kd`), never as a (rows, V) tensor.

On disk:

- ``logits.hidden`` (rows, H) in the logits feature's dtype (fp16 by default), one row per
  stored logits row (per valid token of a token-level head), like the other logits arrays.
- ``lm_head.safetensors`` in the cache root: ``weight`` (V, H) and, if the head has one,
  ``bias`` (V,), in the teacher's own parameter dtype (lossless). Written once per cache, by
  the process (rank or part 0) that also writes the first shard window, before its completion
  marker, so that whoever publishes the manifest finds it (``--finalize`` runs no teacher).
- ``manifest.json`` ``lm_head``: ``{"path", "sha256", "bytes", "shape", "dtype", "bias"}``.
  Opening a cache checks the file is there with its size; reading the head (a
  :class:`~cachebrew.cache.feed.dataset.CacheDataset` over the cache) and ``cachebrew verify``
  check its sha256.

Precompute refuses a teacher whose head does not reproduce its logits from the final hidden
state (soft-capping, a logit scale ...): see :mod:`cachebrew.teacher.exact_head`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from cachebrew.errors import CacheError

HIDDEN_ARRAY = "logits.hidden"


class LMHead:
    """A teacher's LM head: ``weight`` (V, H) and optional ``bias`` (V,), kept once per device.

    :meth:`to` memoises the copy per device, so moving every batch's
    :class:`ExactLogits` to the GPU moves the (V, H) weight once.
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None):
        if weight.dim() != 2 or (bias is not None and tuple(bias.shape) != (weight.shape[0],)):
            raise CacheError(
                f"LM head: weight must be (V, H) and bias (V,), got {tuple(weight.shape)} and "
                f"{None if bias is None else tuple(bias.shape)}"
            )
        self.weight, self.bias = weight, bias
        self._copies: dict[str, LMHead] = {str(weight.device): self}

    @property
    def num_classes(self) -> int:
        """V, the number of logits."""
        return int(self.weight.shape[0])

    @property
    def hidden_size(self) -> int:
        """H, the width of the hidden state the head reads."""
        return int(self.weight.shape[1])

    def to(self, device: Any) -> LMHead:
        """This head on ``device`` (copied the first time only)."""
        key = str(torch.device(device))
        if key not in self._copies:
            bias = None if self.bias is None else self.bias.to(device)
            self._copies[key] = LMHead(self.weight.to(device), bias)
        return self._copies[key]

    def logits(self, hidden: torch.Tensor, start: int = 0, stop: int | None = None) -> torch.Tensor:
        """float32 logits of vocabulary ids ``[start, stop)``: (rows, H) -> (rows, stop - start)."""
        weight = self.weight[start:stop].float()  # (c, H); no copy for an fp32 head
        out = hidden.float() @ weight.T
        if self.bias is not None:
            out += self.bias[start:stop].float()
        return out

    def tensors(self) -> dict[str, torch.Tensor]:
        """``{"weight": ..., ["bias": ...]}`` as stored in :data:`HEAD_FILE` (CPU, contiguous)."""
        out = {"weight": self.weight.detach().cpu().contiguous()}
        if self.bias is not None:
            out["bias"] = self.bias.detach().cpu().contiguous()
        return out


@dataclass(frozen=True)
class ExactLogits:
    """A batch of ``--logits exact`` teacher rows: what the exact KD loss reads, never (rows, V).

    Attributes:
        hidden: (rows, H) float32: the stored final hidden states (fp16 values by default).
        head: the cache's :class:`LMHead`.
    """

    hidden: torch.Tensor
    head: LMHead
    kind: str = "exact"

    def to(self, device: Any) -> ExactLogits:
        """The same rows on ``device`` (the loop's ``move_to_device`` calls this)."""
        return ExactLogits(self.hidden.to(device), self.head.to(device))

    @property
    def shape(self) -> tuple[int, int]:
        """``(rows, V)``: the shape of the dense logits this stands for."""
        return (int(self.hidden.shape[0]), self.head.num_classes)

    @property
    def num_classes(self) -> int:
        """V."""
        return self.head.num_classes

    def dense(self) -> torch.Tensor:
        """The full (rows, V) float32 logits: for tests and small vocabularies only."""
        return self.head.logits(self.hidden)


def read_exact_logits(arrays: dict[str, torch.Tensor], head: LMHead | None) -> ExactLogits:
    """An :class:`ExactLogits` from a batch's decoded ``logits.hidden`` rows and the head.

    Raises:
        CacheError: no head (the batch was collated without the cache's reader: read exact
            caches through :class:`~cachebrew.cache.feed.dataset.CacheDataset`), or a hidden width
            that differs from the head's.
    """
    if head is None:
        raise CacheError(
            "an exact-logits cache needs its LM head to give logits; read it through "
            "CacheDataset (which loads lm_head.safetensors) or pass the layout a head"
        )
    hidden = arrays[HIDDEN_ARRAY]
    if hidden.shape[1] != head.hidden_size:
        raise CacheError(
            f"logits.hidden has width {hidden.shape[1]} but the LM head reads "
            f"{head.hidden_size}: the cache's LM head belongs to another teacher; rebuild "
            "the cache with `cachebrew precompute --overwrite`"
        )
    return ExactLogits(hidden, head)
