"""`python -m tdd_lab.evaluate` (a Hydra app) end to end on tiny gmm2d and digits runs."""

import csv
import json
import shutil

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from .conftest import CONF_DIR
from .test_wandb_sweep import GMM, ROOT, offline_runs, run_cli

DIGITS = ["+experiment=tdd_digits", "debug=smoke", "teacher.train_steps=20", "teacher.batch_size=32",
          "metrics.metrics.members.digits.classifier_epochs=1"]


def compose_app(name, overrides):
    """conf/<name>.yaml composed with ``overrides``, as ``python -m tdd_lab.<name>`` would (in process)."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose(config_name=name, overrides=list(overrides))


def train(run, cache_dir, *overrides):
    res = run_cli(["-m", "tdd_lab.train", *overrides, f"hydra.run.dir={run}"], ROOT, cache_dir)
    assert res.returncode == 0, res.stderr[-3000:]
    return run


@pytest.fixture(scope="module")
def gmm_run(tmp_path_factory, cache_dir):
    return train(tmp_path_factory.mktemp("eval") / "gmm_run", cache_dir, *GMM, "logger=wandb")


@pytest.fixture
def run(gmm_run, tmp_path):
    """A fresh copy of the gmm2d run (each test sees only its own appended keys)."""
    return shutil.copytree(gmm_run, tmp_path / "gmm_run")


def test_own_settings_reproduce_training_and_log_to_wandb(run, gmm_run, cache_dir):
    before = json.loads((run / "metrics.json").read_text())
    res = run_cli(["-m", "tdd_lab.evaluate", f"run_dir={run / 'student'}"], ROOT, cache_dir)  # the export also works
    assert res.returncode == 0, res.stderr[-3000:]
    after = json.loads((run / "metrics.json").read_text())
    assert {k: after[k] for k in before} == before  # appended, nothing lost
    new = sorted(set(after) - set(before))
    # the run's own settings: its steps, its sampler (ode_error is measured with eta 0), no CFG on the student
    assert new == sorted(f"eval/{m}@{k}/eta0/g1" for m in ("ode_error", "swd") for k in (2, 4))
    for key in ("eval/ode_error@2", "eval/ode_error@4", "eval/swd@2", "eval/swd@4"):  # the export, same noise
        assert after[f"{key}/eta0/g1"] == pytest.approx(before[key], rel=1e-6)
    assert "| eta0/g1 |" in res.stdout and f"appended 4 keys to {run / 'metrics.json'}" in res.stdout
    rows = list(csv.DictReader(open(run / "evaluate.csv")))
    assert len(rows) == len(new) and {r["key"] for r in rows} == set(new)
    assert rows[0]["eta"] == "0.0" and rows[0]["guidance_scale"] == "1.0" and rows[0]["t_l"] == "-1"
    train_run, eval_run = offline_runs(run)
    assert eval_run["job_type"] == "evaluate" and eval_run["group"] == train_run["group"] == "gmm_run"
    assert {k: eval_run["summary"][k] for k in new} == {k: after[k] for k in new}
    # Hydra's own files: under the run's .hydra_evaluate/, the training config untouched
    (job,) = (run / ".hydra_evaluate").iterdir()
    assert (job / ".hydra" / "overrides.yaml").exists() and (job / "evaluate.log").exists()
    assert (run / ".hydra" / "config.yaml").read_text() == (gmm_run / ".hydra" / "config.yaml").read_text()


def test_multirun_grid_appends_every_job(run, cache_dir, tmp_path):
    before = json.loads((run / "metrics.json").read_text())
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    res = run_cli(["-m", "tdd_lab.evaluate", "-m", f"run_dir={run}", "steps=[2,4]", "eta=0,0.3", "guidance_scale=1,1.5",
                   "t_l=-1,1", "wandb=false"], cwd, cache_dir)
    assert res.returncode == 0, res.stderr[-3000:]
    after = json.loads((run / "metrics.json").read_text())
    assert {k: after[k] for k in before} == before
    new = sorted(set(after) - set(before))
    # 8 jobs; ode_error/swd are measured with deterministic samplers: the eta axis collapses to eta0
    settings = {"eta0/g1", "eta0/g1.5", "eta0/g1/tl1", "eta0/g1.5/tl1"}
    assert new == sorted(f"eval/{m}@{k}/{s}" for m in ("ode_error", "swd") for k in (2, 4) for s in settings)
    assert after["eval/ode_error@4/eta0/g1"] == pytest.approx(before["eval/ode_error@4"], rel=1e-6)
    assert after["eval/ode_error@4/eta0/g1.5"] != after["eval/ode_error@4/eta0/g1"]  # CFG on the student acts
    assert after["eval/ode_error@4/eta0/g1/tl1"] != after["eval/ode_error@4/eta0/g1"]  # x0 clipping acts
    rows = list(csv.DictReader(open(run / "evaluate.csv")))
    # each of the 4 distinct settings is evaluated once (4 keys); the eta=0.3 jobs equal eta=0 ones: said, not redone
    assert len(rows) == 4 * 4 and {r["key"] for r in rows} == set(new)
    assert "recorded as eta0" in res.stderr + res.stdout
    grid = res.stdout.split("grid of 4 settings:")[1]  # the whole grid, printed at the end of the multirun
    assert all(f"| {s} |" in grid for s in settings)
    jobs = sorted(p.name for p in next((run / ".hydra_evaluate").glob("multirun_*")).iterdir() if p.is_dir())
    assert jobs == [str(i) for i in range(8)]
    assert {p.name for p in cwd.iterdir()} <= {".cache", ".config"}  # no Hydra output in the cwd (run_cli's HOME)
    assert not offline_runs(run)[1:]  # wandb=false


def test_run_overrides_and_metrics_option(gmm_run, tmp_path, cache_dir):
    from omegaconf import OmegaConf

    from tdd_lab.evaluate import build_sampler, run_config

    cfg = compose_app("evaluate", [f"run_dir={gmm_run}", "run_overrides={metrics.num_samples:20,guidance.w:2.5}",
                                   "steps=4", "guidance_scale=1.5"])
    run_cfg = run_config(gmm_run, cfg)
    assert run_cfg.metrics.num_samples == 20 and run_cfg.guidance.w == 2.5
    assert run_cfg.metrics.steps == [4] and run_cfg.metrics.guidance_scale == 1.5
    cfg = compose_app("evaluate", [f"run_dir={gmm_run}", "run_overrides=['metrics.seed=3']", "metrics=digits"])
    run_cfg = run_config(gmm_run, cfg)
    assert run_cfg.metrics.metrics._target_ == "tdd_lab.metrics.DigitsMetrics" and run_cfg.metrics.seed == 3
    assert run_cfg.metrics.cache_dir == str(cache_dir)  # the option's ${paths.cache_dir}, resolved in the run
    # eta / timestep_schedule / t_l go to the sampler's constructor, where it has them
    cfg = compose_app("evaluate", [f"run_dir={gmm_run}", "eta=0.5", "timestep_schedule=nonequidistant", "t_l=2"])
    sampler = build_sampler(run_cfg, cfg).describe()
    assert (sampler["eta"], sampler["timestep_schedule"], sampler["thresholding"], sampler["t_l"]) == \
        (0.5, "nonequidistant", True, 2)
    lcm = OmegaConf.create({"sampler": {"_target_": "tdd_lab.samplers.LCMSampler", "num_ddim_timesteps": 50}})
    cfg = compose_app("evaluate", [f"run_dir={gmm_run}", "t_l=1"])
    with pytest.raises(ValueError, match="t_l: the run's sampler LCMSampler has no t_l parameter"):
        build_sampler(lcm, cfg)


def test_bad_input_exits_2(gmm_run, tmp_path, cache_dir):
    from tdd_lab.evaluate import evaluate
    from tdd_lab.validate import ConfigError

    cases = [
        ([], "run_dir: required"),
        ([f"run_dir={tmp_path / 'missing'}"], "does not exist"),
        ([f"run_dir={tmp_path}"], "config.yaml not found"),
        ([f"run_dir={gmm_run}", "eta=1.5"], r"sampler.eta must be in \[0, 1\]"),
        ([f"run_dir={gmm_run}", "timestep_schedule=cosine"], "sampler.timestep_schedule must be one of"),
        ([f"run_dir={gmm_run}", "steps=[2,99]"], r"steps: \[99\] outside \[1, 50\]"),
        ([f"run_dir={gmm_run}", "run_overrides={metrics.no_such_key:1}"], "'metrics.no_such_key' is not a key"),
        ([f"run_dir={gmm_run}", "run_overrides=[metrics.num_samples]"], "expected key=value"),
    ]
    for overrides, message in cases:
        with pytest.raises(ConfigError, match=message):
            evaluate(compose_app("evaluate", [*overrides, "wandb=false"]))
    before = sorted(p.name for p in gmm_run.iterdir())
    for args, message in [([f"run_dir={tmp_path / 'missing'}"], "error: run_dir: "),
                          ([f"run_dir={gmm_run}", "metrics=nope"], "Could not find 'metrics/nope'"),
                          ([f"run_dir={gmm_run}", "bogus=1"], "Could not override 'bogus'")]:
        res = run_cli(["-m", "tdd_lab.evaluate", *args], ROOT, cache_dir)  # as a process: exit 2, no traceback
        assert res.returncode == 2 and message in res.stderr and "Traceback" not in res.stderr, res.stderr[-2000:]
        assert "error: " in res.stderr
    assert not (tmp_path / "missing").exists()  # Hydra made no folder for a run that is not there
    assert sorted(p.name for p in gmm_run.iterdir()) == before


def test_lcm_w_student_reproduces_and_refuses_cfg(tmp_path, cache_dir):
    from tdd_lab.evaluate import evaluate
    from tdd_lab.validate import ConfigError

    run = train(tmp_path / "lcm_run", cache_dir, *GMM, "guidance=lcm_w", "strategy=lcm", "sampler=lcm")
    before = json.loads((run / "metrics.json").read_text())
    new, rows = evaluate(compose_app("evaluate", [f"run_dir={run}", "wandb=false"]))
    # the LCM sampler has no eta (no eta in the key); w reaches the student through its w-embedding
    assert sorted(new) == sorted(f"eval/{m}@{k}/g1" for m in ("ode_error", "swd") for k in (2, 4))
    for key in ("eval/ode_error@2", "eval/ode_error@4"):
        assert new[f"{key}/g1"] == pytest.approx(before[key], rel=1e-6)
    with pytest.raises(ConfigError, match="guidance_scale: students with a w-embedding"):
        evaluate(compose_app("evaluate", [f"run_dir={run}", "guidance_scale=1.5", "wandb=false"]))
    with pytest.raises(ConfigError, match="eta: the run's sampler LCMSampler has no eta"):
        evaluate(compose_app("evaluate", [f"run_dir={run}", "eta=0.2", "wandb=false"]))


@pytest.mark.slow
def test_digits_guidance_and_schedule_grid_with_teacher_fidelity(tmp_path, cache_dir):
    """A grid over guidance scale and schedule with the digits_fidelity metrics. At K = 2 and 4 (N = 50) the
    non-equidistant timesteps are the equidistant ones, so those settings collapse (recorded once, without /noneq).

    Measured (smoke student of a 20-step teacher, 100 samples): fid 68-117 and class_acc 0.07-0.09 (the teacher draws
    no digits yet), fid_teacher 21.6 / 14.7 at 2 steps and 8.6 / 4.3 at 4 steps (g1 / g2), kid/teacher 70 / 51 and
    20 / 9.4. Bounds: fid in (40, 400), class_acc below 0.3, fid_teacher in (1, 60), kid/teacher in (2, 200), and the
    4-step student closer to the teacher's own samples than the 2-step one (both measures)."""
    run = train(tmp_path / "digits_run", cache_dir, *DIGITS)
    res = run_cli(["-m", "tdd_lab.evaluate", "-m", f"run_dir={run}", "steps=[2,4]", "guidance_scale=1,2",
                   "timestep_schedule=equidistant,nonequidistant", "metrics=digits_fidelity",
                   "run_overrides={metrics.metrics.members.digits.classifier_epochs:1}", "num_samples=100",
                   "batch_size=100"], ROOT, cache_dir)
    assert res.returncode == 0, res.stderr[-3000:]
    metrics = json.loads((run / "metrics.json").read_text())
    assert not [k for k in metrics if k.endswith("/noneq")]  # collapsed onto the equidistant settings
    bounds = {"fid": (40, 400), "class_acc": (-1e-9, 0.3), "fid_teacher": (1, 60), "kid/teacher": (2, 200)}
    for name, (lo, hi) in bounds.items():
        for k in (2, 4):
            for setting in ("eta0.2/g1", "eta0.2/g2"):
                key = f"eval/{name}@{k}/{setting}"
                assert lo < metrics[key] < hi, (key, metrics[key])
    for name in ("fid_teacher", "kid/teacher"):
        for g in ("g1", "g2"):
            assert metrics[f"eval/{name}@4/eta0.2/{g}"] < metrics[f"eval/{name}@2/eta0.2/{g}"], (name, g)
    assert metrics["eval/fid@4/eta0.2/g2"] != metrics["eval/fid@4/eta0.2/g1"]  # CFG post-tuning changes samples
    assert not list(run.glob("wandb/offline-run-*"))  # smoke runs log to CSV: no W&B run is made
    assert (run / "evaluate.csv").exists()
