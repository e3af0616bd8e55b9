"""One error mapper for every command: bad input is one ``error:`` line ending in the --debug hint.

Each command is invoked through typer's ``CliRunner`` (no ``main()``), so the mapping has to be
the app's own, not the console entry point's.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from cachebrew.cli import app
from cachebrew.cli.app import DEBUG_HINT

runner = CliRunner()


def _bad_inputs(tmp: Path) -> dict[str, list[str]]:
    missing = str(tmp / "missing")
    yaml_missing = str(tmp / "missing.yaml")
    return {
        "precompute": ["precompute", "--teacher", missing, "--data", missing, "--out",
                       str(tmp / "c"), "--logits", "topk:0"],
        "inspect": ["inspect", missing],
        "verify": ["verify", missing],
        "compare": ["compare", missing, missing],
        "finetune": ["finetune", "--config", yaml_missing],
        "distill": ["distill", "--config", yaml_missing],
        "sweep": ["sweep", yaml_missing, "--out", str(tmp / "s")],
        "eval": ["eval", missing, "--data", missing],
        "data fetch": ["data", "fetch"],
        "data prepare": ["data", "prepare", "--out", str(tmp / "d")],
    }  # fmt: skip


@pytest.mark.parametrize(
    "command",
    ["precompute", "inspect", "verify", "compare", "finetune", "distill", "sweep", "eval",
     "data fetch", "data prepare"],
)  # fmt: skip
def test_every_command_reports_bad_input_as_one_error_line(command: str, tmp_path: Path) -> None:
    result = runner.invoke(app, _bad_inputs(tmp_path)[command])
    assert result.exit_code == 1, (result.output, result.exception)
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert result.stderr.startswith("error: "), result.stderr
    assert result.stderr.rstrip().endswith(DEBUG_HINT), result.stderr
    assert "Traceback" not in result.output


def test_debug_lets_the_error_through_with_its_traceback(tmp_path: Path) -> None:
    from cachebrew.errors import ConfigError

    result = runner.invoke(app, ["--debug", "data", "fetch"])
    assert result.exit_code == 1 and isinstance(result.exception, ConfigError)
