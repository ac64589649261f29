"""Evaluations of the study's exported students beyond the run's own (designed) sampler.

    python experiments/strategy_study/extra_eval.py TEACHER [--arms a b ...] [--scales 0.5 0.75 1 1.25 1.5 2]

For every finished main-phase run (RUNS/TEACHER/main/<arm>/*/metrics.json) it adds, into RUN/study_eval.json
(rewritten atomically; an entry already there is not recomputed):

* ``sampler``: the arm's extra samplers (arms.Extra: LCM with the gamma sampler, TDD at eta 0, the
  non-equidistant schedule at 5-7 steps), same evaluation noise, labels and metrics as the run's own evaluation;
* ``guidance`` (arms in --guidance-arms): the composed-scale post-tuning test. The student is sampled with CFG
  ``g`` on itself (the run's sampler at eta 0), and scored against the teacher guided at the composed scale ``w' = g (1 + w) - 1``
  (diffusers' convention 1 + w for the teacher's w; decoupled guidance makes the student's conditional and
  unconditional branches the teacher's guided and unguided ones, so CFG g on the student composes to g (1 + w)
  on the teacher). g < 1 is included. At g = 1 the entry must equal the run's ``sampler/eta 0`` entry (checked).
  ``guidance_control/g<g>``: the control, the student left at CFG 1 against the same teacher at w'. Post-tuning
  works where the student at g is closer to the teacher at w' than the student at 1 is.

Every entry holds ``eval/<metric>@K`` values under the same names as metrics.json.
"""

from __future__ import annotations

import argparse
import copy
import glob
import json
import sys
import time
from pathlib import Path

import hydra
import torch
from omegaconf import OmegaConf

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE))
from arms import ARMS, TEACHERS  # noqa: E402
from run import RUNS  # noqa: E402

from tdd_lab.evaluation import Evaluator  # noqa: E402
from tdd_lab.export import load_student  # noqa: E402


def composed_w(g: float, w: float) -> float:
    """The teacher's w (LCM convention, CFG scale 1 + w) that CFG ``g`` on a decoupled student composes to."""
    return g * (1.0 + w) - 1.0


def build_sampler(cfg, option: str, overrides: dict):
    """conf/sampler/<option>.yaml with the run's grid size and ``overrides`` (None values dropped)."""
    conf = OmegaConf.load(ROOT / "conf" / "sampler" / f"{option}.yaml")
    conf.num_ddim_timesteps = int(cfg.solver.num_ddim_timesteps)
    if "timestep_scaling" in conf:  # the LCM sampler: the boundary scalings of the run's strategy
        conf.timestep_scaling = float(OmegaConf.select(cfg, "strategy.timestep_scaling", default=10.0))
    for k, v in overrides.items():
        conf[k] = v
    return hydra.utils.instantiate(conf)


def save(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=1))
    tmp.replace(path)


@torch.no_grad()
def evaluate_run(run: Path, arm_name: str, scales: list[float], guidance_arms: set[str]) -> None:
    arm = ARMS[arm_name]
    out = run / "study_eval.json"
    done = json.loads(out.read_text()) if out.exists() else {}
    cfg = OmegaConf.load(run / ".hydra" / "config.yaml")
    inst = hydra.utils.instantiate
    teacher, guidance, sampler = inst(cfg.teacher), inst(cfg.guidance), inst(cfg.sampler)
    evaluator: Evaluator = inst(cfg.metrics, progress=False)
    own_steps = list(evaluator.steps)
    student = load_student(run).denoiser

    for extra in arm.extras:
        key = f"sampler/{extra.name}"
        if key in done:
            continue
        start = time.time()
        evaluator.steps = list(extra.steps or own_steps)
        evaluator.guidance_scale = 1.0
        smp = build_sampler(cfg, extra.sampler, extra.overrides)
        metrics, _ = evaluator.evaluate_student(student, teacher, guidance, smp, "cpu")
        done[key] = metrics
        save(out, done)
        print(f"{run} {key}: {metrics} ({time.time() - start:.0f}s)", flush=True)

    if arm_name in guidance_arms:
        evaluator.steps = own_steps
        w = float(guidance.teacher_w)
        # deterministic sampling (eta 0), so that ode_error is a per-sample distance to the composed-scale teacher's
        # ODE solution from the same noise (distribution distances barely tell the teachers at different w apart)
        sampler = sampler.deterministic()
        for g in scales:
            key = f"guidance/g{g:g}"
            if key in done:
                continue
            ref = copy.copy(guidance)
            ref.w = composed_w(g, w)  # the teacher the student at CFG g should match
            evaluator.guidance_scale = g
            metrics, _ = evaluator.evaluate_student(student, teacher, ref, sampler, "cpu")
            entry = {**metrics, "g": g, "teacher_w": ref.w}
            if g == 1.0 and "sampler/eta 0" in done:
                entry["check_max_abs_diff_vs_eta0"] = max(abs(v - done["sampler/eta 0"][k]) for k, v in metrics.items())
            done[key] = entry
            save(out, done)
            print(f"{run} {key} (teacher w' = {ref.w:g}): {metrics}", flush=True)
        for g in scales:  # the control: the student left at g = 1, against the same composed-scale teachers
            key = f"guidance_control/g{g:g}"
            if key in done or g == 1.0:
                continue
            ref = copy.copy(guidance)
            ref.w = composed_w(g, w)
            evaluator.guidance_scale = 1.0
            metrics, _ = evaluator.evaluate_student(student, teacher, ref, sampler, "cpu")
            done[key] = {**metrics, "g": g, "teacher_w": ref.w}
            save(out, done)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("teacher")
    p.add_argument("--arms", nargs="+", default=None)
    p.add_argument("--scales", nargs="+", type=float, default=[0.5, 0.75, 1.0, 1.25, 1.5, 2.0])
    p.add_argument("--guidance-arms", nargs="*", default=None, help="default: the teacher's guidance_arms")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    guidance_arms = set(TEACHERS[args.teacher].guidance_arms if args.guidance_arms is None else args.guidance_arms)
    for arm_dir in sorted(glob.glob(str(RUNS / args.teacher / "main" / "*"))):
        arm = Path(arm_dir).name
        if args.arms and arm not in args.arms:
            continue
        for run in sorted(Path(arm_dir).glob("*/metrics.json")):
            evaluate_run(run.parent, arm, args.scales, guidance_arms)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
