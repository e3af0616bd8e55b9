"""``cachebrew inspect CACHE --plot FILE``: a cache at a glance, as a PNG.

Left: bytes per example of every stored array (feature and layer), on disk and as the stored
dtype before the codec, with the codec's ratio beside each bar. Right: per feature, the codec's
ratio (stored dtype bytes / disk bytes) and the ratio against unpadded fp32.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cachebrew.cache.read.reader import CacheReader
from cachebrew.cache.tools.describe import describe_cache, size_text
from cachebrew.plotting import pyplot, save_figure


def array_sizes(reader: CacheReader) -> list[dict[str, Any]]:
    """Per stored array (``hidden.4``, ``logits``, ...): disk and stored-dtype bytes per example."""
    manifest = reader.manifest
    n = max(1, manifest["totals"]["num_examples"])
    return [
        {
            "array": name,
            "disk": info["bytes"] / n,
            "stored": info["uncompressed_bytes"] / n,
            "ratio": info["uncompressed_bytes"] / info["bytes"] if info["bytes"] else None,
        }
        for name, info in manifest["arrays"].items()
    ]


def cache_figure(reader: CacheReader, path: str | Path) -> Path:
    """Draw the figure of the module docstring for ``reader``'s cache at ``path``.

    Raises:
        MissingDependencyError: matplotlib is not installed.
    """
    plt = pyplot()
    info = describe_cache(reader)
    sizes = array_sizes(reader)
    height = max(3.2, 0.42 * len(sizes) + 1.6)
    figure, (left, right) = plt.subplots(
        1, 2, figsize=(12, height), gridspec_kw={"width_ratios": [1.7, 1]}
    )
    _bytes_panel(left, sizes)
    _ratio_panel(right, info["features"])
    figure.suptitle(
        f"{info['path']}: {info['num_examples']:,} examples, "
        f"{size_text(info['bytes_on_disk'])} on disk "
        f"({size_text(info['bytes_per_example'])} per example)",
        fontsize=11,
    )
    figure.tight_layout()
    return save_figure(figure, path)


def _bytes_panel(axis: Any, sizes: list[dict[str, Any]]) -> None:
    names = [s["array"] for s in sizes]
    rows = list(range(len(sizes)))
    axis.barh(rows, [s["stored"] for s in sizes], height=0.7, color="none",
              edgecolor="0.45", hatch="//", label="stored dtype, before the codec")  # fmt: skip
    axis.barh(rows, [s["disk"] for s in sizes], height=0.45, color="tab:blue", label="on disk")
    for row, size in zip(rows, sizes, strict=True):
        ratio = f"  {size_text(size['disk'])}" + (
            f", codec {size['ratio']:.2f}x" if size["ratio"] else ""
        )
        axis.annotate(ratio, (max(size["disk"], size["stored"]), row), va="center", fontsize=9)
    axis.set_yticks(rows, names)
    axis.invert_yaxis()
    axis.set_xscale("log")
    axis.set_xlim(right=max(max(s["disk"], s["stored"]) for s in sizes) * 12)
    axis.set_xlabel("bytes per example (log scale)")
    axis.set_title("by feature and layer", fontsize=10)
    _legend_below(axis)
    axis.grid(axis="x", alpha=0.3)


def _ratio_panel(axis: Any, features: list[dict[str, Any]]) -> None:
    names = [f"{f['name']}\n{f['dtype']}/{f['codec']}" for f in features]
    rows = list(range(len(features)))
    codec = [f.get("compression_ratio") or 0.0 for f in features]
    fp32 = [f.get("ratio_vs_fp32") or 0.0 for f in features]
    axis.barh([r - 0.18 for r in rows], codec, height=0.34, color="tab:blue",
              label="codec: stored dtype / disk")  # fmt: skip
    axis.barh([r + 0.18 for r in rows], fp32, height=0.34, color="tab:orange",
              label="fp32 / disk")  # fmt: skip
    for row, (a, b) in enumerate(zip(codec, fp32, strict=True)):
        axis.annotate(f" {a:.2f}x", (a, row - 0.18), va="center", fontsize=9)
        axis.annotate(f" {b:.2f}x", (b, row + 0.18), va="center", fontsize=9)
    axis.axvline(1.0, color="0.3", linestyle="--", linewidth=1)
    axis.set_yticks(rows, names)
    axis.invert_yaxis()
    axis.set_xlim(0, max(codec + fp32 + [1.0]) * 1.3)
    axis.set_xlabel("size ratio (x smaller; dashed: 1x)")
    axis.set_title("compression per feature", fontsize=10)
    _legend_below(axis)


def _legend_below(axis: Any) -> None:
    """Under the x label, so it covers no bar."""
    axis.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2, fontsize=9, frameon=False)
