"""The checkpoint watcher (``python -m tdd_lab.evaluate run_dir=RUN watch=true``, :mod:`tdd_lab.watch`).

A gmm2d training run and a watcher run concurrently as two processes; the watcher is killed and restarted half-way.
The training run waits after each periodic checkpoint until the watcher has recorded it (:class:`WaitForWatcher`),
so the two really overlap and every checkpoint is seen while training goes on.

:class:`WaitForWatcher` is imported by the training process (``+callbacks.wait=...``): this module imports nothing
from ``tests.conftest`` at import time.
"""

import csv
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

from tdd_lab.watch import CheckpointScanner

ROOT = Path(__file__).resolve().parents[1]
TRAIN = ["+experiment=tdd_gmm2d", "debug=smoke", "callbacks=default", "trainer.enable_checkpointing=true",
         "callbacks.checkpoint.every_n_train_steps=10", "trainer.max_steps=25", "teacher.init_steps=20",
         "metrics.metrics.ode_steps=100", "cpu_threads=1", "logger=wandb"]


class WaitForWatcher(pl.Callback):
    """Hold training at the start of the step after each checkpoint (every ``every`` steps) until ``watch.json`` in
    the run dir records that step and no file ``hold`` is in the run dir; fails after ``timeout`` seconds."""

    def __init__(self, every: int, timeout: float = 180.0):
        self.every, self.timeout = every, timeout

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        step = trainer.global_step
        if not step or step % self.every:
            return
        run, deadline = Path(trainer.default_root_dir), time.monotonic() + self.timeout
        state = run / "watch.json"
        while (run / "hold").exists() or not (state.exists() and str(step) in json.loads(state.read_text())["evaluated"]):
            if time.monotonic() > deadline:
                raise TimeoutError(f"no watcher recorded step {step} in {state} within {self.timeout} s")
            time.sleep(0.1)


def env_for(tmp_path, cache):
    return {**os.environ, "TDD_LAB_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline",
            "HOME": str(tmp_path), "OMP_NUM_THREADS": "1"}


def start(args, tmp_path, cache, name):
    out = open(tmp_path / f"{name}.log", "w")
    return subprocess.Popen([sys.executable, "-m", *args], cwd=ROOT, env=env_for(tmp_path, cache), stdout=out,
                            stderr=subprocess.STDOUT, text=True), tmp_path / f"{name}.log"


def wait_for(condition, what, timeout=180.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def evaluated(run: Path) -> dict:
    path = run / "watch.json"
    return json.loads(path.read_text())["evaluated"] if path.exists() else {}


def history_steps(run: Path, job_type: str) -> list[int]:
    """The history steps of the offline W&B runs of ``job_type`` under ``run``, read with wandb's own reader
    (``wandb leet inspect --json``)."""
    steps = []
    for f in sorted(run.glob("wandb/offline-run-*/run-*.wandb")):
        res = subprocess.run([sys.executable, "-m", "wandb", "leet", "inspect", "--json", str(f)], capture_output=True,
                             text=True, timeout=120)
        records = [json.loads(line) for line in res.stdout.splitlines() if line.startswith("{")]
        runs = [r["run"] for r in records if r["type"] == "run"]
        if runs and runs[0].get("job_type") == job_type:
            assert runs[0]["run_group"] == run.name  # the training run's group
            steps += [int(r["history"]["step"]["num"]) for r in records if r["type"] == "history"]
    return steps


@pytest.mark.slow  # three Python processes: ~90 s on a loaded 2-core machine (the in-process variant below is fast)
def test_watcher_evaluates_each_checkpoint_once_and_matches_final_metrics(tmp_path, cache_dir):
    """Concurrent training + watcher; the watcher is SIGKILLed after its first checkpoint and restarted. Each step
    (10, 20, 25: the last is not a multiple of 10) is evaluated once, a broken file is skipped, and the final
    checkpoint's numbers equal the run's own ``metrics.json`` exactly (same weights, evaluator, seeds, device and
    thread count: the same floating-point operations)."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "hold").touch()  # training waits at step 10 until the first watcher is gone
    train, train_log = start(["tdd_lab.train", *TRAIN, f"hydra.run.dir={run}",
                              "+callbacks.wait={_target_:tests.test_watch.WaitForWatcher,every:10}"],
                             tmp_path, cache_dir, "train")
    try:
        # started once training holds at its first checkpoint (the two processes would otherwise both fit the
        # gmm2d student init of a fresh cache); from then on they run side by side
        wait_for(lambda: (run / "checkpoints" / "step_000010.ckpt").exists() or train.poll() is not None,
                 "the first checkpoint", timeout=600)
        buf = io.BytesIO()
        torch.save({"global_step": 99, "state_dict": {"w": torch.zeros(1000)}}, buf)
        (run / "checkpoints" / "broken.ckpt").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
        watch = ["tdd_lab.evaluate", f"run_dir={run}", "watch=true", "poll_seconds=0.2", "watch_timeout=300"]
        first, first_log = start(watch, tmp_path, cache_dir, "watch1")
        wait_for(lambda: "10" in evaluated(run) or first.poll() is not None, "the first checkpoint's evaluation")
        wait_for(lambda: 10 in history_steps(run, "watch"), "step 10 in the watcher's W&B log", timeout=60)
        first.send_signal(signal.SIGKILL)
        first.wait()
        (run / "hold").unlink()
        assert set(evaluated(run)) == {"10"}, first_log.read_text()[-3000:]
        second, second_log = start(watch, tmp_path, cache_dir, "watch2")
        assert second.wait(timeout=300) == 0, second_log.read_text()[-3000:]
        assert train.wait(timeout=300) == 0, train_log.read_text()[-3000:]
    finally:
        for p in [train] + [q for q in (locals().get("first"), locals().get("second")) if q is not None]:
            if p.poll() is None:
                p.kill()

    out2 = second_log.read_text()
    assert "steps [10] already evaluated" in out2 and "step 10 (" not in out2 and "step 20 (" in out2
    assert "skipping" in first_log.read_text() + out2 and "broken.ckpt" in out2  # the partial file, not a crash
    state = json.loads((run / "watch.json").read_text())
    assert sorted(map(int, state["evaluated"])) == [10, 20, 25] and state["status"] == "finished"
    with open(run / "watch.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len({(r["step"], r["key"]) for r in rows}) == 3 * len(state["evaluated"]["25"])
    metrics = json.loads((run / "metrics.json").read_text())
    final = {k: v for k, v in metrics.items() if k.startswith("eval/")}
    assert final and state["evaluated"]["25"] == final  # exactly: the weights the final evaluation used
    assert json.loads((run / "training_done.json").read_text()) == {"final_step": 25, "status": "finished"}
    assert sorted(history_steps(run, "watch")) == [10, 20, 25]  # one W&B run (resumed by id), no step twice


def test_scanner_reads_steps_and_skips_partial_files(tmp_path):
    """``last.ckpt`` and ``step_*.ckpt`` of one step are one entry; a truncated file and a hidden temporary are
    skipped without an exception, and the truncated one is read again once it has been replaced."""
    d = tmp_path / "checkpoints"
    d.mkdir()
    for name, step in (("last.ckpt", 20), ("step_000020.ckpt", 20), ("step_000010.ckpt", 10)):
        torch.save({"global_step": step, "state_dict": {}}, d / name)
    buf = io.BytesIO()
    torch.save({"global_step": 30, "state_dict": {"w": torch.zeros(1000)}}, buf)
    (d / "step_000030.ckpt").write_bytes(buf.getvalue()[:-100])  # a reader of a non-atomic write could see this
    (d / ".last.ckpt.tmpab12").write_bytes(buf.getvalue()[:50])
    scanner = CheckpointScanner(d)
    found = scanner.scan()
    assert sorted(found) == [10, 20] and found[20].name == "last.ckpt"
    (d / "step_000030.ckpt").write_bytes(buf.getvalue())  # the complete file: a new version, read again
    assert sorted(scanner.scan()) == [10, 20, 30]


def watch_cfg(run: Path, *overrides):
    """conf/evaluate.yaml composed as ``python -m tdd_lab.evaluate run_dir=RUN watch=true ...`` composes it."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose(config_name="evaluate", overrides=[f"run_dir={run}", "watch=true", "poll_seconds=0.05",
                                                          *overrides])


def test_watch_in_process_final_step_restart_and_timeout(tmp_path, cache_dir):
    """In one process: a finished gmm2d run (max_steps 6, checkpoints every 4: FinalStepCheckpoint adds step 6) is
    watched; its final step's numbers equal ``metrics.json`` exactly; a second watcher evaluates nothing; without
    the done marker the watcher stops after ``watch_timeout``; setting keys and bad values are errors."""
    from omegaconf import OmegaConf

    from tdd_lab.train import train
    from tdd_lab.validate import ConfigError
    from tdd_lab.watch import watch

    from .conftest import compose_cfg, fast_overrides

    run = tmp_path / "run"
    cfg = compose_cfg(fast_overrides("tdd_gmm2d") + ["callbacks=default", "trainer.enable_checkpointing=true",
                                                     "callbacks.checkpoint.every_n_train_steps=4",
                                                     "trainer.max_steps=6", "cpu_threads=1"], run, cache_dir)
    metrics = train(cfg)
    (run / ".hydra").mkdir(parents=True)
    OmegaConf.save(OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]), run / ".hydra" / "config.yaml")
    assert json.loads((run / "training_done.json").read_text()) == {"final_step": 6, "status": "finished"}

    first = watch(watch_cfg(run, "watch_timeout=60"))
    assert first["status"] == "finished" and first["evaluated"] == [4, 6]
    assert first["final"] == {k: v for k, v in metrics.items() if k.startswith("eval/")}  # exactly
    again = watch(watch_cfg(run, "watch_timeout=60"))
    assert again["status"] == "finished" and again["evaluated"] == []  # nothing twice

    (run / "training_done.json").unlink()
    t0 = time.monotonic()
    assert watch(watch_cfg(run, "watch_timeout=0.3"))["status"] == "timeout" and time.monotonic() - t0 < 60
    with pytest.raises(ConfigError, match="run's own setting"):
        watch(watch_cfg(run, "eta=0.5"))
    with pytest.raises(ConfigError, match="poll_seconds"):
        watch(watch_cfg(run, "poll_seconds=0"))
    with pytest.raises(ConfigError, match="config.yaml not found"):
        watch(watch_cfg(tmp_path / "nowhere"))
