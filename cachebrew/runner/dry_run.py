"""``cachebrew distill --dry-run`` / ``sweep --dry-run``: the resolved config and the plan.

Each run's config is printed as YAML with every default filled in (what ``RUN_DIR/config.yaml``
would hold), then its plan: the features it reads from the cache, the checks a real run makes
before its first step (RUN_DIR, the cache opens, config against cache and student, the eval
data reads with its columns) and the steps and epochs. Nothing is written. The first check
that fails raises, as it would in the real run: a dry run that passes means the run will start.
"""

from __future__ import annotations

from collections.abc import Sequence

import yaml

from cachebrew.errors import CacheError
from cachebrew.runner.config import DistillRunConfig
from cachebrew.runner.reads import run_features


def describe_dry_run(configs: Sequence[DistillRunConfig], *, resume: bool = False) -> str:
    """The text of a dry run over ``configs`` (one per run).

    Raises:
        ConfigError: a config does not fit its cache, student or eval data (as a real run would).
        CacheError: the cache is missing, corrupt or incomplete (names the features to precompute).
    """
    blocks = []
    for cfg in configs:
        text = yaml.safe_dump(cfg.to_portable_dict(), sort_keys=False)
        blocks.append(f"# run {cfg.run_dir.name}: resolved config\n{text}" + plan_text(cfg, resume))
    blocks.append(f"dry run: {len(configs)} run(s) checked, nothing written")
    return "\n".join(blocks)


def plan_text(cfg: DistillRunConfig, resume: bool) -> str:
    """``# plan`` comment lines: features read, cache status, examples and steps.

    Raises:
        ConfigError, CacheError: the first check of a real run that fails (module docstring).
    """
    spec = run_features(cfg)
    read = spec.to_cli() if spec else "none (hard labels only)"
    from cachebrew.cache.read.reader import open_cache
    from cachebrew.runner.evaluate import StudentEvaluator
    from cachebrew.runner.setup import _check_run_dir, setup_run

    _check_run_dir(cfg, resume)
    try:
        open_cache(cfg.cache, verify=False)
    except CacheError as error:
        raise CacheError(
            f"run {cfg.run_dir.name}: {error}; the run reads the features {read}: precompute "
            "them first (precompute --from this config stores them)"
        ) from error
    setup = setup_run(cfg, resume)
    if cfg.eval is not None:  # the real run reads eval.data (its columns) before step 1
        StudentEvaluator(
            cfg, setup.reader, setup.student, setup.tokens, setup.eval_ids,
            setup.train_config.resolved_device(),
        )  # fmt: skip
    num_train = len(setup.train_ids) if setup.train_ids is not None else setup.reader.num_examples
    length = f"{cfg.num_steps} steps" if cfg.num_steps else f"{cfg.num_epochs} epochs"
    lines = [
        f"features read: {read}",
        f"cache: {cfg.cache} checked against the config and the student "
        f"({setup.reader.num_examples} examples, {num_train} trained on, "
        f"{len(setup.eval_ids or [])} held out)",
        f"mode: {setup.mode}",
        f"steps: {setup.plan.total_steps} optimizer steps ({length}, batch {cfg.batch_size})"
        + (f", resuming at step {setup.start_step}" if setup.start_step else ""),
    ]
    return "".join(f"# plan: {line}\n" for line in lines)
