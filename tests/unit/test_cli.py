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
