"""What a user meets around a run: the run directory printed, labelled sample grids, the student exported before a
failing evaluation, resume warnings, SIGTERM, and evaluate settings that collapse onto others (issue 16)."""

import csv
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from tdd_lab.train import checkpointing_warning, train

from .conftest import compose_cfg, fast_overrides
from .test_evaluate import compose_app

ROOT = Path(__file__).resolve().parents[1]


def train_run(run_dir, cache_dir, *extra):
    """A gmm2d smoke run in process, with the ``.hydra/config.yaml`` the Hydra app would have written."""
    cfg = compose_cfg([*fast_overrides("tdd_gmm2d"), *extra], run_dir, cache_dir)
    (run_dir / ".hydra").mkdir(parents=True, exist_ok=True)
    OmegaConf.save(OmegaConf.create({k: cfg[k] for k in cfg if k != "hydra"}), run_dir / ".hydra" / "config.yaml")
    return cfg, train(cfg)


@pytest.fixture(scope="module")
def gmm_run(tmp_path_factory, cache_dir):
    """(run dir, printed stdout) of one gmm2d smoke run."""
    import contextlib
    import io

    run = tmp_path_factory.mktemp("user") / "run"
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        train_run(run, cache_dir)
    return run, out.getvalue()


def test_run_directory_is_printed_last(gmm_run):
    run, stdout = gmm_run
    assert stdout.rstrip().splitlines()[-1] == f"run directory: {run.resolve()}"


def test_sample_grids_say_who_how_many_steps_and_what(gmm_run):
    run, _ = gmm_run
    for who, k in (("student", 2), ("student", 4), ("teacher", 4), ("teacher", 10)):
        meta = json.loads((run / "samples" / f"{who}_{k}steps.json").read_text())
        assert meta["who"] == who and meta["steps"] == k and meta["teacher_w"] == 3.5
        assert meta["labels"][:5] == [0, 1, 2, 3, 0]  # the evaluation labels cycle over the 4 classes
        assert meta["guidance_scale"] == (1.0 if who == "student" else None)
    assert json.loads((run / "samples" / "teacher_10steps.json").read_text())["sampler"] == "reference DDIM"
    student = json.loads((run / "samples" / "student_4steps.json").read_text())
    assert student["sampler"]["class"] == "TDDSampler" and student["sampler"]["eta"] == 0.2


def test_caption_strip_and_nearest_upscaling(tmp_path):
    from tdd_lab.outputs import caption_image

    path = tmp_path / "grid.png"
    grid = torch.zeros(12, 10, dtype=torch.uint8)
    grid[::2, ::2] = 200  # a checkerboard-like pattern that blurs under any smoothing interpolation
    Image.fromarray(grid.numpy()).convert("RGB").save(path)
    caption_image(path, "student | 4 steps | TDDSampler eta 0.2 | prompt: 'a handwritten digit seven'", min_width=640)
    out = torch.tensor(list(Image.open(path).convert("L").getdata()), dtype=torch.uint8)
    w, h = Image.open(path).size
    out = out.view(h, w)
    assert w == 640  # x64, nearest neighbour: each pixel a 64 x 64 block
    body = out[h - 12 * 64:]
    assert torch.equal(body, grid.repeat_interleave(64, 0).repeat_interleave(64, 1))
    band = out[: h - 12 * 64]
    assert band.shape[0] > 8 and (band > 250).float().mean() > 0.8 and (band < 100).sum() > 50  # dark text on white


def test_student_is_exported_before_a_failing_evaluation(tmp_path, cache_dir, monkeypatch, caplog):
    from tdd_lab.evaluation import Evaluator

    def broken(*args, **kwargs):
        raise RuntimeError("metric crashed")

    monkeypatch.setattr(Evaluator, "evaluate_student", broken)
    with caplog.at_level(logging.ERROR), pytest.raises(RuntimeError, match="metric crashed"):
        train_run(tmp_path / "run", cache_dir)
    assert (tmp_path / "run" / "student" / "student.json").exists()
    assert f"the trained student is exported in {tmp_path / 'run' / 'student'}" in caplog.text
    assert "tdd_lab.evaluate run_dir=" in caplog.text


def test_resume_auto_without_checkpoints_warns(tmp_path, cache_dir):
    smoke = compose_cfg(["experiment=tdd_gmm2d", "debug=smoke", "resume=auto"], tmp_path, cache_dir)
    assert "this run writes no checkpoints" in checkpointing_warning(smoke)
    assert "debug=smoke" in checkpointing_warning(smoke)
    ok = compose_cfg(["experiment=tdd_gmm2d", "debug=smoke", "resume=auto", "callbacks=default",
                      "trainer.enable_checkpointing=true"], tmp_path, cache_dir)
    assert checkpointing_warning(ok) is None
    assert checkpointing_warning(compose_cfg(["experiment=tdd_gmm2d", "debug=smoke"], tmp_path, cache_dir)) is None


def test_sigterm_saves_a_resumable_checkpoint_and_exits_within_seconds(tmp_path, cache_dir):
    """SLURM preemption: SIGTERM mid-run -> checkpoints/last.ckpt at the step reached, exit 143 within seconds;
    resume=auto then runs only the remaining steps from there."""
    run = tmp_path / "run"
    common = [*fast_overrides("tdd_gmm2d"), "callbacks=default", "trainer.enable_checkpointing=true",
              "callbacks.checkpoint.every_n_train_steps=10"]
    env = {**os.environ, "TDD_LAB_CACHE": str(cache_dir), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "tdd_lab.train", *common, "trainer.max_steps=1000000",
                             f"hydra.run.dir={run}"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 300
        while not (run / "checkpoints" / "step_000010.ckpt").exists():  # training is under way
            assert proc.poll() is None and time.time() < deadline, proc.communicate()[1][-3000:]
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        t0 = time.time()
        _, stderr = proc.communicate(timeout=60)
        elapsed = time.time() - t0
    finally:
        proc.kill()
    assert proc.returncode == 143, stderr[-3000:]
    assert elapsed < 20, elapsed
    step = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)["global_step"]
    assert step >= 10 and f"stopped by SIGTERM at step {step}; checkpoint {run / 'checkpoints' / 'last.ckpt'}" in stderr
    assert "Traceback" not in stderr and not (run / "metrics.json").exists()

    metrics = train(compose_cfg([*common, f"trainer.max_steps={step + 3}", "resume=auto"], run, cache_dir))
    assert metrics["train/steps"] == step + 3
    resumed = sorted(int(r["step"]) for r in csv.DictReader(open(next(run.glob("csv/version_1/metrics.csv"))))
                     if r.get("train/loss"))
    assert resumed == [step, step + 1, step + 2]  # the resumed process ran only the remaining 3 steps


def test_evaluate_warns_and_records_collapsed_settings_once(gmm_run, tmp_path, caplog):
    """gmm2d's ode_error is measured with eta 0, and at N = 50 the non-equidistant timesteps of K = 2 and 4 are the
    equidistant ones: both settings are said to collapse, recorded under the setting they equal, and not
    evaluated twice."""
    import shutil

    from tdd_lab.evaluate import evaluate

    run = shutil.copytree(gmm_run[0], tmp_path / "run")
    with caplog.at_level(logging.WARNING):
        new, rows = evaluate(compose_app("evaluate", [f"run_dir={run}", "eta=0.3", "wandb=false"]))
    assert sorted(new) == sorted(f"eval/{m}@{k}/eta0/g1" for m in ("ode_error", "swd") for k in (2, 4))
    assert "eta=0.3: the run's metrics are measured with deterministic sampling" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        again, _ = evaluate(compose_app("evaluate", [f"run_dir={run}", "eta=0.5", "wandb=false"]))
        noneq, _ = evaluate(compose_app("evaluate", [f"run_dir={run}", "timestep_schedule=nonequidistant",
                                                     "wandb=false"]))
    assert again == {} and noneq == {}  # the same setting: not evaluated, not appended again
    assert "the non-equidistant timesteps are the equidistant ones" in caplog.text
    assert "eta0/g1 is already in metrics.json" in caplog.text
    assert len(list(csv.DictReader(open(run / "evaluate.csv")))) == len(rows) == 4
    assert not [k for k in json.loads((run / "metrics.json").read_text()) if "noneq" in k]
