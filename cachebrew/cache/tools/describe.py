"""``describe_cache``: the plain-JSON summary behind ``cachebrew inspect --json``, and
:func:`describe_text`, the text ``cachebrew inspect`` prints from it."""

from __future__ import annotations

from typing import Any

from cachebrew.cache.format.codecs import CODEC_CONFIGS
from cachebrew.cache.format.spec import StoredFeature
from cachebrew.cache.read.reader import CacheReader


def describe_cache(reader: CacheReader) -> dict[str, Any]:
    """Summarise a cache from its manifest (no data is read).

    Returns:
        A JSON-ready dict: ``format_version``, ``cachebrew_version``, ``path``,
        ``num_examples``, ``num_shards``, ``bytes_on_disk``, ``bytes_per_example``,
        ``uncompressed_bytes``, ``teacher``, ``corpus_fingerprint``, ``tokenizer_hash``,
        ``label_type``, ``spec`` (CLI form) and ``features``: one object per stored kind with
        ``name``, ``dtype``, ``codec``, ``layers``, ``reduction``/``topk`` (logits), ``arrays``,
        ``width``, ``bytes``, ``uncompressed_bytes``, for logits ``logits_mode`` and
        ``bytes_per_row`` (disk bytes per stored row, i.e. per token of a token-level head, per
        array and ``total``), ``compression_ratio`` (stored dtype bytes
        / disk bytes), ``ratio_vs_fp32`` (unpadded fp32 bytes / disk bytes) and
        ``bytes_per_example``. Disk bytes include Zarr metadata (~1 KB per array and shard).
        An exact-logits cache adds ``lm_head`` (the manifest's entry: path, sha256, bytes,
        shape (V, H), dtype, bias), stored once and not counted in ``bytes_on_disk``.
    """
    manifest = reader.manifest
    totals = manifest["totals"]
    n = max(1, totals["num_examples"])
    features = [_feature_entry(manifest, feature, n) for feature in reader.spec]
    return {
        "format_version": manifest["format_version"],
        "cachebrew_version": manifest.get("cachebrew_version"),
        "path": reader.path,
        "created_at": manifest.get("created_at"),
        "num_examples": totals["num_examples"],
        "num_shards": totals["num_shards"],
        "shard_size": manifest.get("shard_size"),
        "bytes_on_disk": totals["bytes_on_disk"],
        "bytes_per_example": totals["bytes_on_disk"] / n,
        "uncompressed_bytes": totals["uncompressed_bytes"],
        "teacher": manifest["teacher"],
        "corpus_fingerprint": manifest.get("corpus_fingerprint"),
        "tokenizer_hash": manifest.get("tokenizer_hash"),
        "label_type": manifest.get("label_type"),
        "spec": reader.spec.to_cli(),
        "features": features,
        **({"lm_head": manifest["lm_head"]} if "lm_head" in manifest else {}),
    }


def _feature_entry(manifest: dict[str, Any], feature: StoredFeature, n: int) -> dict[str, Any]:
    stats = manifest["totals"]["features"].get(feature.kind, {"bytes": 0, "uncompressed_bytes": 0})
    arrays = [a for a in manifest["arrays"] if a.split(".", 1)[0] == feature.kind]
    fp32_bytes = sum(
        4 * manifest["arrays"][a]["rows"] * manifest["arrays"][a]["width"]
        for a in arrays
        if not a.endswith(".scale")
    )
    entry: dict[str, Any] = {
        "name": feature.name,
        "dtype": feature.dtype,
        "codec": feature.codec,
        "codec_config": CODEC_CONFIGS[feature.codec],
        "arrays": [a for a in arrays if not a.endswith(".scale")],
        "width": {a: manifest["arrays"][a]["width"] for a in arrays if not a.endswith(".scale")},
        "bytes": stats["bytes"],
        "uncompressed_bytes": stats["uncompressed_bytes"],
        "compression_ratio": _ratio(stats["uncompressed_bytes"], stats["bytes"]),
        "ratio_vs_fp32": _ratio(fp32_bytes, stats["bytes"]),
        "bytes_per_example": stats["bytes"] / n,
    }
    if feature.kind == "logits":
        entry.update(reduction=feature.reduction, topk=feature.topk)
        entry.update(
            logits_mode=feature.logits_mode or "dense", bytes_per_row=_per_row(manifest, arrays)
        )
    else:
        entry["layers"] = list(feature.layers)
    return entry


def per_row_text(entry: dict[str, Any]) -> str:
    """``topk_values 23.0 B, topk_ids 12.6 B, ..., total 39.3 B`` from a logits entry."""
    return ", ".join(f"{k.split('.')[-1]} {v:.1f} B" for k, v in entry["bytes_per_row"].items())


def _per_row(manifest: dict[str, Any], arrays: list[str]) -> dict[str, float]:
    infos = {a: manifest["arrays"][a] for a in arrays}
    per_row = {a: info["bytes"] / max(1, info["rows"]) for a, info in infos.items()}
    return {**per_row, "total": sum(per_row.values())}


def _ratio(uncompressed: int, on_disk: int) -> float | None:
    return round(uncompressed / on_disk, 4) if on_disk else None


def describe_text(info: dict[str, Any]) -> str:
    """The ``cachebrew inspect`` text of :func:`describe_cache`'s summary."""
    teacher = info["teacher"]
    lines = [
        f"cache        {info['path']} (format v{info['format_version']})",
        f"teacher      {teacher.get('class')} from {teacher.get('source')}",
        f"corpus       {str(info['corpus_fingerprint'])[:16]}",
        f"examples     {info['num_examples']} in {info['num_shards']} shards",
        f"on disk      {size_text(info['bytes_on_disk'])} "
        f"({size_text(info['bytes_per_example'])} per example)",
        "features:",
    ]
    for f in info["features"]:
        layers = f" layers {f['layers']}" if f.get("layers") else ""
        lines.append(
            f"  {f['name']:<15}{layers} {f['dtype']}/{f['codec']}: "
            f"{size_text(f['bytes'])} ({size_text(f['bytes_per_example'])} per example)"
            f"{ratio_text(f.get('compression_ratio'))}"
        )
        if f.get("bytes_per_row"):
            lines.append(f"    {f['logits_mode']}, per row (token): {per_row_text(f)}")
    head = info.get("lm_head")
    if head:  # --logits exact: stored once per cache, not per token
        shape = " x ".join(map(str, head["shape"]))
        lines.append(
            f"  lm head        {head['path']} ({shape} {head['dtype']}"
            f"{', with bias' if head['bias'] else ''}): {size_text(head['bytes'])} once per cache"
        )
    return "\n".join(lines)


def size_text(num_bytes: float) -> str:
    """``512 B``, ``1.5 KB``, ``12.3 MB``, ``4.20 GB`` (decimal units)."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if num_bytes >= scale:
            return f"{num_bytes / scale:.3g} {unit}"
    return f"{num_bytes:.0f} B"


def ratio_text(ratio: float | None) -> str:
    """Stored bytes over disk bytes: a codec can also expand data (chunk and metadata overhead)."""
    if not ratio:
        return ""
    if ratio >= 1:
        return f", codec saves {ratio:.2f}x"
    return f", codec expands {1 / ratio:.2f}x (chunk/metadata overhead)"
