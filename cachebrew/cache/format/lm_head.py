"""The LM head file of an exact-logits cache (``lm_head.safetensors``): write, describe, check, load.

The row types and the logits math live in :mod:`cachebrew.cache.logits.exact`; this module is
the head's file I/O, which belongs with the format (the manifest's ``lm_head`` entry, the
integrity checks and the reader use it).
"""

from __future__ import annotations

import hashlib
import secrets
from typing import Any

import torch

from cachebrew.cache.format.storage import CacheLocation
from cachebrew.cache.logits.exact import LMHead
from cachebrew.errors import CacheCorruptError, CacheError

HEAD_FILE = "lm_head.safetensors"
MANIFEST_KEY = "lm_head"


def write_head(loc: CacheLocation, head: LMHead) -> None:
    """Write :data:`HEAD_FILE` into the cache root through a temporary name and a rename."""
    from safetensors.torch import save

    payload = save(head.tensors())
    path = loc.join(HEAD_FILE)
    tmp = f"{path}.tmp-{secrets.token_hex(4)}"
    try:
        loc.write_bytes(tmp, payload)
        loc.fs.mv(tmp, path)
    except OSError as error:
        loc.remove(tmp)
        raise CacheError(
            f"could not write {path}: {error}; free space or fix permissions, then rerun"
        ) from error


def head_entry(loc: CacheLocation) -> dict[str, Any]:
    """The manifest's ``lm_head`` entry, from the file (sha256 of its bytes, shape, dtype).

    Raises:
        CacheError: the file is missing (rank or part 0 writes it: rerun that part).
    """
    path = loc.join(HEAD_FILE)
    if not loc.exists(path):
        raise CacheError(
            f"{loc.path}: {HEAD_FILE} is missing; an exact-logits cache needs the teacher's LM "
            "head, which rank 0 (part 0/N) writes: rerun precompute for it, then publish again"
        )
    payload = loc.read_bytes(path)
    tensors = _parse(payload, path)
    weight = tensors["weight"]
    return {
        "path": HEAD_FILE,
        "sha256": hashlib.sha256(payload).hexdigest(),
        "bytes": len(payload),
        "shape": list(weight.shape),
        "dtype": str(weight.dtype).removeprefix("torch."),
        "bias": "bias" in tensors,
    }


def head_problems(loc: CacheLocation, manifest: dict[str, Any], *, full: bool) -> list[str]:
    """What is wrong with an exact cache's head: missing entry or file, another size, and
    (``full``) another sha256. [] for caches of other modes."""
    logits = [f for f in manifest["spec"]["features"] if f.get("kind") == "logits"]
    if not logits or logits[0].get("logits_mode") != "exact":
        return []
    entry = manifest.get(MANIFEST_KEY)
    if not isinstance(entry, dict) or entry.get("path") != HEAD_FILE:
        return [f"the exact-logits cache has no {MANIFEST_KEY} entry naming {HEAD_FILE}"]
    path = loc.join(HEAD_FILE)
    if not loc.exists(path):
        return [f"{HEAD_FILE} (the teacher's LM head) is missing"]
    size = loc.size(path)
    if size != entry.get("bytes"):
        return [f"{HEAD_FILE} has {size} bytes, the manifest says {entry.get('bytes')}"]
    if full:
        digest = hashlib.sha256(loc.read_bytes(path)).hexdigest()
        if digest != entry.get("sha256"):
            return [
                f"{HEAD_FILE} has sha256 {digest[:12]}..., the manifest {entry['sha256'][:12]}..."
            ]
    return []


def load_head(loc: CacheLocation, manifest: dict[str, Any]) -> LMHead:
    """The cache's LM head, its bytes checked against the manifest's sha256.

    Raises:
        CacheCorruptError: the file's sha256 differs (it changed after precompute).
        CacheError: no entry or no file.
    """
    problems = head_problems(loc, manifest, full=False)
    if problems:
        raise CacheError(f"{loc.path}: {problems[0]}; rebuild with `cachebrew precompute`")
    path = loc.join(HEAD_FILE)
    payload = loc.read_bytes(path)
    digest = hashlib.sha256(payload).hexdigest()
    if digest != manifest[MANIFEST_KEY]["sha256"]:
        raise CacheCorruptError(
            f"{path}: sha256 {digest[:12]}... differs from the manifest's "
            f"{manifest[MANIFEST_KEY]['sha256'][:12]}...: the LM head changed after precompute; "
            "rebuild the cache with `cachebrew precompute --overwrite`"
        )
    tensors = _parse(payload, path)
    return LMHead(tensors["weight"], tensors.get("bias"))


def _parse(payload: bytes, path: str) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load

    try:
        tensors = load(payload)
    except (SafetensorError, ValueError) as error:
        raise CacheCorruptError(f"{path} is not a readable safetensors file: {error}") from error
    if "weight" not in tensors:
        raise CacheCorruptError(f"{path} holds no 'weight' tensor (found {sorted(tensors)})")
    return tensors
