#!/usr/bin/env bash
# The study's figures, made by executing the analysis notebooks on its sweeps (from the repository root).
set -euo pipefail
cd "$(dirname "$0")/../.."
S=$PWD/experiments/strategy_ablation
export OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1
run_nb() {  # notebook, then NAME=VALUE environment
  local nb=$1; shift
  env "$@" nice -n 5 .venv/bin/python -c "import sys, nbformat, nbclient
nb = nbformat.read(sys.argv[1], as_version=4)
nbclient.NotebookClient(nb, timeout=900, resources={'metadata': {'path': 'notebooks'}}).execute()" "notebooks/$nb"
}
for d in gmm2d digits; do
  run_nb ablation_analysis.ipynb TDD_SWEEP_DIR=$S/runs/$d/main TDD_NOTEBOOK_OUT=$S/figures/$d
done
run_nb gmm_trajectories.ipynb TDD_GMM_SWEEP_DIR=$S/runs/gmm2d/main TDD_GMM_STEPS=2,4 TDD_NOTEBOOK_OUT=$S/figures/gmm2d
