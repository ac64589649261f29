#!/usr/bin/env bash
# The whole strategy study, one phase after the other, from the repository root:
#   bash experiments/strategy_study/run_all.sh [teacher ...]     (default: gmm2d digits mnist_sdxl)
# Each phase skips the runs that already have a metrics.json, so re-running resumes (and fills in the cells a
# session's budget left out). Two training runs at a time, one CPU thread each.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
S=experiments/strategy_study
export OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 WANDB_MODE=offline
teachers=("$@")
[ ${#teachers[@]} -gt 0 ] || teachers=(gmm2d digits mnist_sdxl)
for t in "${teachers[@]}"; do
  echo "=== $t: $(date -u +%FT%TZ)"
  # the lr sweep (validation seed 100), then the test seeds at each arm's chosen lr; the image teachers' sweeps are
  # not run by default (compute: see RESULTS.md), their arms then train at the recipe's lr (LR_SWEEP=1 runs them)
  [ "$t" != gmm2d ] && [ -z "${LR_SWEEP:-}" ] || "$PY" $S/run.py "$t" lr
  "$PY" $S/run.py "$t" main ${SEEDS:+--seeds $SEEDS}
  "$PY" $S/extra_eval.py "$t"
  "$PY" $S/table_strategies.py "$t"
  "$PY" $S/table_guidance.py "$t"
  "$PY" $S/plot_curves.py "$t"
done
