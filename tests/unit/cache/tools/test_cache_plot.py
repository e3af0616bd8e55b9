"""`cachebrew inspect CACHE --plot FILE`: bytes per example by feature and layer, codec ratios."""

from __future__ import annotations

import pathlib
import struct
import sys

import pytest
from cache_helpers import write_cache
from synthetic_cache import synthetic_examples
from typer.testing import CliRunner

from cachebrew.cache import open_cache, parse_feature_spec
from cachebrew.cache.tools.plot import array_sizes
from cachebrew.cli import app

SPEC = parse_feature_spec("logits,hidden:0,2", dtype="fp16")


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    path = tmp_path_factory.mktemp("plot") / "cache"
    return write_cache(path, SPEC, synthetic_examples(SPEC, 12, seed=1, num_classes=3))


def test_array_sizes_are_per_example_and_per_layer(cache: pathlib.Path) -> None:
    reader = open_cache(str(cache), verify=False)
    sizes = {s["array"]: s for s in array_sizes(reader)}
    assert set(sizes) == {"logits", "hidden.0", "hidden.2"}
    manifest = reader.manifest["arrays"]
    assert sizes["hidden.2"]["disk"] == pytest.approx(manifest["hidden.2"]["bytes"] / 12)
    stored = manifest["hidden.0"]["uncompressed_bytes"]
    assert sizes["hidden.0"]["ratio"] == pytest.approx(stored / manifest["hidden.0"]["bytes"])


def test_inspect_plot_writes_a_png(cache: pathlib.Path, tmp_path: pathlib.Path) -> None:
    figure = tmp_path / "figs" / "cache.png"
    result = CliRunner().invoke(app, ["inspect", str(cache), "--plot", str(figure)])
    assert result.exit_code == 0, result.output
    assert f"figure: {figure}" in result.output and "features:" in result.output
    data = figure.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    assert 800 <= width <= 1600 and 250 <= height <= 900


def test_inspect_plot_without_matplotlib_is_one_line(
    cache: pathlib.Path, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    result = CliRunner().invoke(app, ["inspect", str(cache), "--plot", str(tmp_path / "c.png")])
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        "error: figures need matplotlib, which is not installed: pip install 'cachebrew[plot]' "
        "(rerun with --debug for the traceback)"
    ]
