"""The README's published floors, each checked by running the README's own command as written (slow: minutes each,
`make test-slow`).

| README floor                                           | command                                              |
|--------------------------------------------------------|------------------------------------------------------|
| digits: ``eval/fid_teacher@4 <= 0.5 x teacher/fid_teacher@4`` (not met: strict xfail) | ``make run``          |
| digits: ``eval/fid@4 <= 0.5 x teacher/fid@4``          | ``make run`` (``python -m tdd_lab.train``)           |
| digits: ``eval/fid@4 / teacher/fid@50 <= 1.25``        | ``make run``                                         |
| gmm2d: ``eval/ode_error@4 <= 0.5 x teacher/ode_error@4`` | ``python -m tdd_lab.train +experiment=tdd_gmm2d``  |
| the digit classifier's held-out accuracy (97.8%)       | built on first use by ``make run``                   |
| benchmark targets: overhead <= 1.15, 4-step >= 15x,   | ``make bench`` (``python -m tdd_lab.bench --json``)  |
| batched CFG > 1x, loader faster than training          |                                                      |

The runs use the cache the user's own commands use (``$TDD_LAB_CACHE`` as set when pytest started, else
``~/.cache/tdd_lab``), so a cached teacher is reused as ``make run`` reuses it; the first run pretrains it (5-6 min).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# read at import (collection), before the suite's `cache_dir` fixture points TDD_LAB_CACHE at a temporary folder
USER_CACHE = os.environ.get("TDD_LAB_CACHE", str(Path.home() / ".cache" / "tdd_lab"))


def readme_command(args: list[str], timeout: int = 3600) -> subprocess.CompletedProcess:
    """``python ARGS`` in the repository root as ``make run`` runs it (offline hub, offline W&B), on the user's cache."""
    env = {**os.environ, "TDD_LAB_CACHE": USER_CACHE, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline"}
    res = subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert res.returncode == 0, res.stderr[-3000:]
    return res


def train_metrics(run_dir: Path, *overrides: str) -> dict[str, float]:
    """``python -m tdd_lab.train OVERRIDES`` with its run directory at ``run_dir``; its ``metrics.json``."""
    res = readme_command(["-m", "tdd_lab.train", *overrides, f"hydra.run.dir={run_dir}"])
    assert "| steps |" in res.stdout  # the README's table
    return json.loads((run_dir / "metrics.json").read_text())


@pytest.fixture(scope="module")
def make_run(tmp_path_factory) -> dict[str, float]:
    """``make run``: the default config, TDD on the embedded digits teacher (2,500 steps; ~5.5 min idle)."""
    return train_metrics(tmp_path_factory.mktemp("floors") / "make_run")


@pytest.mark.slow
@pytest.mark.xfail(strict=True, reason="not met on seed 42, the default (README 'Quality floors': 1.704 vs 0.5 x "
                   "2.198; seeds 1 and 2: 3.697 and 0.874, so it holds on 1 of 3 seeds)")
def test_digits_student_fid_teacher_is_at_most_half_the_teachers_at_4_steps(make_run):
    """The recipe's fidelity floor (issue 13): ``eval/fid_teacher@4 <= 0.5 x teacher/fid_teacher@4``, both against the
    teacher's own 50-step samples from the same noise and prompts, in the digit classifier's features."""
    student, teacher = make_run["eval/fid_teacher@4"], make_run["teacher/fid_teacher@4"]
    assert student <= 0.5 * teacher, f"eval/fid_teacher@4 {student:.3f} > 0.5 x teacher/fid_teacher@4 {teacher:.3f}"


@pytest.mark.slow
def test_digits_student_fid_is_at_most_half_the_teachers_at_4_steps(make_run):
    """README: real-data FID, 4.463 <= 0.5 x 9.345 = 4.673 on seed 42 (ratio 0.478)."""
    student, teacher = make_run["eval/fid@4"], make_run["teacher/fid@4"]
    assert student <= 0.5 * teacher, f"eval/fid@4 {student:.3f} > 0.5 x teacher/fid@4 {teacher:.3f}"


@pytest.mark.slow
def test_digits_student_4_step_fid_against_the_teachers_50_step_fid(make_run):
    """README: eval/fid@4 / teacher/fid@50 = 4.463 / 8.006 = 0.56 on seed 42, goal <= 1.25."""
    ratio = make_run["eval/fid@4"] / make_run["teacher/fid@50"]
    assert ratio <= 1.25, f"eval/fid@4 / teacher/fid@50 = {ratio:.3f}"


@pytest.mark.slow
def test_gmm2d_student_ode_error_is_at_most_half_the_teachers_at_4_steps(tmp_path):
    """README: 0.1251 <= 0.5 x 0.3222 = 0.1611 (10k steps, ~2 min 45 s idle)."""
    metrics = train_metrics(tmp_path / "gmm2d", "+experiment=tdd_gmm2d")
    student, teacher = metrics["eval/ode_error@4"], metrics["teacher/ode_error@4"]
    assert metrics["train/steps"] == 10000.0
    assert student <= 0.5 * teacher, f"eval/ode_error@4 {student:.4f} > 0.5 x teacher/ode_error@4 {teacher:.4f}"


@pytest.mark.slow
def test_digit_classifier_heldout_accuracy():
    """README: FID and class_acc on tdd_lab's digit classifier, 97.8% held-out accuracy (bound: 97%)."""
    res = readme_command(["-c", "from tdd_lab.metrics.classifier import load_digit_classifier; "
                                "print(load_digit_classifier().heldout_accuracy)"])
    accuracy = float(res.stdout.strip().splitlines()[-1])
    assert accuracy >= 0.97, accuracy


@pytest.mark.slow
def test_bench_targets():
    """README and experiments/bench/RESULTS.md: step overhead <= 1.15 inside the loss/backward/step (1.10 measured) and
    inside Lightning (1.13), batched CFG faster than two forwards, 4-step vs 50-step-CFG sampling >= 15x (24-31x), the
    image-folder loader faster than training consumes. Timings: run on an otherwise idle machine."""
    res = readme_command(["-m", "tdd_lab.bench", "--json"], timeout=1800)
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["train_overhead_ratio"] <= 1.15 and out["lightning_overhead_ratio"] <= 1.15, out
    assert out["teacher_cfg_batched_speedup"] > 1 and out["loader_vs_train_images"] > 1, out
    assert out["sample_speedup_4_vs_50cfg"] >= 15, out
