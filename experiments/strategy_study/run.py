"""Train the strategy study's runs, one `python -m tdd_lab.train` per (arm, lr, seed), a few at a time.

    python experiments/strategy_study/run.py TEACHER lr   [--arms a b ...] [--lrs 1e-4 3e-4] [--no-extend] [--workers 2]
    python experiments/strategy_study/run.py TEACHER main [--arms a b ... | --optional] [--seeds 0 1 2 3 4] [--workers 2]

``lr``: every arm at every lr of the teacher's sweep on the validation seed (arms.VALIDATION_SEED), extended one
rung of arms.LR_LADDER at a time beyond an edge winner until the winner is interior; then the winner per arm (lowest mean of the primary fidelity metric over the arm's step counts, on the *validation
curve's* last four points, i.e. noise seed 10000, not the test noise) is written to RUNS/TEACHER/lr_choice.json.
``main``: every arm at its chosen lr (the recipe's lr where the sweep has no winner) on the test seeds.
Run dirs: RUNS/TEACHER/<phase>/<arm>/lr<lr>_seed<seed> (RUNS = $STUDY_RUNS or experiments/strategy_study/runs,
git-ignored). A run with a metrics.json is done and skipped, so the script resumes where it stopped and can
run the cells this session's budget left out.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE))
from arms import ARMS, LR_LADDER, TEACHERS, TEST_SEEDS, VALIDATION_SEED  # noqa: E402

RUNS = Path(os.environ.get("STUDY_RUNS", HERE / "runs"))


def run_dir(teacher: str, phase: str, arm: str, lr: float, seed: int) -> Path:
    return RUNS / teacher / phase / arm / f"lr{lr:g}_seed{seed}"


def overrides(teacher: str, arm: str, lr: float, seed: int, out: Path, phase: str = "main") -> list[str]:
    t, a = TEACHERS[teacher], ARMS[arm]
    base = list(t.base) + (list(t.main_extra) if phase == "main" else [])
    if a.steps is not None:  # PCM K: evaluated (and validated) at its own step count only
        base = [o for o in base if not o.startswith("metrics.steps=")] + [f"metrics.steps=[{','.join(map(str, a.steps))}]"]
    return [*base, *a.overrides, f"optimizer.lr={lr:g}", f"seed={seed}", f"hydra.run.dir={out}"]


def train(job: tuple[str, str, str, float, int]) -> tuple[Path, int, float]:
    teacher, phase, arm, lr, seed = job
    out = run_dir(teacher, phase, arm, lr, seed)
    if (out / "metrics.json").exists():
        return out, 0, 0.0
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "tdd_lab.train", *overrides(teacher, arm, lr, seed, out, phase)]
    start = time.time()
    with open(out / "stdout.log", "w") as log:
        rc = subprocess.call(["nice", "-n", "5", *cmd], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    took = time.time() - start
    print(f"[{time.strftime('%H:%M:%S')}] {teacher}/{phase}/{arm} lr={lr:g} seed={seed}: rc={rc} in {took:.0f}s",
          flush=True)
    return out, rc, took


def tail_mean(run: Path, metric: str, steps, points: int = 4) -> float:
    """Mean over the arm's step counts of ``val/<metric>@K`` on the last ``points`` validation points."""
    val = json.loads((run / "validation.json").read_text())
    last = sorted(val, key=int)[-points:]
    return statistics.fmean(val[s][f"val/{metric}@{k}"] for s in last for k in steps)


def lr_choice(teacher: str) -> dict:
    """RUNS/<teacher>/lr_choice.json as written by :func:`choose_lr` ({} before any sweep)."""
    f = RUNS / teacher / "lr_choice.json"
    return json.loads(f.read_text()) if f.exists() else {}


def choose_lr(teacher: str, arms: list[str], grid: tuple[float, ...] | None = None) -> dict:
    """Each arm's lr: the best tail mean of the validation curve over the lrs run on the validation seed, once every
    lr of ``grid`` (default: the teacher's sweep) has a finished run; written to RUNS/<teacher>/lr_choice.json."""
    t = TEACHERS[teacher]
    grid = tuple(grid or t.lrs)
    choice_file = RUNS / teacher / "lr_choice.json"
    choice = lr_choice(teacher)
    for arm in arms:
        a = ARMS[arm]
        if a.lr_from:
            continue
        steps = a.steps or [k for k in t.steps if k >= 4]  # the step counts the methods are designed for
        scores = {}
        for lr in LR_LADDER:
            d = run_dir(teacher, "lr", arm, lr, VALIDATION_SEED)
            if (d / "metrics.json").exists():
                scores[f"{lr:g}"] = tail_mean(d, t.primary, steps)
        if all(f"{lr:g}" in scores for lr in grid):
            best = min(scores, key=scores.get)
            choice[arm] = {"lr": float(best), "scores": scores, "metric": f"val/{t.primary}", "steps": list(steps),
                           "next": next_lr(float(best), [float(x) for x in scores])}
    choice_file.parent.mkdir(parents=True, exist_ok=True)
    tmp = choice_file.with_suffix(".tmp")
    tmp.write_text(json.dumps(choice, indent=1))
    tmp.replace(choice_file)
    return choice


def next_lr(best: float, tried: list[float]) -> float | None:
    """The ladder's next rung beyond an edge winner (None: the winner is interior or at the ladder's end)."""
    i = min(range(len(LR_LADDER)), key=lambda j: abs(LR_LADDER[j] - best))
    for j in (i - 1, i + 1):
        if 0 <= j < len(LR_LADDER) and not any(abs(LR_LADDER[j] - x) < 1e-12 for x in tried):
            return LR_LADDER[j]
    return None


def lr_of(teacher: str, arm: str, choice: dict) -> float:
    a = ARMS[arm]
    src = a.lr_from or arm
    return choice[src]["lr"] if src in choice else TEACHERS[teacher].default_lr


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("teacher", choices=sorted(TEACHERS))
    p.add_argument("phase", choices=["lr", "main"])
    p.add_argument("--arms", nargs="+", default=None)
    p.add_argument("--optional", action="store_true", help="the teacher's optional arms (the adversarial measurement)")
    p.add_argument("--lrs", nargs="+", type=float, default=None, help="lr phase: this grid instead of the teacher's")
    p.add_argument("--no-extend", action="store_true", help="lr phase: no rung beyond an edge winner")
    p.add_argument("--seeds", nargs="+", type=int, default=list(TEST_SEEDS))
    p.add_argument("--workers", type=int, default=2)
    args = p.parse_args(argv)
    t = TEACHERS[args.teacher]
    arms = args.arms or list(t.optional_arms if args.optional else t.arms)
    unknown = [a for a in arms if a not in ARMS]
    if unknown:
        p.error(f"unknown arms {unknown}; known: {sorted(ARMS)}")
    if args.phase == "lr":
        swept = [a for a in arms if not ARMS[a].lr_from]
        grid = tuple(args.lrs or t.lrs)
        jobs = [(t.name, "lr", a, lr, VALIDATION_SEED) for a in swept for lr in grid]
        with ThreadPoolExecutor(args.workers) as pool:
            results = list(pool.map(train, jobs))
        attempted = set(jobs)
        while True:  # extend beyond edge winners, one rung at a time
            choice = choose_lr(t.name, swept, grid)
            if args.no_extend:
                break
            more = [(t.name, "lr", a, choice[a]["next"], VALIDATION_SEED) for a in swept
                    if a in choice and choice[a]["next"] is not None]
            more = [j for j in more if j not in attempted]  # a failed run is not retried here
            attempted.update(more)
            if not more:
                break
            print(f"extending the sweep: {[(j[2], j[3]) for j in more]}", flush=True)
            with ThreadPoolExecutor(args.workers) as pool:
                results += list(pool.map(train, more))
        jobs = []
    else:
        choice = choose_lr(t.name, arms)
        # seed-major order within each group: a stopped study has whole seeds of whole groups (pairs need them)
        groups = [[a for a in g if a in arms] for g in t.groups] or [arms]
        groups.append([a for a in arms if not any(a in g for g in groups)])
        jobs = [(t.name, "main", a, lr_of(t.name, a, choice), s) for g in groups for s in args.seeds for a in g]
    if jobs:
        print(f"{len(jobs)} runs, {args.workers} at a time", flush=True)
        with ThreadPoolExecutor(args.workers) as pool:
            results = list(pool.map(train, jobs))
    failed = [str(d) for d, rc, _ in results if rc != 0]
    if args.phase == "lr":
        print(json.dumps(choose_lr(t.name, arms), indent=1))
    if failed:
        print("failed:", *failed, sep="\n  ")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
