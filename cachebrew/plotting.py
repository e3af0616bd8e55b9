"""The one door to matplotlib (the optional ``plot`` extra): a headless pyplot, a clear error
when it is missing, and the saving every figure shares.

matplotlib is imported only when a figure is drawn, so the library and every command that
draws nothing work without it.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from cachebrew.errors import MissingDependencyError

INSTALL_HINT = "pip install 'cachebrew[plot]'"
# Readable at a glance in a README and on a laptop screen: ~1000-1300 px wide PNGs.
DPI = 100


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the non-interactive Agg backend (no display needed).

    Raises:
        MissingDependencyError: matplotlib is not installed (names the extra to install).
    """
    try:
        matplotlib = importlib.import_module("matplotlib")
    except ImportError:
        raise MissingDependencyError(
            f"figures need matplotlib, which is not installed: {INSTALL_HINT}"
        ) from None
    matplotlib.use("Agg", force=True)
    return importlib.import_module("matplotlib.pyplot")


def save_figure(figure: Any, path: str | Path) -> Path:
    """Write ``figure`` as a PNG at ``path`` (folders created) and close it."""
    plt = pyplot()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        figure.savefig(path, dpi=DPI, bbox_inches="tight")
    finally:
        plt.close(figure)
    return path
