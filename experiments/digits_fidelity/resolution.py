"""How finely ``fid_teacher`` resolves on digits, and the students/teacher at eta 0.

    python experiments/digits_fidelity/resolution.py RUN_DIR      # RUN_DIR: a `make run` run directory

Scores, with the recipe's metrics (``metrics=digits_fidelity``, 1,000 samples):
- two more sets of the teacher's own 50-step DDIM samples drawn from other noise (seeds 5000 and 9000) against the
  reference set (seed 0): the smallest ``fid_teacher`` a sampler as good as the teacher itself can get;
- the run's student and the teacher at 2/4/8 steps with the deterministic TDD sampler (eta 0).
Uses the cache ``$TDD_LAB_CACHE`` (the run's teacher and classifier); prints JSON.
"""

import json
import sys

import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from tdd_lab.export import load_student

ROOT = __import__("pathlib").Path(__file__).resolve().parents[2]


def main(run: str) -> dict[str, float]:
    torch.set_num_threads(2)
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=["metrics=digits_fidelity", "paths.output_dir=/tmp/tdd_lab_resolution"])
    ev = instantiate(cfg.metrics)
    ev.progress = False
    teacher, guidance, sampler = instantiate(cfg.teacher), instantiate(cfg.guidance), instantiate(cfg.sampler)
    guider = guidance.teacher_guider()
    ev._prepare_metrics(teacher, guidance, sampler.num_ddim_timesteps, "cpu")  # the seed-0 reference set
    reference = teacher.reference_sampler(sampler.num_ddim_timesteps)
    out = {}
    for seed in (5000, 9000):
        other = instantiate(cfg.metrics)
        other.seed = seed
        noise, labels = other.inputs(teacher)
        x = other._generate(teacher.denoiser, teacher, reference, 50, guider, noise, labels, None, "cpu")
        out.update({f"teacher50_seed{seed}/{k}": v for k, v in ev.metrics.compute(x, labels, noise, teacher, guider).items()})
    det = sampler.deterministic()
    student = load_student(run)
    noise, labels = ev.inputs(teacher)
    student_guider, tc = guidance.student_sampling(1.0)
    for k in (2, 4, 8):
        xs = ev._generate(student.denoiser, teacher, det, k, student_guider, noise, labels, tc, "cpu")
        xt = ev._generate(teacher.denoiser, teacher, det, k, guider, noise, labels, None, "cpu")
        for who, x in (("student_eta0", xs), ("teacher_eta0", xt)):
            out.update({f"{who}@{k}/{m}": v for m, v in ev.metrics.compute(x, labels, noise, teacher, guider).items()})
    return out


if __name__ == "__main__":
    print(json.dumps({k: round(v, 4) for k, v in sorted(main(sys.argv[1]).items())}, indent=1))
