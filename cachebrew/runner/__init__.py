"""Stage two, the command: what ``cachebrew distill`` and ``cachebrew sweep`` do around the loop.

One student per RUN_DIR: :mod:`.config` (the YAML schema), :mod:`.setup` (cache, student,
tokens, teacher, dataset: everything before step 1), :mod:`.checks` (config against cache and
student), :mod:`.tokens` (what the student reads), :mod:`.run` (setup -> train -> evaluate ->
save), :mod:`.progress` (the one progress bar, an observer of the loop), :mod:`.evaluate` (the eval
split and the score), :mod:`.sweep` (many students over one cache).

The runner drives the library loop (:mod:`cachebrew.distill`) through its public arguments and
observer hook; it never imports :mod:`cachebrew.teacher`.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "run_distill": "cachebrew.runner.run",
    "DistillRunConfig": "cachebrew.runner.config",
    "load_distill_config": "cachebrew.runner.config",
    "run_sweep": "cachebrew.runner.sweep",
}


def __getattr__(name: str) -> Any:
    # run_distill pulls in torch and the loop; `import cachebrew.runner.config` stays light.
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'cachebrew.runner' has no attribute {name!r}")


__all__ = list(_LAZY)
