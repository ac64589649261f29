"""Evaluation sampling split over 2 CPU ranks (gloo, forked processes) equals a single-process run.

The gmm2d teacher's exact denoiser stands in for both teacher and student (no training); the sampler is
stochastic (TDD with eta > 0) and the batching uneven (10 samples in batches of 3), so the test fails if a
rank drew another batch's re-noising noise, or if the gathered batches came back out of order.
"""

from pathlib import Path

import pytest
import torch

from tdd_lab.metrics.base import Metrics

N, BATCH, STEPS = 10, 3, (2, 4)


class Moments(Metrics):
    """Mean distance to the teacher's reference samples, and the samples' first and last coordinates (order-sensitive)."""

    needs_teacher_samples = True

    def __init__(self):
        self._ref = None

    def set_teacher_samples(self, samples, teacher=None):
        self._ref = samples.double()

    def compute(self, samples, labels, noise, teacher, guider):
        x = samples.double()
        return {"dist": float((x - self._ref).norm(dim=1).mean()), "first": float(x[0, 0]), "last": float(x[-1, 1])}


def evaluate(cache_dir: Path):
    """(student metrics, teacher metrics, student samples, teacher samples) of one process (or one rank)."""
    from tdd_lab.evaluation import Evaluator
    from tdd_lab.guidance import DecoupledGuidance
    from tdd_lab.samplers import TDDSampler
    from tdd_lab.teachers.gmm import GMMTeacher

    torch.set_num_threads(1)
    teacher = GMMTeacher(num_components=8, num_classes=4, cache_dir=str(cache_dir), init_steps=1)
    evaluator = Evaluator(Moments(), steps=STEPS, num_samples=N, batch_size=BATCH, teacher_steps=6,
                          cache_dir=str(cache_dir), progress=False)
    guidance, sampler = DecoupledGuidance(w=2.0), TDDSampler(eta=0.4, num_ddim_timesteps=50)
    with evaluator.split_over_ranks():
        student, s_samples = evaluator.evaluate_student(teacher.denoiser, teacher, guidance, sampler)
        teach, t_samples = evaluator.evaluate_teacher(teacher, guidance, sampler)
    return student, teach, s_samples, t_samples


def _rank(rank: int, world: int, init_file: str, out: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        result = evaluate(Path(out).parent / "cache-ranks")  # fresh cache: everything is sampled over the ranks
        torch.save(result, f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


def test_two_ranks_equal_one_process(tmp_path):
    import torch.multiprocessing as mp

    single = evaluate(tmp_path / "cache-single")
    assert single[2][2].shape == (N, 2)
    # forked, not spawned: the children start with tdd_lab imported (a spawned child re-imports it: ~10 s each)
    mp.start_processes(_rank, args=(2, str(tmp_path / "init"), str(tmp_path / "result")), nprocs=2, join=True,
                       start_method="fork")
    rank0 = torch.load(tmp_path / "result.0", weights_only=False)
    rank1 = torch.load(tmp_path / "result.1", weights_only=False)
    assert rank1 == ({}, {}, {}, {})  # metrics and samples live on rank 0
    student, teacher, s_samples, t_samples = rank0
    assert student == single[0] and teacher == single[1]
    assert set(student) == {f"eval/{m}@{k}" for m in ("dist", "first", "last") for k in STEPS}
    assert student["eval/dist@2"] > 0  # stochastic student samples differ from the reference
    for mine, theirs in ((s_samples, single[2]), (t_samples, single[3])):
        assert mine.keys() == theirs.keys()
        for k in mine:
            assert torch.equal(mine[k], theirs[k]), k
    # the rule the split relies on: batch b re-noises from its own generator (seed + b), so per-sample randomness
    # does not depend on which process made the batch; another eta gives other samples (the noise is used)
    assert not torch.equal(s_samples[2], evaluate_eta0(tmp_path)[2])


def evaluate_eta0(tmp_path: Path) -> dict:
    from tdd_lab.evaluation import Evaluator
    from tdd_lab.guidance import DecoupledGuidance
    from tdd_lab.samplers import TDDSampler
    from tdd_lab.teachers.gmm import GMMTeacher

    teacher = GMMTeacher(num_components=8, num_classes=4, cache_dir=str(tmp_path / "cache-single"), init_steps=1)
    evaluator = Evaluator(Moments(), steps=[2], num_samples=N, batch_size=BATCH, teacher_steps=6,
                          cache_dir=str(tmp_path / "cache-single"), progress=False)
    _, samples = evaluator.evaluate_student(teacher.denoiser, teacher, DecoupledGuidance(w=2.0),
                                            TDDSampler(eta=0.0, num_ddim_timesteps=50))
    return samples


def test_batches_are_dealt_round_robin():
    from tdd_lab.evaluation import rank_batches

    assert [list(rank_batches(5, r, 2)) for r in range(2)] == [[0, 2, 4], [1, 3]]
    assert sorted(b for r in range(3) for b in rank_batches(7, r, 3)) == list(range(7))


def test_outside_a_process_group_nothing_changes():
    """split_over_ranks without torch.distributed (or with one rank) is the single-process path."""
    from tdd_lab.evaluation import Evaluator

    evaluator = Evaluator(Moments(), num_samples=4, batch_size=2)
    with evaluator.split_over_ranks():
        assert evaluator._group is None and evaluator.is_main


if __name__ == "__main__":  # pragma: no cover
    pytest.main([__file__, "-q"])


@pytest.mark.slow
def test_ddp_training_evaluates_on_both_ranks_and_matches_one_process(tmp_path, cache_dir):
    """`trainer=ddp` with 2 CPU processes: both ranks sample the final evaluation (5 batches of 8, dealt 3 + 2), rank 0
    writes metrics.json, and its numbers equal the exported student re-evaluated by one process (tdd_lab.evaluate)."""
    import json
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    env = {**__import__("os").environ, "TDD_LAB_CACHE": str(cache_dir), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    run = tmp_path / "ddp"
    train = subprocess.run([sys.executable, "-m", "tdd_lab.train", "+experiment=tdd_gmm2d", "debug=smoke", "trainer=ddp",
                            "trainer.devices=2", "teacher.init_steps=20", "metrics.metrics.ode_steps=100",
                            "metrics.batch_size=8", "logger=csv", f"hydra.run.dir={run}"],
                           cwd=root, env=env, capture_output=True, text=True, timeout=900)
    assert train.returncode == 0, train.stderr[-3000:]
    trained = json.loads((run / "metrics.json").read_text())
    logs = (run / "train.log").read_text() + (run / "train_ddp_process_1.log").read_text()
    assert "split over 2 ranks: rank 0" in logs and "split over 2 ranks: rank 1" in logs
    again = subprocess.run([sys.executable, "-m", "tdd_lab.evaluate", f"run_dir={run}", "wandb=false"],
                           cwd=root, env=env, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stderr[-3000:]
    single = json.loads((run / "metrics.json").read_text())
    for k in (2, 4):
        ddp_value = trained[f"eval/ode_error@{k}"]
        one_value = next(v for key, v in single.items() if key.startswith(f"eval/ode_error@{k}/"))
        assert ddp_value == pytest.approx(one_value, rel=1e-9, abs=1e-12), k
