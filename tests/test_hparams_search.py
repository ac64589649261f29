"""The Optuna search config: trials are training runs, the objective is the returned ``optimized_metric``."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def test_gmm2d_optuna_two_trials(tmp_path, cache_dir):
    sweep = tmp_path / "sweep"
    env = {**os.environ, "TDD_LAB_CACHE": str(cache_dir), "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline",
           "OMP_NUM_THREADS": "1"}
    args = ["-m", "tdd_lab.train", "-m", "+hparams_search=gmm2d_optuna", "+experiment=tdd_gmm2d", "debug=smoke",
            "hydra.sweeper.n_trials=2", f"hydra.sweep.dir={sweep}",
            "teacher.init_steps=20", "metrics.metrics.ode_steps=100"]  # the fast_overrides of conftest
    proc = subprocess.run([sys.executable, *args], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]

    results = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert results["name"] == "optuna"
    assert set(results["best_params"]) == {"strategy.s_ratio", "guidance.proportion_empty_prompts"}

    trials = sorted(p for p in sweep.iterdir() if p.is_dir())
    assert [p.name for p in trials] == ["0", "1"]
    values, params = [], []
    for trial in trials:
        metrics = json.loads((trial / "metrics.json").read_text())
        values.append(metrics["eval/ode_error@4"])  # the gmm2d optimized_metric
        overrides = dict(o.split("=", 1) for o in yaml.safe_load((trial / ".hydra" / "overrides.yaml").read_text()))
        params.append({k: float(overrides[k]) for k in results["best_params"]})
        assert 0.0 <= params[-1]["strategy.s_ratio"] <= 0.6
        assert 0.0 <= params[-1]["guidance.proportion_empty_prompts"] <= 0.5
        # the sampled values reached the composed config of the trial
        cfg = yaml.safe_load((trial / ".hydra" / "config.yaml").read_text())
        assert cfg["strategy"]["s_ratio"] == pytest.approx(params[-1]["strategy.s_ratio"])
        assert cfg["optimized_metric"] == "eval/ode_error@4"
    assert params[0] != params[1]
    best = min(range(2), key=values.__getitem__)  # direction: minimize
    assert results["best_value"] == pytest.approx(values[best])
    assert results["best_params"] == pytest.approx(params[best])
