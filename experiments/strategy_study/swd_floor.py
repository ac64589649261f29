"""The resolution of gmm2d's swd at the study's 2,000 samples: swd between exact samples of the guided PF-ODE from
the evaluation noise (seed 0) and exact samples from fresh noise (seeds 10^6 + 2000 j), for j = 0..R-1.

    python experiments/strategy_study/swd_floor.py [--repeats 5]

A sampler whose samples come from exactly the teacher's distribution but from other random draws (any stochastic
sampler: LCM, TCD, TDD at eta > 0) cannot score below this floor; a deterministic sampler that reproduces the ODE
solution per sample scores 0. Differences between rows smaller than its spread are not resolved.
"""

from __future__ import annotations

import argparse
import statistics

import torch

from tdd_lab.evaluation import fixed_noise
from tdd_lab.metrics.gmm import sliced_wasserstein
from tdd_lab.teachers.gmm import GMMTeacher


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--n", type=int, default=2000)
    p.add_argument("--w", type=float, default=3.5)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    teacher = GMMTeacher(cache_dir=None)
    t_max = teacher.schedule.num_train_timesteps - 1
    labels = torch.arange(args.n) % teacher.num_classes

    def exact(seed: int) -> torch.Tensor:
        noise = fixed_noise(args.n, teacher.sample_shape, seed).double()
        return teacher.ode_endpoint(noise, t_max, labels, w=args.w, num_steps=1000)

    ref = exact(0)
    floors = [sliced_wasserstein(exact(10**6 + args.n * j), ref) for j in range(args.repeats)]
    print(f"swd(exact fresh-noise samples, exact evaluation samples), n = {args.n}, w = {args.w}: "
          f"{statistics.fmean(floors):.4f} ± {statistics.stdev(floors):.4f} over {args.repeats} draws "
          f"({', '.join(f'{x:.4f}' for x in floors)})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
