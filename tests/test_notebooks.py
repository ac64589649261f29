"""The analysis notebooks execute on a small embedded sweep and report what the runs recorded."""

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"


@pytest.fixture(scope="module")
def gmm_sweep(tmp_path_factory, cache_dir):
    """A debug=smoke gmm2d multirun over two strategies and two seeds (exported students)."""
    sweep = tmp_path_factory.mktemp("nb") / "sweep"
    env = {**os.environ, "TDD_LAB_CACHE": str(cache_dir), "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline",
           "OMP_NUM_THREADS": "1"}
    args = ["-m", "tdd_lab.train", "-m", "+experiment=tdd_gmm2d", "debug=smoke", "strategy=lcm,tdd", "seed=0,1",
            f"hydra.sweep.dir={sweep}", "teacher.init_steps=20", "metrics.metrics.ode_steps=100"]
    proc = subprocess.run([sys.executable, *args], cwd=sweep.parent, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return sweep


def execute(name, env, monkeypatch):
    """Run notebooks/<name> in a fresh kernel (cwd notebooks/) with ``env`` set; returns the executed notebook."""
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOKS)}}).execute()
    return nb


def text_outputs(nb) -> str:
    return "\n".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))


def recorded(sweep, metric):
    """{strategy: [metric of each seed]} from the runs' metrics.json."""
    out = {}
    for run in sorted(p for p in sweep.iterdir() if (p / "metrics.json").exists()):
        strategy = next(o.split("=")[1] for o in (run / ".hydra" / "overrides.yaml").read_text().split()
                        if o.startswith("strategy="))
        out.setdefault(strategy, []).append(json.loads((run / "metrics.json").read_text())[metric])
    return out


@pytest.mark.parametrize("name", ["ablation_analysis.ipynb", "gmm_trajectories.ipynb"])
def test_notebooks_are_stored_without_outputs(name):
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(not c.outputs and c.execution_count is None for c in code)
    assert any("parameters" in c.metadata.get("tags", []) for c in code)


@pytest.mark.slow  # executes the notebook on a trained gmm2d sweep (~1 min with the sweep)
def test_ablation_analysis_notebook(gmm_sweep, tmp_path, cache_dir, monkeypatch):
    nb = execute("ablation_analysis.ipynb", {"TDD_SWEEP_DIR": str(gmm_sweep), "TDD_NOTEBOOK_OUT": str(tmp_path),
                                             "TDD_LAB_CACHE": str(cache_dir)}, monkeypatch)
    text = text_outputs(nb)
    assert "4 runs in" in text
    assert "| strategy=lcm | 2 |" in text and "| strategy=tdd | 2 |" in text  # the report table, one row each
    summary = json.loads((tmp_path / "ablation_analysis.json").read_text())
    assert set(summary) == {"strategy=lcm", "strategy=tdd"}
    for k in (2, 4):
        values = recorded(gmm_sweep, f"eval/ode_error@{k}")
        for strategy in ("lcm", "tdd"):
            cell = summary[f"strategy={strategy}"][f"eval/ode_error@{k}"]
            assert cell["n"] == 2
            assert cell["mean"] == pytest.approx(statistics.fmean(values[strategy]))
            assert cell["std"] == pytest.approx(statistics.stdev(values[strategy]))
    assert (tmp_path / "ablation_analysis.png").stat().st_size > 10_000
    assert "eval/ode_error@4: best strategy=" in text


@pytest.mark.slow  # executes the notebook on a trained gmm2d sweep (~1 min with the sweep)
def test_gmm_trajectories_notebook(gmm_sweep, tmp_path, cache_dir, monkeypatch):
    nb = execute("gmm_trajectories.ipynb", {"TDD_GMM_SWEEP_DIR": str(gmm_sweep), "TDD_NOTEBOOK_OUT": str(tmp_path),
                                            "TDD_LAB_CACHE": str(cache_dir)}, monkeypatch)
    results = json.loads((tmp_path / "gmm_trajectories.json").read_text())
    assert set(results) == {"strategy=lcm", "strategy=tdd"}
    for strategy in ("lcm", "tdd"):
        res = results[f"strategy={strategy}"]
        for k in (2, 4):  # the smoke evaluation's step counts
            # the exported student, sampled through the run's evaluator, reproduces the run's own number (seed 0)
            assert res[f"eval/ode_error@{k}"] == pytest.approx(recorded(gmm_sweep, f"eval/ode_error@{k}")[strategy][0],
                                                              rel=1e-5)
            assert res[f"recorded/ode_error@{k}"] == pytest.approx(res[f"eval/ode_error@{k}"], rel=1e-5)
            ts = res[f"timesteps@{k}"]
            assert len(ts) == k and ts[0] == 999 and ts == sorted(ts, reverse=True)  # one recorded state per step
            assert 0 <= res[f"trajectory_endpoint_error@{k}"] < 10
    text = text_outputs(nb)
    segment_gap = float(text.split("segment-wise vs one-solve endpoint:")[1].split()[0])
    assert segment_gap < 1e-2  # the drawn teacher trajectory ends where the metric's exact solve ends
    assert "| strategy=tdd |" in text
    assert (tmp_path / "gmm_trajectories.png").stat().st_size > 10_000


def test_ablation_notebook_on_a_missing_sweep_fails_without_side_effects(tmp_path, monkeypatch):
    """A fresh clone has no sweep at the notebook's default path: it must stop, say how to make one, and create
    nothing (it used to make the empty sweep folder, inside the repository, before failing)."""
    from nbclient.exceptions import CellExecutionError

    missing = tmp_path / "runs" / "gmm2d"
    monkeypatch.delenv("TDD_NOTEBOOK_OUT", raising=False)  # output dir: the (missing) sweep dir
    with pytest.raises(CellExecutionError, match="does not exist .* make one") as err:
        execute("ablation_analysis.ipynb", {"TDD_SWEEP_DIR": str(missing)}, monkeypatch)
    assert "hydra.sweep.dir=" in str(err.value) and "TDD_SWEEP_DIR" in str(err.value)
    assert not (tmp_path / "runs").exists()
