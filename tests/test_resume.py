"""Preemption: a run killed with SIGKILL and resumed with resume=auto restores the checkpoint (it runs only the
remaining steps, from the checkpoint's optimizer, lr-schedule and RNG states) and ends exactly like an uninterrupted
one; a non-finite loss stops the run naming the step, leaving the last checkpoint intact.

:class:`ResumeProbe` is imported by the training processes these tests start (``+callbacks.probe=...``): this module
therefore imports ``tests.conftest`` only inside the tests (its ``torch.set_num_threads(1)`` would otherwise change
the thread count of the resumed process and with it the numbers it is compared on).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

from tdd_lab.callbacks import RNGStateCallback
from tdd_lab.module import NonFiniteLossError
from tdd_lab.train import train


class ResumeProbe(pl.Callback):
    """Records what a training process starts from and how many steps it runs, to ``out`` (``torch.save``).

    At train start (after :class:`RNGStateCallback` has re-applied a checkpoint's RNG states, which it precedes in
    the callbacks list): ``global_step``, the RNG states, the optimizer's and the lr scheduler's state dicts; at train
    end: ``steps_run``, the training batches this process executed.
    """

    def __init__(self, out: str):
        self.out, self.record = Path(out), {}

    def on_train_start(self, trainer, pl_module) -> None:
        self.record = {"start_step": trainer.global_step, "rng": RNGStateCallback._local_state(),
                       "optimizer": trainer.optimizers[0].state_dict(),
                       "lr_scheduler": [c.scheduler.state_dict() for c in trainer.lr_scheduler_configs],
                       "steps_run": 0}
        self.record = torch.utils._pytree.tree_map(lambda v: v.clone() if torch.is_tensor(v) else v, self.record)

    def on_train_batch_end(self, trainer, *args) -> None:
        self.record["steps_run"] += 1

    def on_train_end(self, trainer, pl_module) -> None:
        torch.save(self.record, self.out)


def probe_override(out: Path) -> str:
    return f"+callbacks.probe={{_target_:tests.test_resume.ResumeProbe,out:'{out}'}}"


def assert_same_state(a, b, where="state"):
    """Nested dicts/lists/tensors equal exactly (tensors by value and dtype)."""
    if torch.is_tensor(a) or torch.is_tensor(b):
        assert torch.is_tensor(a) and torch.is_tensor(b) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), (where, sorted(map(str, a)), sorted(map(str, b)))
        for k in a:
            assert_same_state(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_state(x, y, f"{where}[{i}]")
    else:
        assert a == b, (where, a, b)


def assert_restored_from(probe: dict, ckpt: dict, max_steps: int) -> None:
    """The process that wrote ``probe`` started from ``ckpt``: its step, optimizer, lr-schedule and RNG states, and it
    ran only the remaining ``max_steps - ckpt['global_step']`` steps."""
    step = ckpt["global_step"]
    assert probe["start_step"] == step, f"resumed process started at step {probe['start_step']}, not {step}"
    assert probe["steps_run"] == max_steps - step, f"resumed process ran {probe['steps_run']} steps"
    assert probe["optimizer"]["state"], "the resumed optimizer has no state (a fresh start)"
    assert_same_state(probe["optimizer"], ckpt["optimizer_states"][0], "optimizer")
    assert_same_state(probe["lr_scheduler"], ckpt["lr_schedulers"], "lr_scheduler")
    (saved_rng,) = ckpt["callbacks"]["RNGStateCallback"]["per_rank"]
    assert_same_state(probe["rng"], saved_rng, "rng")


ROOT = Path(__file__).resolve().parents[1]
COMMON = ["+experiment=tdd_gmm2d", "debug=smoke", "callbacks=default", "trainer.enable_checkpointing=true",
          "callbacks.checkpoint.every_n_train_steps=10", "trainer.max_steps=25", "teacher.init_steps=20",
          "metrics.metrics.ode_steps=100", "target=ema",
          "data.num_samples=80"]  # 5 batches per epoch: the runs cross several epoch boundaries


def cli(args, cache):
    env = {**os.environ, "TDD_LAB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "tdd_lab.train", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)


@pytest.mark.slow  # ~1.5 min: two subprocess runs; test_validation_curves and test_wandb_run resume in-process in the fast set
def test_sigkill_then_resume_matches_uninterrupted_run(tmp_path, cache_dir):
    """Resume restores the checkpoint (probe: start step, steps run, optimizer/lr/RNG states) and ends bit-identical
    to the uninterrupted run. Without the restore a fresh deterministic rerun would also end bit-identical: the probe
    is what tells them apart."""
    a, b = tmp_path / "a", tmp_path / "b"
    res = cli([*COMMON, f"hydra.run.dir={a}"], cache_dir)
    assert res.returncode == 0, res.stderr[-3000:]
    killed = cli([*COMMON, "+callbacks.killer={_target_:tdd_lab.testing.callbacks.KillAtStep,step:13}",
                  f"hydra.run.dir={b}"], cache_dir)
    assert killed.returncode == -9 and not (b / "metrics.json").exists()
    ckpts = sorted(p.name for p in (b / "checkpoints").iterdir())
    assert "last.ckpt" in ckpts and not any(n.startswith(".") for n in ckpts)  # no half-written files
    ckpt = torch.load(b / "checkpoints" / "last.ckpt", weights_only=True)  # read before the resumed run replaces it
    assert ckpt["global_step"] == 10
    resumed = cli([*COMMON, "resume=auto", probe_override(tmp_path / "probe.pt"), f"hydra.run.dir={b}"], cache_dir)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_restored_from(torch.load(tmp_path / "probe.pt", weights_only=False), ckpt, max_steps=25)
    ma, mb = (json.loads((d / "metrics.json").read_text()) for d in (a, b))
    assert mb["train/steps"] == 25.0
    assert ma == mb  # bit-identical metrics: model, optimizer, EMA, lr schedule, data position and RNG restored


def test_sampler_stream_resumes_and_shards():
    from tdd_lab.data.sampler import ResumableRandomSampler

    def stream(start, epochs, rank=0, world=1):
        s = ResumableRandomSampler(20, 2, seed=3, start_step=start, rank=rank, world_size=world)
        out = []
        for _ in range(epochs):
            assert len(s) == s.batches_per_epoch * 2  # always a full epoch (Lightning's batch counter)
            out += list(iter(s))
        return out

    full = stream(0, 3)
    assert stream(7, 3)[: len(full) - 14] == full[14:]  # resumed at step 7 (epoch 0 has 10 steps)
    assert sorted(full[:20]) == list(range(20))  # one epoch is a permutation
    r0, r1 = stream(0, 1, 0, 2), stream(0, 1, 1, 2)
    assert not set(r0) & set(r1) and len(r0) == len(r1) == 10  # ranks get disjoint shards
    assert stream(2, 1, 1, 2) == r1[4:]  # a resumed rank continues its own shard


def test_ema_target_sees_every_optimizer_step(tmp_path, cache_dir):
    """With decay 0 the EMA target must equal the student after each optimizer step (no lag)."""
    from tdd_lab.train import build_module
    from tdd_lab.validate import preflight

    from .conftest import compose_cfg, fast_overrides

    cfg = compose_cfg(fast_overrides("tdd_gmm2d") + ["target=ema", "target.decay=0.0"], tmp_path, cache_dir)
    module, data = build_module(cfg, preflight(cfg))
    pl.Trainer(accelerator="cpu", max_steps=3, logger=False, enable_checkpointing=False,
               enable_progress_bar=False).fit(module, datamodule=data)
    for pt, ps in zip(module.target.net.parameters(), module.student.parameters()):
        torch.testing.assert_close(pt, ps)


def test_checkpoints_keep_last_n(tmp_path, cache_dir):
    res = cli([*COMMON, "trainer.max_steps=40", f"hydra.run.dir={tmp_path}"], cache_dir)
    assert res.returncode == 0, res.stderr[-3000:]
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["last.ckpt", "step_000030.ckpt", "step_000040.ckpt"]


def test_non_finite_loss_stops_with_clear_message(tmp_path, cache_dir, monkeypatch):
    from .conftest import compose_cfg, fast_overrides

    cfg = compose_cfg(fast_overrides("tdd_gmm2d") + [
        "trainer.max_steps=8", "callbacks=default", "trainer.enable_checkpointing=true",
        "callbacks.checkpoint.every_n_train_steps=2"], tmp_path, cache_dir)
    from tdd_lab import losses

    calls = {"n": 0}
    original = losses.L2Loss.__call__

    def flaky(self, pred, target):
        calls["n"] += 1
        loss = original(self, pred, target)
        return loss * float("nan") if calls["n"] == 5 else loss

    monkeypatch.setattr(losses.L2Loss, "__call__", flaky)
    with pytest.raises(NonFiniteLossError, match="non-finite loss .* at step 4"):
        train(cfg)
    assert not (tmp_path / "metrics.json").exists()
    last = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)  # the last good one, loadable
    assert last["global_step"] == 4
    assert all(torch.isfinite(v).all() for v in last["state_dict"].values() if v.is_floating_point())


@pytest.mark.slow  # ~30 s: DDP training on two gloo processes; the fast set keeps test_eval_ranks' two forked ranks
def test_ddp_two_cpu_processes_rank0_writes_outputs(tmp_path, cache_dir):
    """`trainer=ddp` with 2 CPU processes (gloo): trains, ranks draw with different seeds, rank 0 alone writes."""
    run = tmp_path / "ddp"
    res = cli(["+experiment=tdd_gmm2d", "debug=smoke", "trainer=ddp", "trainer.devices=2", "teacher.init_steps=20",
               "metrics.metrics.ode_steps=100", f"hydra.run.dir={run}"], cache_dir)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "GLOBAL_RANK: 1" in res.stdout + res.stderr
    logs = (run / "train.log").read_text() + (run / "train_ddp_process_1.log").read_text()
    assert "rank 0: training seed 42" in logs and "rank 1: training seed 43" in logs
    assert json.loads((run / "metrics.json").read_text())["train/steps"] == 5.0
    assert [p.name for p in (run / "csv").iterdir()] == ["version_0"]  # one logger run, from rank 0
    assert len(list(run.rglob("student.json"))) == 1
