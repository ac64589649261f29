"""Benchmarks of the framework around the network passes: ``python -m tdd_lab.bench [--quick] [--json]``.

One process; each measurement warms up, then repeats and reports the median. Measured on the
embedded digits setup with a random-weight teacher of the real architecture (timings do not
depend on the weights, so nothing is pretrained):

- ``train_overhead_ratio``: a full distillation step (loss, backward, AdamW step) / the sum of its
  network passes timed alone (student forward+backward, teacher cond+uncond 2B forward, target
  forward). Limit 1.0, target <= 1.15. ``lightning_overhead_ratio``: the same with the step timed
  inside ``Trainer.fit`` (loop, logging and hooks included).
- ``teacher_cfg_batched_speedup``: two B teacher forwards / one batched 2B forward.
- ``sample_speedup_4_vs_50cfg``: 50-step CFG teacher sampling / 4-step student sampling, same batch
  (limit: the NFE ratio 25; target >= 15).
- ``target_selection_us``: drawing TDD targets for a batch of 1024.
- ``loader_images_per_s`` / ``train_images_per_s``: the image-folder loader vs the step's consumption.

Each stage prints a progress line to stderr as it starts and ends (stdout stays the results).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch


def median_time(fn: Callable[[], object], warmup: int, reps: int) -> float:
    """Median wall time of ``fn()`` in seconds."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def digits_module(cache_dir: str, num_ddim_timesteps: int = 50):
    from tdd_lab.guidance import DecoupledGuidance
    from tdd_lab.losses import PseudoHuberLoss
    from tdd_lab.module import DistillationModule
    from tdd_lab.solvers import DDIMSolver
    from tdd_lab.strategies import TDDStrategy
    from tdd_lab.students import FullStudent
    from tdd_lab.targets import OnlineTarget
    from tdd_lab.teachers.digits import DigitsTeacher

    teacher = DigitsTeacher(cache_dir=cache_dir, train_steps=0)
    return DistillationModule(teacher, FullStudent(), OnlineTarget(), DDIMSolver(teacher.schedule, num_ddim_timesteps),
                              TDDStrategy(), DecoupledGuidance(), PseudoHuberLoss(),
                              optimizer=partial(torch.optim.AdamW, lr=1e-5))


def bench_train(module, batch_size: int, warmup: int, reps: int) -> dict[str, float]:
    from tdd_lab.data.digits import load_digit_tensors
    from tdd_lab.guider import ClassifierFreeGuidance

    images, labels = load_digit_tensors()
    batch = {"x0": images[:batch_size], "label": labels[:batch_size]}
    student, teacher = module.student.net, module.teacher
    opt = module.configure_optimizers()
    opt = opt["optimizer"] if isinstance(opt, dict) else opt

    def full_step():
        loss, _ = module.distillation_loss(batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    x0, cond = teacher.conditioner.prepare_batch(batch)
    uncond = teacher.conditioner.null_like(cond)
    cfg = ClassifierFreeGuidance(3.5)
    t = torch.full((batch_size,), 499)
    x_t = torch.randn_like(x0)
    mt = module.schedule.model_time(t)

    def student_fwd_bwd():
        out = student(x_t, mt, cond)
        student.zero_grad(set_to_none=True)
        out.float().square().mean().backward()

    @torch.no_grad()
    def teacher_2b():  # the guider's one batched 2B forward
        cfg(teacher.denoiser, x_t, t, cond, uncond)

    @torch.no_grad()
    def teacher_two_b():
        teacher.denoiser(x_t, t, cond)
        teacher.denoiser(x_t, t, uncond)

    def target_fwd():
        with torch.no_grad():
            student(x_t, mt, cond)

    r = {name: median_time(fn, warmup, reps) for name, fn in [
        ("full_step_s", full_step), ("student_fwd_bwd_s", student_fwd_bwd), ("teacher_2b_fwd_s", teacher_2b),
        ("target_fwd_s", target_fwd), ("teacher_two_b_fwd_s", teacher_two_b)]}
    r["train_overhead_ratio"] = r["full_step_s"] / (r["student_fwd_bwd_s"] + r["teacher_2b_fwd_s"] + r["target_fwd_s"])
    r["teacher_cfg_batched_speedup"] = r["teacher_two_b_fwd_s"] / r["teacher_2b_fwd_s"]
    r["train_images_per_s"] = batch_size / r["full_step_s"]
    return r


def bench_lightning_step(module, batch_size: int, warmup: int, reps: int) -> dict[str, float]:
    """Median time of one step inside ``Trainer.fit`` (loop, logging, hooks included)."""
    import pytorch_lightning as pl

    from tdd_lab.data import DigitsDataModule

    class StepTimer(pl.Callback):
        def __init__(self):
            self.times, self._t0 = [], 0.0

        def on_train_batch_start(self, *args):
            self._t0 = time.perf_counter()

        def on_train_batch_end(self, *args):
            self.times.append(time.perf_counter() - self._t0)

    timer = StepTimer()
    trainer = pl.Trainer(accelerator="cpu", max_steps=warmup + reps, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, callbacks=[timer],
                         log_every_n_steps=25)
    trainer.fit(module, datamodule=DigitsDataModule(batch_size=batch_size))
    return {"lightning_step_s": statistics.median(timer.times[warmup:])}


def bench_sampling(module, batch_size: int, reps: int) -> dict[str, float]:
    from tdd_lab.samplers import DDIMSampler, TDDSampler

    teacher = module.teacher
    noise = torch.randn(batch_size, *teacher.sample_shape, generator=torch.Generator().manual_seed(0))
    from tdd_lab.guider import ClassifierFreeGuidance

    cond = teacher.conditioner.conditions(torch.arange(batch_size) % 10)
    uncond = teacher.conditioner.null_like(cond)
    n = module.solver.num_ddim_timesteps
    student_s = median_time(lambda: TDDSampler(eta=0.2, num_ddim_timesteps=n).sample(
        module.student, noise, cond, uncond, 4), 1, reps)
    teacher_s = median_time(lambda: DDIMSampler(num_ddim_timesteps=n).sample(
        teacher.denoiser, noise, cond, uncond, 50, ClassifierFreeGuidance(3.5)), 1, max(1, reps // 2))
    return {"student_4step_sample_s": student_s, "teacher_50step_cfg_sample_s": teacher_s,
            "sample_speedup_4_vs_50cfg": teacher_s / student_s}


def bench_targets(reps: int) -> dict[str, float]:
    from tdd_lab.strategies import TDDStrategy
    from tdd_lab.timesteps import ddim_grid

    strat, grid = TDDStrategy(), ddim_grid(1000, 250)
    t_prev = torch.clamp(grid[torch.randint(0, 250, (1024,))] - 4, min=0)
    return {"target_selection_us": 1e6 * median_time(lambda: strat.sample(t_prev, grid), 10, reps)}


def bench_loader(num_images: int, resolution: int, batch_size: int, num_workers: int) -> dict[str, float]:
    from PIL import Image
    from torch.utils.data import DataLoader

    from tdd_lab.data.image_folder import ImageFolderDataset, collate_skipping

    with tempfile.TemporaryDirectory() as d:
        g = torch.Generator().manual_seed(0)
        for i in range(num_images):
            arr = (torch.rand(resolution + 32, resolution + 16, 3, generator=g) * 255).byte().numpy()
            Image.fromarray(arr).save(Path(d) / f"{i:05d}.png")
            (Path(d) / f"{i:05d}.txt").write_text(f"caption {i}")
        loader = DataLoader(ImageFolderDataset(d, resolution), batch_size=batch_size, num_workers=num_workers,
                            collate_fn=collate_skipping)
        next(iter(loader))  # warm-up (worker start, file cache)
        t0 = time.perf_counter()
        n = sum(len(b["prompt"]) for b in loader)
        return {"loader_images_per_s": n / (time.perf_counter() - t0), "loader_num_workers": float(num_workers),
                "loader_resolution": float(resolution)}


def run_stages(stages: list[tuple[str, Callable[[], dict[str, float]]]], out=sys.stderr) -> dict[str, float]:
    """Run ``(name, fn)`` stages in order, merging their results; one progress line per stage start and end."""
    results: dict[str, float] = {}
    t_all = time.perf_counter()
    for i, (name, fn) in enumerate(stages, start=1):
        print(f"bench [{i}/{len(stages)}] {name} ...", file=out, flush=True)
        t0 = time.perf_counter()
        results.update(fn())
        print(f"bench [{i}/{len(stages)}] {name}: {time.perf_counter() - t0:.1f} s "
              f"({time.perf_counter() - t_all:.0f} s in all)", file=out, flush=True)
    return results


def run(quick: bool = False, cache_dir: str | None = None) -> dict[str, float]:
    torch.manual_seed(0)
    own_cache = cache_dir is None
    cache_dir = cache_dir or tempfile.mkdtemp(prefix="tdd_bench_")
    warmup, reps = (2, 5) if quick else (3, 15)
    module = digits_module(cache_dir)
    results = {"batch_size": 64.0, "threads": float(torch.get_num_threads())}
    results.update(run_stages([
        ("training step and its network passes", lambda: bench_train(module, 64, warmup, reps)),
        ("training step inside Trainer.fit", lambda: bench_lightning_step(module, 64, warmup, reps)),
        ("sampling: 4-step student vs 50-step CFG teacher", lambda: bench_sampling(module, 256, 3 if quick else 6)),
        ("TDD target selection", lambda: bench_targets(50 if quick else 200)),
        ("image-folder loader", lambda: bench_loader(64 if quick else 256, 64, 16, 0 if quick else 2)),
    ]))
    passes = results["student_fwd_bwd_s"] + results["teacher_2b_fwd_s"] + results["target_fwd_s"]
    results["lightning_overhead_ratio"] = results["lightning_step_s"] / passes
    results["loader_vs_train_images"] = results["loader_images_per_s"] / results["train_images_per_s"]
    if own_cache:
        import shutil

        shutil.rmtree(cache_dir, ignore_errors=True)
    return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tdd_lab.bench", description="tdd_lab benchmarks (medians)")
    p.add_argument("--quick", action="store_true", help="fewer repetitions (about a minute on 2 cores)")
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    p.add_argument("--cache-dir", default=None, help="cache for the random-weight teacher (default: a temp dir)")
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    r = run(args.quick, args.cache_dir)
    r["bench_wall_s"] = time.perf_counter() - t0
    width = max(map(len, r))
    for k, v in r.items():
        print(f"{k:<{width}}  {v:.4g}")
    if args.json:
        print(json.dumps(r))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
