"""The packed GPU feed: stored rows packed into reused pinned memory, padded and cast on the GPU.

The CUDA collate path of :class:`~cachebrew.cache.feed.dataset.CacheDataset` (issue 15, fourth
pass). For each hidden-state or attention array of a batch the CPU only gathers the examples'
stored rows (fp16, bf16 bits as uint16, int8 and their per-row scales; no padding, no cast)
into *one* contiguous packed buffer from a :class:`PinnedPool`, and the buffer crosses the bus
in one non-blocking copy. On the device the (B, ...) padded float32 batch is rebuilt with one
vectorised op: a boolean mask of the valid positions, built from the lengths, and
``masked_scatter_`` of the packed values (the mask's row-major order is exactly the order in
which the examples' rows were concatenated).

Measured on the CPU side (docs/benchmarks-history.md, "fourth pass"; no GPU here): 1.38x (hidden) and
1.75x (attention) the throughput of the previous path, which padded in the stored dtype and
then copied every padded batch into pinned memory with ``pin_memory()``.

Everything here is device-agnostic: with ``device="cpu"`` the same functions run on the CPU,
which is how the tests pin the packed path to the CPU float32 batches bit for bit.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import numpy as np
import torch

from cachebrew.cache.feed.batch_copy import copy_pool, scale_rows
from cachebrew.cache.format.codecs import decode_tensor
from cachebrew.cache.format.shapes import array_shape, padded_shape


class CopyEvent(Protocol):
    """What :class:`PinnedPool` needs of a ``torch.cuda.Event`` recorded after a copy."""

    def query(self) -> bool: ...  # noqa: D102

    def synchronize(self) -> None: ...  # noqa: D102


class PinnedPool:
    """Up to ``slots`` reused flat host buffers; one is handed out again only after the copy
    that read it has completed.

    :meth:`take` marks a buffer busy; :meth:`release` gives it back with the event recorded
    after the non-blocking copy that reads it (None: the copy already completed, as on the
    CPU). A released buffer is reused once its event's ``query()`` is True; when every kept
    buffer is released but still pending, :meth:`take` waits on the oldest one
    (``synchronize()``); when all are busy (taken by other threads), it returns fresh memory
    that is not kept.

    Args:
        slots: buffers kept.
        pin: page-lock the buffers (None: only when CUDA is available; a CPU-only torch build
            has no pinned allocator).
    """

    def __init__(self, slots: int = 8, pin: bool | None = None):
        self.slots = slots
        self.pin = torch.cuda.is_available() if pin is None else pin
        self.allocations = 0  # new buffers made (tests and benchmarks read it)
        self._entries: list[list[Any]] = []  # [buffer, event | None, busy, release order]
        self._released = 0
        self._lock = threading.Lock()

    def take(self, nbytes: int) -> torch.Tensor:
        """A flat uint8 host tensor of at least ``nbytes`` that no pending copy reads."""
        with self._lock:
            free = [e for e in self._entries if not e[2]]
            ready = [e for e in free if e[1] is None or e[1].query()]
            if not ready and free and len(self._entries) >= self.slots:
                oldest = min(free, key=lambda e: e[3])
                oldest[1].synchronize()
                ready = [oldest]
            if ready:  # the first that fits, else one to grow
                entry = next((e for e in ready if e[0].numel() >= nbytes), ready[0])
                if entry[0].numel() < nbytes:
                    entry[0] = self._new(nbytes)
                entry[1], entry[2] = None, True
                return entry[0]
            buffer = self._new(nbytes)
            if len(self._entries) < self.slots:
                self._entries.append([buffer, None, True, 0])
            return buffer

    def release(self, buffer: torch.Tensor, event: CopyEvent | None) -> None:
        """Give ``buffer`` back; it may be reused once ``event`` (None: now) has completed."""
        with self._lock:
            for entry in self._entries:
                if entry[0] is buffer:
                    self._released += 1
                    entry[1], entry[2], entry[3] = event, False, self._released
                    return

    def __getstate__(self) -> dict[str, Any]:
        return {"slots": self.slots, "pin": self.pin}  # a pickled pool arrives empty

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["slots"], state["pin"])  # type: ignore[misc]

    def _new(self, nbytes: int) -> torch.Tensor:
        self.allocations += 1
        return torch.empty(max(nbytes, 1), dtype=torch.uint8, pin_memory=self.pin)


def pack_rows(
    rows: Sequence[np.ndarray], buffer: torch.Tensor, offset: int = 0
) -> tuple[torch.Tensor, int]:
    """Concatenate the examples' stored rows, flattened, into ``buffer`` from byte ``offset``.

    Returns the packed 1-D tensor (a view into ``buffer`` in the stored dtype; bf16 bits
    stored as uint16 come back as int16) and the next free byte offset (aligned to 8).
    """
    dtype = rows[0].dtype
    nbytes = sum(r.size for r in rows) * dtype.itemsize
    flat = buffer[offset : offset + nbytes]
    np.concatenate([r.reshape(-1) for r in rows], out=flat.numpy().view(dtype))
    stored = np.dtype(np.int16) if dtype == np.uint16 else dtype
    return flat.view(_TORCH_DTYPES[stored]), offset + -(-nbytes // 8) * 8


_TORCH_DTYPES = {
    np.dtype(np.float32): torch.float32,
    np.dtype(np.float16): torch.float16,
    np.dtype(np.int16): torch.int16,
    np.dtype(np.int8): torch.int8,
}


def valid_mask(
    name: str, lengths: torch.Tensor, shape: tuple[int, ...], device: torch.device | str
) -> torch.Tensor:
    """The (broadcastable) boolean mask of the real (unpadded) positions of a padded batch."""
    rule = array_shape(name)
    if rule is None or rule.token_axes == 0:
        raise ValueError(f"array {name!r} is not padded")
    width = shape[-1] if rule.token_axes == 2 else shape[1]
    valid = torch.arange(width, device=device) < lengths[:, None]  # (B, L)
    if rule.token_axes == 1:
        return valid[:, :, None]  # hidden (B, L, 1)
    maps = valid[:, :, None] & valid[:, None, :]  # (B, L, L)
    return maps[:, None] if rule.heads else maps  # attention (B, 1, L, L), sum / mean (B, L, L)


def unpack(
    name: str,
    packed: torch.Tensor,
    shape: tuple[int, ...],
    lengths: torch.Tensor,
    dtype: str,
    scales: torch.Tensor | None = None,
) -> torch.Tensor:
    """The zero-padded float32 batch ``shape`` from packed stored values, on their device.

    Args:
        packed: 1-D stored values (fp32, fp16, bf16 bits as int16/uint16, int8), examples
            concatenated in batch order, each in its row-major stored order.
        lengths: (B,) int64 token counts, on the same device.
        dtype: the storage dtype name (``"bf16"`` marks 16-bit integers as bf16 bits).
        scales: the packed (rows,) float32 per-row scales of int8 rows (hidden kinds).
    """
    rows = scales.numel() if scales is not None else 1
    scale = scales[:, None] if scales is not None else None
    values = decode_tensor(packed.view(rows, -1), dtype, scale).view(-1)
    rule = array_shape(name)
    if rule is not None and rule.token_axes == 0:  # hidden_cls: one row per example, no padding
        return values.view(shape)
    out = torch.zeros(shape, dtype=torch.float32, device=packed.device)
    return out.masked_scatter_(valid_mask(name, lengths, shape, packed.device), values)


def packed_layer_list(
    arrays: Mapping[int, str],
    features: Sequence[Mapping[str, np.ndarray]],
    lengths: Sequence[int],
    width: int,
    dtypes: Mapping[str, str],
    device: str,
    pinned: PinnedPool,
    pool: Any = None,
    event: Callable[[], CopyEvent | None] | None = None,
) -> list[torch.Tensor | None]:
    """Per teacher layer the padded float32 batch on ``device`` (None where nothing is stored).

    The arrays are packed in parallel with ``pool`` (an executor; numpy's concatenate releases
    the GIL); each packed buffer is moved non-blocking and released to ``pinned`` with the
    event ``event()`` returns (default: a ``torch.cuda.Event`` recorded on the current
    stream on CUDA, None elsewhere).
    """
    target = torch.device(device)
    lengths_t = torch.tensor(lengths, dtype=torch.long).to(target)

    def pack(name: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        rows, scale_parts = [f[name] for f in features], scale_rows(features, name)
        nbytes = sum(r.nbytes + 8 for r in rows)
        if scale_parts is not None:
            nbytes += sum(s.nbytes + 8 for s in scale_parts)
        buffer = pinned.take(nbytes)
        values, offset = pack_rows(rows, buffer)
        scales = pack_rows(scale_parts, buffer, offset)[0] if scale_parts is not None else None
        return buffer, values, scales

    names = list(arrays.values())
    pool = copy_pool(pool, features, names)
    packs = list(pool.map(pack, names)) if pool is not None else [pack(name) for name in names]
    layers: list[torch.Tensor | None] = [None] * (max(arrays) + 1)
    for (layer, name), (buffer, values, scales) in zip(arrays.items(), packs, strict=True):
        rows = [f[name] for f in features]
        shape = padded_shape(name, rows, lengths, width)
        moved = values.to(target, non_blocking=True)
        moved_scales = scales.to(target, non_blocking=True) if scales is not None else None
        if target.type == "cuda":
            pinned.release(buffer, event() if event is not None else _record())
            layers[layer] = unpack(name, moved, shape, lengths_t, dtypes[name], moved_scales)
        else:  # the copy is synchronous, but on the CPU "moved" may be the buffer itself
            layers[layer] = unpack(name, moved, shape, lengths_t, dtypes[name], moved_scales)
            pinned.release(buffer, event() if event is not None else None)
    return layers


def _record() -> CopyEvent:
    event = torch.cuda.Event()
    event.record()
    return event
