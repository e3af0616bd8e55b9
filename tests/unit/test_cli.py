"""The command line starts, both as `python -m cachebrew` and as the `cachebrew` script."""

from __future__ import annotations

import shutil
import subprocess
import sys

COMMANDS = ("precompute", "inspect", "verify", "distill", "sweep")


def test_python_m_cachebrew_lists_every_command() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "cachebrew", "--help"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    for command in COMMANDS:
        assert command in result.stdout


def test_console_script_is_installed() -> None:
    script = shutil.which("cachebrew", path=f"{sys.prefix}/bin")
    assert script is not None, "pip install -e . should install the `cachebrew` console script"
    result = subprocess.run([script, "--help"], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cachebrew", *args], capture_output=True, text=True, check=False
    )


def test_version_prints_the_package_version() -> None:
    from cachebrew import __version__

    result = _cli("--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"cachebrew {__version__}"


def test_shell_completion_is_offered() -> None:
    result = _cli("--help")
    assert "--install-completion" in result.stdout
    shown = subprocess.run(
        [sys.executable, "-m", "cachebrew", "--show-completion", "bash"],
        capture_output=True,
        text=True,
        check=False,
        env={**__import__("os").environ, "SHELL": "/bin/bash"},
    )
    assert shown.returncode == 0, shown.stderr
    assert "complete" in shown.stdout


def test_data_prepare_without_names_refuses_instead_of_fetching_everything(tmp_path) -> None:
    result = _cli("data", "prepare", "--out", str(tmp_path))
    assert result.returncode == 1
    assert "name the packages" in result.stderr and "--all" in result.stderr
    assert "Traceback" not in result.stderr
    assert not any(tmp_path.iterdir())


def test_sizes_read_in_the_unit_that_fits() -> None:
    from cachebrew.cache.tools.describe import ratio_text as _ratio_text
    from cachebrew.cache.tools.describe import size_text as _size

    assert _size(512) == "512 B"
    assert _size(1_536) == "1.54 KB"
    assert _size(141e6) == "141 MB"
    assert _ratio_text(1.3) == ", codec saves 1.30x"
    assert "expands" in _ratio_text(0.5)
