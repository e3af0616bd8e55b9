"""What the command line says wins plainly: ``--set num_steps=N`` replaces a config's
``num_epochs`` (and the reverse); ``precompute --distill-config`` given a run config or a sweep
file says to use ``--from``."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from cachebrew.errors import ConfigError
from cachebrew.runner.config import load_distill_config
from cachebrew.runner.reads import check_distill_config_file

RUN = {"cache": "c", "student": "s.json", "out": "o", "num_epochs": 2}


def _yaml(path: Path, data: dict) -> str:
    path.write_text(yaml.safe_dump(data))
    return str(path)


def test_set_num_steps_replaces_the_configs_num_epochs(tmp_path: Path) -> None:
    config = _yaml(tmp_path / "run.yaml", RUN)
    cfg = load_distill_config(config, {}, ["num_steps=5"])
    assert (cfg.num_steps, cfg.num_epochs) == (5, None)
    steps = _yaml(tmp_path / "steps.yaml", {**RUN, "num_epochs": None, "num_steps": 7})
    cfg = load_distill_config(steps, {}, ["num_epochs=4"])
    assert (cfg.num_steps, cfg.num_epochs) == (None, 4)


def test_both_lengths_in_one_file_or_one_command_are_still_refused(tmp_path: Path) -> None:
    both = _yaml(tmp_path / "both.yaml", {**RUN, "num_steps": 3})
    with pytest.raises(ConfigError, match="both given"):
        load_distill_config(both, {})
    with pytest.raises(ConfigError, match="both given"):
        load_distill_config(_yaml(tmp_path / "run.yaml", RUN), {}, ["num_steps=5", "num_epochs=2"])


def test_a_run_config_given_as_distill_config_says_use_from(tmp_path: Path) -> None:
    run = _yaml(tmp_path / "run.yaml", {**RUN, "distill": {"temperature": 2}})
    with pytest.raises(ConfigError, match=r"looks like a run config .*use --from .*run\.yaml"):
        check_distill_config_file(run)
    sweep = _yaml(tmp_path / "sweep.yaml", {"base": RUN, "grid": {"batch_size": [8, 16]}})
    with pytest.raises(ConfigError, match=r"looks like a sweep file .*use --from"):
        check_distill_config_file(sweep)
    distill = _yaml(tmp_path / "distill.yaml", {"temperature": 2, "kd_loss_type": "ce"})
    check_distill_config_file(distill)  # a DistillationConfig passes
