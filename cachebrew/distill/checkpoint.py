"""Full training checkpoints: write atomically, find the latest, read without pickle.

Layout under ``output_dir``::

    checkpoint-gs{N}/
      student.safetensors       the (unwrapped) student's state dict
      projections.safetensors   the match projections, keyed '<match index>.<param>' (if any)
      training_state.pt         tensors only: optimizer, LR scheduler and grad-scaler state
                                dicts, torch RNG states, the data passes' RNG snapshots;
                                read with torch.load(weights_only=True)
      trainer_state.json        global step, epoch, data positions, Python/NumPy RNG states,
                                task-sampler state, plan, cachebrew version
    latest                      name of the newest complete checkpoint directory

A checkpoint is written into a hidden temporary directory and published with
:func:`cachebrew.files.publish_dir` when every file is written (fsynced, renamed into place,
directories fsynced; a same-step one is swapped in atomically), then ``latest`` is replaced
(write + fsync + rename + fsync): a run killed or a machine losing power while saving leaves
at most a ``.tmp-*`` directory, never a ``checkpoint-gs{N}`` that looks complete, and
``latest`` names a durable checkpoint. A save that fails (a full disk) removes its temporary
directory and raises :class:`CheckpointError`; the previous checkpoint and ``latest`` stay.
:func:`prune_checkpoints` keeps a chosen few (the runner's ``keep_checkpoints``); the loop
itself never deletes one, as TextBrewer kept every ``gs{N}.pkl``.
TextBrewer saved ``gs{N}.pkl`` (student weights only, pickled): no resume, and the trained
projections were lost (its issue #116).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import struct
import uuid
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_model, save_model
from torch import nn

from cachebrew.errors import CheckpointError
from cachebrew.files import make_dirs_durable, publish_dir, write_json_atomic, write_text_atomic

logger = logging.getLogger(__name__)

PREFIX = "checkpoint-gs"
LATEST = "latest"
STUDENT_FILE = "student.safetensors"
PROJECTIONS_FILE = "projections.safetensors"
TENSORS_FILE = "training_state.pt"
STATE_FILE = "trainer_state.json"


def checkpoint_dir(output_dir: str | os.PathLike[str], global_step: int) -> Path:
    """``output_dir/checkpoint-gs{global_step}``."""
    return Path(output_dir) / f"{PREFIX}{global_step}"


def save_checkpoint(
    output_dir: str | os.PathLike[str],
    global_step: int,
    student: nn.Module,
    projections: nn.Module | None,
    state: dict[str, Any],
    tensors: dict[str, Any],
) -> Path:
    """Write a complete checkpoint for ``global_step`` and point ``latest`` at it.

    Args:
        output_dir: created if missing.
        global_step: optimizer steps taken.
        student: the unwrapped student.
        projections: a module holding the projections, or None.
        state: JSON-able trainer state.
        tensors: state dicts and RNG tensors (anything ``torch.load(weights_only=True)`` reads).

    Returns:
        The checkpoint directory.
    """
    final = checkpoint_dir(output_dir, global_step)
    make_dirs_durable(final.parent)
    tmp = final.parent / f".tmp-{final.name}-{uuid.uuid4().hex[:8]}"
    try:
        tmp.mkdir()
        save_model(student, str(tmp / STUDENT_FILE))
        if projections is not None and len(list(projections.parameters())) > 0:
            save_model(projections, str(tmp / PROJECTIONS_FILE))
        torch.save(tensors, tmp / TENSORS_FILE)
        write_json_atomic(tmp / STATE_FILE, state, indent=1)
        publish_dir(tmp, final, replace=True)
        write_text_atomic(final.parent / LATEST, final.name + "\n")
    except OSError as error:
        raise CheckpointError(_save_failure(final, error)) from error
    except RuntimeError as error:  # torch.save and safetensors wrap a full disk in these
        raise CheckpointError(_save_failure(final, error)) from error
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    logger.info("saved checkpoint %s", final)
    return final


def _save_failure(final: Path, error: BaseException) -> str:
    pointer = final.parent / LATEST
    kept = pointer.read_text(encoding="utf-8").strip() if pointer.is_file() else None
    reason = str(error).splitlines()[0][:200] if str(error) else type(error).__name__
    previous = f"{LATEST} still names {kept}" if kept else f"no {LATEST} checkpoint yet"
    try:  # torch.save reports a full disk as "unexpected pos ...": say how much room is left
        free = f"; {shutil.disk_usage(final.parent).free // 1024} KiB free on its filesystem"
    except OSError:
        free = ""
    return (
        f"could not save checkpoint {final} ({reason}{free}); nothing was published and "
        f"{previous}: free disk space, then resume"
    )


def list_checkpoints(output_dir: str | os.PathLike[str]) -> dict[int, Path]:
    """``{global step: directory}`` of the complete checkpoints under ``output_dir``."""
    found = {}
    pattern = re.compile(rf"^{PREFIX}(\d+)$")
    root = Path(output_dir)
    for path in root.iterdir() if root.is_dir() else ():
        match = pattern.match(path.name)
        if match and (path / STATE_FILE).is_file() and (path / STUDENT_FILE).is_file():
            found[int(match.group(1))] = path
    return found


def prune_checkpoints(
    output_dir: str | os.PathLike[str], keep: int, best_step: int | None = None
) -> list[Path]:
    """Delete all but ``keep`` checkpoints: the one ``latest`` names, then the one of
    ``best_step`` (if given and present), then the newest others.

    Only complete ``checkpoint-gs{N}`` directories are candidates (what :func:`save_checkpoint`
    wrote); anything else under ``output_dir`` is left alone.

    Args:
        output_dir: the checkpoints' directory.
        keep: how many to keep (>= 1).
        best_step: the global step of the best checkpoint by an eval metric, or None.

    Returns:
        The deleted directories.

    Raises:
        CheckpointError: ``keep`` < 1.
    """
    if keep < 1:
        raise CheckpointError(f"keep={keep}: at least the latest checkpoint must be kept")
    found = list_checkpoints(output_dir)
    pointer = Path(output_dir) / LATEST
    latest = pointer.read_text(encoding="utf-8").strip() if pointer.is_file() else None
    ranked = sorted(found, reverse=True)
    ranked.sort(key=lambda step: (found[step].name != latest, step != best_step))
    removed = [found[step] for step in ranked[keep:]]
    for path in removed:
        shutil.rmtree(path)
        logger.info("removed checkpoint %s (keep_checkpoints=%d)", path, keep)
    return removed


def resolve_checkpoint(resume_from: str | os.PathLike[str], output_dir: str) -> Path | None:
    """Find the checkpoint ``resume_from`` names.

    Args:
        resume_from: ``'latest'`` (what ``latest`` names under ``output_dir``, or the newest
            older readable one if that is corrupt: :func:`resolve_latest`), a checkpoint
            directory, or a directory holding a ``latest`` pointer.
        output_dir: where ``'latest'`` looks.

    Returns:
        The checkpoint directory, or None for ``'latest'`` when ``output_dir`` has none yet
        (so a restarted job with ``resume_from='latest'`` starts from scratch the first time).

    Raises:
        CheckpointError: an explicit path that is not a complete checkpoint, or no readable
            checkpoint behind ``'latest'``.
    """
    if str(resume_from) == LATEST:
        return resolve_latest(output_dir)
    path = Path(resume_from)
    if (path / LATEST).is_file() and not (path / STATE_FILE).exists():
        path = path / (path / LATEST).read_text(encoding="utf-8").strip()
    if not (path / STATE_FILE).is_file() or not (path / STUDENT_FILE).is_file():
        raise CheckpointError(
            f"resume_from={str(resume_from)!r}: {path} is not a complete cachebrew checkpoint "
            f"(needs {STUDENT_FILE} and {STATE_FILE})"
        )
    return path


def resolve_latest(output_dir: str | os.PathLike[str]) -> Path | None:
    """The checkpoint ``latest`` names if it is readable, else the newest older one that is.

    A fallback is logged once per process as a warning naming both checkpoints.

    Returns:
        None when ``output_dir`` has no ``latest`` pointer yet (a fresh start).

    Raises:
        CheckpointError: ``latest`` exists but no kept checkpoint is readable.
    """
    pointer = Path(output_dir) / LATEST
    if not pointer.exists():
        logger.info("resume_from='latest': no checkpoint in %s yet, starting fresh", output_dir)
        return None
    latest = Path(output_dir) / pointer.read_text(encoding="utf-8").strip()
    problem = unreadable_reason(latest)
    if problem is None:
        return latest
    older = [path for _, path in sorted(list_checkpoints(output_dir).items(), reverse=True)]
    for path in (p for p in older if p.name != latest.name):
        if unreadable_reason(path) is None:
            if (latest, path) not in _fallbacks_logged:
                _fallbacks_logged.add((latest, path))
                logger.warning(
                    "latest checkpoint %s is unreadable (%s); resuming from %s instead",
                    latest, problem, path,
                )  # fmt: skip
            return path
    raise CheckpointError(
        f"latest checkpoint {latest} is unreadable ({problem}) and no older readable "
        f"checkpoint is kept in {output_dir}: start over without --resume"
    )


_fallbacks_logged: set[tuple[Path, Path]] = set()


def unreadable_reason(path: Path) -> str | None:
    """Why checkpoint ``path`` cannot be resumed from, or None when it looks whole.

    Checks without loading the tensors: every file is present, the trainer state is JSON,
    each safetensors file is as long as its header says, and ``training_state.pt`` (a zip
    archive) passes its CRC checks.
    """
    for name in (STATE_FILE, STUDENT_FILE, TENSORS_FILE):
        if not (path / name).is_file():
            return f"{name} is missing"
    try:
        read_state(path)
    except CheckpointError:
        return f"{STATE_FILE} is not valid JSON"
    for name in (STUDENT_FILE, PROJECTIONS_FILE):
        if (path / name).is_file() and not _safetensors_whole(path / name):
            return f"{name} is truncated or corrupt"
    try:
        with zipfile.ZipFile(path / TENSORS_FILE) as archive:
            bad = archive.testzip()
    except (OSError, zipfile.BadZipFile) as error:
        return f"{TENSORS_FILE}: {error}"
    return None if bad is None else f"{TENSORS_FILE}: {bad} fails its CRC check"


def _safetensors_whole(file: Path) -> bool:
    """Whether a safetensors file's header parses and its size is what the header says."""
    try:
        with open(file, "rb") as handle:
            header_size = struct.unpack("<Q", handle.read(8))[0]
            header = json.loads(handle.read(header_size))
        ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"]
        return file.stat().st_size == 8 + header_size + max(ends, default=0)
    except (OSError, ValueError, struct.error, KeyError, TypeError, IndexError):
        return False


def read_state(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The JSON trainer state of checkpoint ``path`` (global step under ``['loop']``).

    Raises:
        CheckpointError: the state file is missing or not valid JSON.
    """
    state_file = Path(path) / STATE_FILE
    try:
        with open(state_file, encoding="utf-8") as f:
            state: dict[str, Any] = json.load(f)
    except (OSError, json.JSONDecodeError) as error:
        raise CheckpointError(f"{state_file}: cannot read the trainer state ({error})") from None
    return state


def load_checkpoint(
    path: Path, student: nn.Module, projections: nn.Module | None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Load weights into ``student``/``projections``; return ``(state, tensors)``.

    Raises:
        CheckpointError: projections expected but missing, or the reverse.
    """
    with _readable(path / STUDENT_FILE):
        load_model(student, str(path / STUDENT_FILE), strict=True)
    has_projections = projections is not None and len(list(projections.parameters())) > 0
    if has_projections != (path / PROJECTIONS_FILE).is_file():
        raise CheckpointError(
            f"{path}: the distiller {'has' if has_projections else 'has no'} projections but "
            f"the checkpoint {'has none' if has_projections else 'has some'}"
        )
    if has_projections:
        assert projections is not None
        with _readable(path / PROJECTIONS_FILE):
            load_model(projections, str(path / PROJECTIONS_FILE), strict=True)
    state = read_state(path)
    with _readable(path / TENSORS_FILE):
        tensors = torch.load(path / TENSORS_FILE, map_location="cpu", weights_only=True)
    return state, tensors


def load_model_weights(module: nn.Module, file: Path) -> None:
    """Load a checkpoint's ``student.safetensors`` (or projections) into ``module``, strictly.

    Raises:
        CheckpointError: the file cannot be read or does not fit ``module``.
    """
    with _readable(file):
        load_model(module, str(file), strict=True)


@contextlib.contextmanager
def _readable(file: Path) -> Iterator[None]:
    """A checkpoint file that cannot be read (truncated, edited, or a crafted pickle that
    ``weights_only`` refuses) becomes one CheckpointError naming it, not a traceback."""
    try:
        yield
    except CheckpointError:
        raise
    except Exception as error:  # safetensors, pickle and json raise unrelated types
        reason = str(error).splitlines()[0][:200] if str(error) else type(error).__name__
        raise CheckpointError(
            f"{file} cannot be read as a cachebrew checkpoint ({type(error).__name__}: "
            f"{reason}); nothing was loaded from it: resume from another checkpoint or start "
            "over without --resume"
        ) from error
