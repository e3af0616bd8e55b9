#!/usr/bin/env bash
# Measure what a sweep would cost with a live teacher: for each KD student of a finished
# pipeline (default out/demo), train STEPS steps from the cache and the same STEPS steps online
# (`cachebrew distill --teacher DIR`: the teacher runs on every batch), back to back with the
# same threads, no evaluation; prints seconds per step of each and their ratio.
#   bash online_cost.sh [PIPELINE_DIR] [PY]       (env: THREADS=1, STEPS_3L=40, STEPS_2L=125)
set -euo pipefail
DIR=${1:-out/demo}
PY=${2:-../.venv/bin/python}
OUT=$DIR/online-cost
rm -rf "$OUT" && mkdir -p "$OUT"
for run in minilm-3l-kd bert-2l-128-kd; do
  case $run in minilm-3l-*) steps=${STEPS_3L:-40} ;; *) steps=${STEPS_2L:-125} ;; esac
  for mode in cache online; do
    extra=()
    [ "$mode" = online ] && extra=(--teacher "$DIR/teacher")
    OMP_NUM_THREADS=${THREADS:-1} "$PY" -m cachebrew distill --config "$DIR/sweep/$run/config.yaml" \
      --out "$OUT/$run-$mode" --quiet "${extra[@]}" \
      --set eval=null --set num_epochs=null --set num_steps="$steps" > "$OUT/$run-$mode.log" 2>&1
  done
done
"$PY" - "$OUT" <<'PY'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
rows = {}
for run in ("minilm-3l-kd", "bert-2l-128-kd"):
    m = {mode: json.loads((out / f"{run}-{mode}" / "metrics.json").read_text()) for mode in ("cache", "online")}
    per_step = {mode: m[mode]["train_seconds"] / m[mode]["steps"] for mode in m}
    rows[run] = {"steps": m["cache"]["steps"], **{f"{k}_s_per_step": round(v, 4) for k, v in per_step.items()},
                 "online_over_cache": round(per_step["online"] / per_step["cache"], 2),
                 "teacher_forwards_online": m["online"]["teacher_forwards"]}
    print(run, rows[run])
(out / "online_cost.json").write_text(json.dumps(rows, indent=2) + "\n")
PY
