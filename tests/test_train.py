"""End-to-end smoke runs: training, metrics.json, exports, sampling, caches, loggers."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate as hydra_instantiate

from tdd_lab.train import train

from .conftest import compose_cfg, fast_overrides

ROOT = Path(__file__).resolve().parents[1]


def run_cli(args, cwd, env_cache):
    env = {"TDD_LAB_CACHE": str(env_cache), "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "PATH": "/usr/bin:/bin",
           "HOME": str(cwd)}
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


# (low, key, high) around the values these smoke runs measured (40 samples, 5 training steps from a 20-step init; gmm2d:
# teacher 1.367 / 0.316 / 0.204 at 2 / 4 / 10 steps, student 1.68 / 1.10, loss 0.0048; digits, whose 20-step teacher
# draws no digits yet: fid 88-195, class_acc 0.075-0.1 (chance), loss 0.054). A teacher that ignores its guidance, a
# sampler that takes the wrong steps, a metric on the wrong features or a classifier that reads the label leaves them.
SMOKE_BOUNDS = {
    "tdd_gmm2d": [(1.1, "teacher/ode_error@2", 1.7), (0.25, "teacher/ode_error@4", 0.4),
                  (0.15, "teacher/ode_error@10", 0.26), (0.8, "eval/ode_error@2", 4.0), (0.5, "eval/ode_error@4", 2.5),
                  (1e-3, "train/loss_final", 0.05)],
    "tdd_digits": [(40.0, "teacher/fid@2", 400.0), (40.0, "teacher/fid@4", 400.0), (40.0, "teacher/fid@10", 400.0),
                   (40.0, "eval/fid@2", 400.0), (40.0, "eval/fid@4", 400.0), (-1e-9, "eval/class_acc@4", 0.3),
                   (-1e-9, "teacher/class_acc@4", 0.3), (5e-3, "train/loss_final", 0.5)],
}


@pytest.mark.parametrize("experiment", ["tdd_gmm2d", "tdd_digits"])
def test_smoke_run_writes_metrics_samples_and_export(experiment, tmp_path, cache_dir):
    cfg = compose_cfg(fast_overrides(experiment), tmp_path, cache_dir)
    metrics = train(cfg)
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved == pytest.approx(metrics)
    names = ("ode_error", "swd") if experiment == "tdd_gmm2d" else ("fid", "class_acc")
    for name in names:
        for k in (2, 4):
            assert f"eval/{name}@{k}" in saved and f"teacher/{name}@{k}" in saved
        assert f"teacher/{name}@10" in saved  # smoke's shortened teacher reference (50 by default)
    assert all(isinstance(v, float) and v == v for v in saved.values())  # finite numbers, no NaN
    assert saved["train/steps"] == 5.0
    for lo, key, hi in SMOKE_BOUNDS[experiment]:
        assert lo < saved[key] < hi, (key, saved[key], (lo, hi))
    if experiment == "tdd_gmm2d":  # the exact teacher's error to its own ODE endpoint falls with its step count
        assert saved["teacher/ode_error@10"] < saved["teacher/ode_error@4"] < saved["teacher/ode_error@2"]
    assert sorted(p.name for p in (tmp_path / "samples").glob("*.png")) == [
        "student_2steps.png", "student_4steps.png", "teacher_10steps.png", "teacher_2steps.png", "teacher_4steps.png"]
    student = tmp_path / "student"
    assert (student / "student.json").exists() and (student / "scheduler" / "scheduler_config.json").exists()
    assert (tmp_path / "csv").exists()  # debug=smoke logs to CSV


def test_cached_teacher_is_reused(tmp_path, cache_dir):
    """The second run finds the pretrained teacher and classifier in the cache and builds nothing."""
    cfg = compose_cfg(fast_overrides("tdd_digits"), tmp_path / "a", cache_dir)
    train(cfg)
    before = {p: p.stat().st_mtime for p in Path(cache_dir).glob("teacher-digits-*/unet/*")}
    n_dirs = len(list(Path(cache_dir).glob("teacher-digits-*")))
    assert before and n_dirs >= 1
    cfg = compose_cfg(fast_overrides("tdd_digits"), tmp_path / "b", cache_dir)
    train(cfg)
    assert {p: p.stat().st_mtime for p in Path(cache_dir).glob("teacher-digits-*/unet/*")} == before
    assert len(list(Path(cache_dir).glob("teacher-digits-*"))) == n_dirs


@pytest.mark.parametrize(
    "overrides",
    [
        ["strategy=lcm", "guidance=lcm_w", "sampler=lcm"],
        ["strategy=pcm", "guidance=fixed", "sampler=ddim", "loss=l2"],
        ["strategy=tcd", "sampler=tcd", "target=ema"],
        ["strategy=tdd", "sampler=dpmpp", "student=lora"],
        ["strategy=tdd", "sampler=tdd", "sampler.timestep_schedule=nonequidistant", "solver.num_ddim_timesteps=250"],
    ],
    ids=["lcm", "pcm", "tcd-ema", "lora-dpmpp", "tdd-n250"],
)
def test_component_combinations_train_on_gmm2d(overrides, tmp_path, cache_dir):
    """Every combination trains, and its export is the trained student: re-evaluating the exported student with the
    run's own (re-instantiated) guidance, sampler and metrics reproduces the training-time metrics."""
    import hydra

    from tdd_lab.export import load_student

    cfg = compose_cfg(fast_overrides("tdd_gmm2d") + overrides, tmp_path, cache_dir)
    metrics = train(cfg)
    assert all(v == v for v in metrics.values())
    # measured 0.001 (N = 250) to 0.076 (TCD + EMA target): zero would mean the target is the prediction itself
    assert 2e-4 < metrics["train/loss_final"] < 0.5, metrics["train/loss_final"]
    # every arm's teacher numbers: its own sampler at 2 and 4 steps (measured 1.24-1.37 and 0.31-0.42), the
    # 10-step DDIM reference (0.204): more teacher steps, closer to the exact guided ODE endpoint
    assert 1.1 < metrics["teacher/ode_error@2"] < 1.7 and 0.25 < metrics["teacher/ode_error@4"] < 0.55
    assert metrics["teacher/ode_error@10"] < metrics["teacher/ode_error@4"] < metrics["teacher/ode_error@2"]
    student = load_student(tmp_path)
    teacher, guidance = hydra.utils.instantiate(cfg.teacher), hydra.utils.instantiate(cfg.guidance)
    sampler, evaluator = hydra.utils.instantiate(cfg.sampler), hydra.utils.instantiate(cfg.metrics)
    again, _ = evaluator.evaluate_student(student.denoiser, teacher, guidance, sampler)
    trained = {k: v for k, v in metrics.items() if k.startswith("eval/")}
    # exact, except that a LoRA export is merged into its base weights (float rounding of W + BA)
    assert again == (pytest.approx(trained, rel=1e-5) if "student=lora" in overrides else trained)
    sched = json.loads((tmp_path / "student" / "scheduler" / "scheduler_config.json").read_text())
    assert sched["_class_name"] == type(sampler.make_scheduler(teacher.schedule.diffusers_config())).__name__


def test_lora_student_trains_only_adapters(tmp_path, cache_dir):
    from tdd_lab.train import build_module
    from tdd_lab.validate import preflight

    cfg = compose_cfg(fast_overrides("tdd_gmm2d") + ["student=lora", "student.rank=4"], tmp_path, cache_dir)
    module, _ = build_module(cfg, preflight(cfg))
    trainable = [n for n, p in module.student.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    with torch.no_grad():  # a visible change of the function, so the comparison below means something
        for n, p in module.student.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    merged = module.student_factory.export_network(module.student.net)
    assert not any("lora_" in n for n, _ in merged.named_parameters())
    x, t, c = torch.randn(4, 2), torch.full((4,), 500.0), torch.tensor([0, 1, 2, -1])
    out = module.student.net(x, t, c)
    assert not torch.allclose(out, module.student_factory.export_network(module.teacher.student_network())(x, t, c))
    torch.testing.assert_close(merged(x, t, c), out, rtol=1e-5, atol=1e-5)


def test_wandb_offline_run_files(tmp_path, cache_dir):
    cfg = compose_cfg(fast_overrides("tdd_gmm2d") + ["logger=wandb"], tmp_path, cache_dir)
    train(cfg)
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("run-*.wandb"))


def test_cli_train_then_sample_round_trip(tmp_path, cache_dir):
    """`python -m tdd_lab.train` writes student/, `python -m tdd_lab.sample` generates from it."""
    run_dir = tmp_path / "run"
    res = run_cli(["-m", "tdd_lab.train", "+experiment=tdd_digits", "debug=smoke", "teacher.train_steps=20",
                   "teacher.batch_size=32", "metrics.metrics.members.digits.classifier_epochs=1", f"hydra.run.dir={run_dir}"],
                  ROOT, cache_dir)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "| steps |" in res.stdout and (run_dir / "metrics.json").exists()
    out = tmp_path / "gen.png"
    res = run_cli(["-m", "tdd_lab.sample", f"run_dir={run_dir}", "prompt=[a handwritten digit seven,a handwritten digit one]",
                   "num_per_prompt=3", "steps=4", "eta=0.2", f"out={out}"], ROOT, cache_dir)
    assert res.returncode == 0, res.stderr[-3000:]
    saved = torch.load(out.with_suffix(".pt"))
    assert saved["samples"].shape == (6, 1, 8, 8) and saved["steps"] == 4 and out.exists()
    assert torch.isfinite(saved["samples"]).all()
    assert "TDDSampler" in res.stdout  # the sampler recorded in the export
    res = run_cli(["-m", "tdd_lab.sample", f"run_dir={run_dir}", "prompt=x", "sampler=lcm", "eta=0.3", f"out={out}"],
                  ROOT, cache_dir)
    assert res.returncode == 2 and "eta: the LCMSampler has no eta" in res.stderr
    res = run_cli(["-m", "tdd_lab.sample", f"run_dir={tmp_path / 'nope'}"], ROOT, cache_dir)
    assert res.returncode == 2 and "student.json" in res.stderr


def test_gradient_checkpointing_keeps_gradients(tmp_path, cache_dir):
    from tdd_lab.train import build_module
    from tdd_lab.validate import preflight

    grads = []
    for gc in ("false", "true"):
        cfg = compose_cfg(fast_overrides("tdd_digits") + [f"model.gradient_checkpointing={gc}"], tmp_path, cache_dir)
        module, _ = build_module(cfg, preflight(cfg))
        torch.manual_seed(0)
        x, t = torch.randn(4, 1, 8, 8), torch.full((4,), 400)
        cond = module.teacher.conditioner.conditions(torch.arange(4))
        module.student(x, t, cond)[1].square().mean().backward()
        grads.append(torch.cat([p.grad.flatten() for p in module.student.parameters() if p.grad is not None]))
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-5, atol=1e-6)


def test_wandb_api_key_never_written(tmp_path, cache_dir, monkeypatch):
    secret = "sk-test-0123456789abcdef0123456789abcdef"
    monkeypatch.setenv("WANDB_API_KEY", secret)
    cfg = compose_cfg(fast_overrides("tdd_gmm2d") + ["logger=wandb"], tmp_path, cache_dir)
    train(cfg)
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path


def test_lcm_baseline_on_digits_unet(tmp_path, cache_dir):
    """lcm_w adds a zero-initialised w-embedding to the UNet student (time_cond_proj_dim) and trains."""
    cfg = compose_cfg(fast_overrides("tdd_digits") + ["strategy=lcm", "guidance=lcm_w", "sampler=lcm"],
                      tmp_path, cache_dir)
    train(cfg)
    meta = json.loads((tmp_path / "student" / "student.json").read_text())
    assert meta["time_cond_dim"] == 256 and meta["recommended"]["sampler"]["class"] == "LCMSampler"
    assert meta["teacher_w"] == cfg.guidance.eval_w  # the evaluated w is the config's, recorded once
    # the exported LCM scheduler uses the strategy's boundary scalings (one setting, not a hard-coded 10)
    sched = json.loads((tmp_path / "student" / "scheduler" / "scheduler_config.json").read_text())
    assert sched["timestep_scaling"] == cfg.strategy.timestep_scaling == meta["recommended"]["sampler"]["timestep_scaling"]
    cfg = compose_cfg(fast_overrides("tdd_digits") + ["strategy=lcm", "strategy.timestep_scaling=5", "guidance=lcm_w",
                                                     "sampler=lcm"], tmp_path / "b", cache_dir)
    assert hydra_instantiate(cfg.sampler).timestep_scaling == 5.0
