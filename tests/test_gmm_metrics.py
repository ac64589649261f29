"""gmm2d metrics with stochastic samplers: ``GMMMetrics(deterministic=False)`` evaluates a sampler at its own eta."""

from __future__ import annotations

import torch

from tdd_lab.evaluation import Evaluator
from tdd_lab.guidance import DecoupledGuidance
from tdd_lab.metrics import GMMMetrics
from tdd_lab.samplers import TDDSampler
from tdd_lab.teachers.gmm import GMMTeacher


def _student_metrics(metrics: GMMMetrics, eta: float, tmp_path) -> dict[str, float]:
    teacher = GMMTeacher(cache_dir=str(tmp_path))
    evaluator = Evaluator(metrics, steps=[4], num_samples=256, batch_size=128, cache_dir=str(tmp_path),
                          progress=False)
    sampler = TDDSampler(eta=eta, num_ddim_timesteps=50)
    # the teacher's own denoiser as the "student": its samples are close to the exact ODE endpoints at eta 0
    out, _ = evaluator.evaluate_student(teacher.denoiser, teacher, DecoupledGuidance(w=1.0), sampler)
    return out


def test_deterministic_metrics_force_eta_zero_and_stochastic_ones_keep_it(tmp_path):
    det = GMMMetrics(ode_steps=200)
    assert det.deterministic and det.describe()["deterministic"] is True
    at_eta0 = _student_metrics(det, 0.0, tmp_path)
    # deterministic metrics evaluate an eta 0.5 sampler at eta 0: the same numbers
    assert _student_metrics(GMMMetrics(ode_steps=200), 0.5, tmp_path) == at_eta0

    stoch = GMMMetrics(ode_steps=200, deterministic=False)
    assert not stoch.deterministic and stoch.describe()["deterministic"] is False
    # eta 0 through the stochastic metrics: the same samples, so the same numbers
    assert _student_metrics(GMMMetrics(ode_steps=200, deterministic=False), 0.0, tmp_path) == at_eta0
    noisy = _student_metrics(stoch, 0.5, tmp_path)
    # re-noising draws move every sample off its own ODE solution (per-sample error grows) while the set stays a
    # sample of the same distribution (swd stays small: the teacher's SDE-like sampling keeps its marginals)
    assert noisy["eval/ode_error@4"] > 1.3 * at_eta0["eval/ode_error@4"], (noisy, at_eta0)
    assert noisy["eval/swd@4"] < 0.25, (noisy, at_eta0)
    assert noisy != at_eta0
    assert torch.isfinite(torch.tensor(list(noisy.values()))).all()
