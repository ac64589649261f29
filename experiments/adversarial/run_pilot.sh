#!/usr/bin/env bash
# Pilot of the adversarial term on digits (one seed): adversarial=none vs pcm (alternate, simultaneous), 1000 student
# steps each, fidelity (fid_teacher) and real-data metrics (fid, class_acc) at 2 and 4 steps.
# Usage: bash experiments/adversarial/run_pilot.sh [SEEDS]   (default 0; e.g. 0,1,2 for the 3-seed study)
set -euo pipefail
cd "$(dirname "$0")/../.."
SEEDS=${1:-0}
RUNS=${RUNS:-logs/adversarial}  # git-ignored
COMMON=(experiment=tdd_digits logger=csv callbacks=none trainer.max_steps=1000 cpu_threads=1
        validation.every_n_steps=0 'metrics.steps=[2,4]' "seed=$SEEDS")
export OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 WANDB_MODE=offline
# three arms as separate processes (none first; the two pcm schedules side by side, one thread each)
nice -n 10 .venv/bin/python -m tdd_lab.train -m "${COMMON[@]}" adversarial=none hydra.sweep.dir=$RUNS/none
nice -n 10 .venv/bin/python -m tdd_lab.train -m "${COMMON[@]}" adversarial=pcm hydra.sweep.dir=$RUNS/pcm_alternate &
nice -n 10 .venv/bin/python -m tdd_lab.train -m "${COMMON[@]}" adversarial=pcm adversarial.schedule=simultaneous \
  hydra.sweep.dir=$RUNS/pcm_simultaneous &
wait
