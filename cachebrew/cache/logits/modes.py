"""What a ``--logits MODE`` is and what it can hold: parsing, and the limits a mode puts on
the teacher's vocabulary, checked when the spec is built (before the teacher runs).

Modes: ``dense``, ``topk:K[:CODE]``, ``sample:N[@T]`` and ``exact``; the storage of each is
described in :mod:`cachebrew.cache.logits.sparse`. The limits, each named in its error:

- ``topk:K`` keeps K distinct ids per row: K must not exceed the vocabulary V.
- ``sample:N`` stores how often each drawn id was drawn in uint16 (uint8 below 256 draws), so
  N <= :data:`MAX_SAMPLE_DRAWS` (65,535).
- a value code (``topk:K:q4`` ...) stores ids as 3-byte varints: V <= :data:`MAX_CODED_VOCAB`
  (2**21 = 2,097,152).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from cachebrew.cache.logits.topk_codes import VARINT_MAX_BYTES, code_problems
from cachebrew.errors import ConfigError

MODES: tuple[str, ...] = ("dense", "topk", "sample", "exact")
TOPK_ARRAYS: tuple[str, ...] = ("logits.topk_values", "logits.topk_ids", "logits.logsumexp")
SAMPLE_ARRAYS: tuple[str, ...] = ("logits.sample_ids", "logits.sample_counts")
MAX_SAMPLE_DRAWS = 2**16 - 1  # counts are stored as uint16
MAX_CODED_VOCAB = 1 << (7 * VARINT_MAX_BYTES)  # varint ids of a value code: 3 bytes of 7 bits


@dataclass(frozen=True)
class LogitsMode:
    """A parsed ``--logits MODE``: ``dense``, ``topk:K[:CODE]``, ``sample:N[@T]`` or ``exact``.

    Attributes:
        kind: ``"dense"``, ``"topk"``, ``"sample"`` or ``"exact"``.
        size: K or N (None for dense).
        temperature: the sampling temperature of ``sample`` (1.0 otherwise).
        code: ``topk`` only: a lossy value code (``q4``, ``q5``, ``q8``) or None (lossless).
    """

    kind: str
    size: int | None = None
    temperature: float = 1.0
    code: str | None = None

    def __str__(self) -> str:
        if self.kind in ("dense", "exact"):
            return self.kind
        suffix = f"@{self.temperature:g}" if self.kind == "sample" and self.temperature != 1 else ""
        code = f":{self.code}" if self.code else ""
        return f"{self.kind}:{self.size}{code}{suffix}"

    @property
    def arrays(self) -> tuple[str, ...]:
        """The stored data arrays of this mode (``("logits",)`` for dense)."""
        arrays = {"topk": TOPK_ARRAYS, "sample": SAMPLE_ARRAYS, "exact": ("logits.hidden",)}
        return arrays.get(self.kind, ("logits",))


def parse_logits_mode(text: str) -> LogitsMode:
    """Parse ``dense``, ``topk:K``, ``topk:K:CODE``, ``sample:N`` / ``sample:N@T`` or ``exact``.

    Raises:
        ConfigError: an unknown mode or value code, a size that is not a positive integer, a
            sample size above :data:`MAX_SAMPLE_DRAWS` or a temperature that is not a positive
            number, naming the valid forms and limits.
    """
    forms = (
        "dense, topk:K (e.g. topk:128 or lossy topk:128:q5), sample:N (e.g. sample:12), "
        "sample:N@T or exact"
    )
    kind, _, rest = str(text).strip().partition(":")
    if kind in ("dense", "exact") and not rest:
        return LogitsMode(kind)
    rest, has_code, code = rest.partition(":")
    if has_code and (kind != "topk" or code_problems(code)):
        problems = code_problems(code) if kind == "topk" else ["only topk:K takes a value code"]
        raise ConfigError(f"logits mode {text!r}: {problems[0]}")
    size_text, _, temp_text = rest.partition("@")
    if kind not in ("topk", "sample") or not size_text.isdigit() or int(size_text) < 1:
        raise ConfigError(f"logits mode {text!r}: choose one of {forms}")
    if temp_text and kind == "topk":
        raise ConfigError(f"logits mode {text!r}: only sample:N takes a temperature (@T)")
    try:
        temperature = float(temp_text) if temp_text else 1.0
    except ValueError:
        temperature = -1.0
    if not math.isfinite(temperature) or temperature <= 0:
        raise ConfigError(f"logits mode {text!r}: the temperature after @ must be > 0")
    size = int(size_text)
    if kind == "sample" and size > MAX_SAMPLE_DRAWS:
        raise ConfigError(
            f"logits mode {text!r}: {size:,} draws per row is more than {MAX_SAMPLE_DRAWS:,}, "
            "the largest count the cache stores per id (uint16); use sample:N with N <= "
            f"{MAX_SAMPLE_DRAWS}"
        )
    return LogitsMode(kind, size, temperature, code or None)


def vocab_problems(mode: LogitsMode, vocab_size: int) -> list[str]:
    """What ``mode`` cannot hold for a teacher with ``vocab_size`` logits, each naming the fix."""
    problems = []
    if mode.kind == "topk" and (mode.size or 0) > vocab_size:
        problems.append(
            f"--logits {mode}: keeps {mode.size:,} ids per row, but the teacher has "
            f"{vocab_size:,} logits; use topk:K with K <= {vocab_size} (topk:{vocab_size} or "
            "dense keeps every logit)"
        )
    if mode.code and vocab_size > MAX_CODED_VOCAB:
        problems.append(
            f"--logits {mode}: the value code stores ids as {VARINT_MAX_BYTES}-byte varints "
            f"(ids below {MAX_CODED_VOCAB:,}), but the teacher has {vocab_size:,} logits; use "
            f"topk:{mode.size} (lossless, any vocabulary)"
        )
    return problems


def logits_problems(
    *,
    layers: Sequence[int],
    reduction: str | None,
    reductions: Sequence[str],
    topk: object,
    vocab_size: object,
    logits_mode: str | None,
) -> list[str]:
    """What is wrong with a stored ``logits`` feature's fields, as messages (the format's
    :class:`~cachebrew.cache.format.spec.StoredFeature` calls this)."""
    problems = []
    if layers:
        problems.append(f"logits: takes no layers, got {tuple(layers)!r}")
    if reduction not in reductions:
        problems.append(
            f"logits: unknown reduction {reduction!r}; choose one of {list(reductions)}"
        )
    if topk is not None and (not _is_int(topk) or topk < 1):  # type: ignore[operator]
        problems.append(f"logits: topk must be a positive integer or None, got {topk!r}")
    if vocab_size is not None and (not _is_int(vocab_size) or vocab_size < 1):  # type: ignore[operator]
        problems.append(f"logits: vocab_size must be a positive integer, got {vocab_size!r}")
    elif vocab_size is not None and logits_mode is not None:
        problems += vocab_problems(parse_logits_mode(logits_mode), int(vocab_size))  # type: ignore[call-overload]
    if logits_mode not in (None, "dense") and vocab_size is None:
        problems.append(
            f"logits: --logits {logits_mode} needs the vocabulary size (vocab_size) to "
            "choose the id width"
        )
    return problems


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
