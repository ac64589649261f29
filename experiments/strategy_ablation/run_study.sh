#!/usr/bin/env bash
# The strategy study: every training sweep, one job at a time, from the repository root.
#   bash experiments/strategy_ablation/run_study.sh [phase ...]   (default: all phases, in this order)
# Phases: gmm2d digits gmm2d_lcm_w gmm2d_fixed digits_fixed digits_lcm_w
# Run dirs land in $RUNS (default experiments/strategy_ablation/runs/, git-ignored); reports with
#   python -m tdd_lab.report experiments/strategy_ablation/runs/<domain>
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
RUNS=${RUNS:-experiments/strategy_ablation/runs}
export OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 WANDB_MODE=offline

# same budget and seeds for every arm; CSV logger, no checkpoints (the student export is kept)
GMM="+experiment=tdd_gmm2d logger=csv callbacks=none trainer.max_steps=3000 seed=0,1,2"
DIG="+experiment=tdd_digits logger=csv callbacks=none trainer.max_steps=1000 seed=0,1,2"

train() { nice -n 5 "$PY" -m tdd_lab.train -m "$@"; }

phase() {
  case "$1" in
    # main tables: the four strategies with the same guidance (decoupled) and sampler (tdd)
    gmm2d)        train $GMM strategy=lcm,pcm,tcd,tdd hydra.sweep.dir=$RUNS/gmm2d/main ;;
    digits)       train $DIG strategy=lcm,pcm,tcd,tdd hydra.sweep.dir=$RUNS/digits/main ;;
    # "LCM as published": w-embedding guidance and the LCM sampler
    gmm2d_lcm_w)  train $GMM strategy=lcm guidance=lcm_w sampler=lcm hydra.sweep.dir=$RUNS/gmm2d/lcm_published ;;
    digits_lcm_w) train $DIG strategy=lcm guidance=lcm_w sampler=lcm hydra.sweep.dir=$RUNS/digits/lcm_published ;;
    # decoupled vs fixed guidance (TDD strategy); the decoupled arm is strategy=tdd of the main sweep
    gmm2d_fixed)  train $GMM strategy=tdd guidance=fixed hydra.sweep.dir=$RUNS/gmm2d_guidance/fixed ;;
    digits_fixed) train $DIG strategy=tdd guidance=fixed hydra.sweep.dir=$RUNS/digits_guidance/fixed ;;
    *) echo "unknown phase $1" >&2; exit 2 ;;
  esac
}

phases=("$@")
[ ${#phases[@]} -gt 0 ] || phases=(gmm2d digits gmm2d_lcm_w gmm2d_fixed digits_fixed digits_lcm_w)
for p in "${phases[@]}"; do
  echo "=== phase $p: $(date -u +%FT%TZ)"
  SECONDS=0
  phase "$p"
  echo "=== phase $p done in ${SECONDS}s"
done
