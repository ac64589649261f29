"""Preemption: a run killed with SIGKILL and resumed with resume=auto ends exactly like an uninterrupted one;
a non-finite loss stops the run naming the step, leaving the last checkpoint intact."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tdd_lab.module import NonFiniteLossError
from tdd_lab.train import train

from .conftest import compose_cfg, fast_overrides

ROOT = Path(__file__).resolve().parents[1]
COMMON = ["+experiment=tdd_gmm2d", "debug=smoke", "callbacks=default", "trainer.enable_checkpointing=true",
          "callbacks.checkpoint.every_n_train_steps=10", "trainer.max_steps=25", "teacher.init_steps=20",
          "metrics.metrics.ode_steps=100", "target=ema"]


def cli(args, cache):
    env = {**os.environ, "TDD_LAB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "tdd_lab.train", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)


def test_sigkill_then_resume_matches_uninterrupted_run(tmp_path, cache_dir):
    a, b = tmp_path / "a", tmp_path / "b"
    res = cli([*COMMON, f"hydra.run.dir={a}"], cache_dir)
    assert res.returncode == 0, res.stderr[-3000:]
    killed = cli([*COMMON, "+callbacks.killer={_target_:tdd_lab.testing.callbacks.KillAtStep,step:13}",
                  f"hydra.run.dir={b}"], cache_dir)
    assert killed.returncode == -9 and not (b / "metrics.json").exists()
    ckpts = sorted(p.name for p in (b / "checkpoints").iterdir())
    assert "last.ckpt" in ckpts and not any(n.startswith(".") for n in ckpts)  # no half-written files
    assert torch.load(b / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 10
    resumed = cli([*COMMON, "resume=auto", f"hydra.run.dir={b}"], cache_dir)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    ma, mb = (json.loads((d / "metrics.json").read_text()) for d in (a, b))
    assert mb["train/steps"] == 25.0
    assert ma == mb  # bit-identical metrics: model, optimizer, EMA, lr schedule, data position and RNG restored


def test_checkpoints_keep_last_n(tmp_path, cache_dir):
    res = cli([*COMMON, "trainer.max_steps=40", f"hydra.run.dir={tmp_path}"], cache_dir)
    assert res.returncode == 0, res.stderr[-3000:]
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["last.ckpt", "step_000030.ckpt", "step_000040.ckpt"]


def test_non_finite_loss_stops_with_clear_message(tmp_path, cache_dir, monkeypatch):
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
