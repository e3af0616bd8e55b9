"""Train one student twice, from the teacher cache and with the live teacher, and compare speed.

Uses the tiny pipeline's teacher and cache (build them first: ``make pipeline-tiny``). Both runs
use the same config, data order and seed; online mode runs the teacher on the inputs stored in
the cache, so the loss curves agree and only the teacher's cost differs.

    OMP_NUM_THREADS=1 .venv/bin/python examples/cache_vs_online.py [--student ...] [--epochs N]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from cachebrew.runner.config import load_distill_config
from cachebrew.runner.run import run_distill

PIPELINES = Path(__file__).resolve().parent.parent / "pipelines"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", type=Path, default=PIPELINES / "out" / "tiny")
    parser.add_argument("--student", default=str(PIPELINES / "tiny/students/bert-2l.json"))
    parser.add_argument("--epochs", type=int, default=8)
    args = parser.parse_args()
    if not (args.tiny / "cache" / "manifest.json").is_file():
        raise SystemExit(f"no cache under {args.tiny}: run `make pipeline-tiny` first")
    match = {"layer_T": 4, "layer_S": 2, "feature": "hidden", "loss": "hidden_mse", "weight": 1}
    overrides = [
        f"num_epochs={args.epochs}",
        "batch_size=16",
        "optimizer.lr=2.0e-3",
        "distill.hard_label_weight=0.5",
        f"distill.intermediate_matches=[{dict(match, proj=['linear', 32, 64])}]",
    ]
    results = {}
    with tempfile.TemporaryDirectory() as scratch:
        for mode, teacher in (("cache", None), ("online", str(args.tiny / "teacher"))):
            flags = {
                "cache": str(args.tiny / "cache"),
                "student": args.student,
                "out": str(Path(scratch) / mode),
                "teacher": teacher,
            }
            cfg = load_distill_config(None, flags, overrides)
            results[mode] = run_distill(cfg, progress=False)
    for mode, metrics in results.items():
        print(
            f"{mode:<7} {metrics['examples_per_s']:8.1f} examples/s  "
            f"data wait {100 * metrics['data_wait_share']:4.1f}%  "
            f"teacher forwards {metrics['teacher_forwards']:4d}  final loss {metrics['final_loss']:.6f}"
        )
    ratio = results["cache"]["examples_per_s"] / results["online"]["examples_per_s"]
    print(f"cache / online throughput: {ratio:.2f}x")


if __name__ == "__main__":
    main()
