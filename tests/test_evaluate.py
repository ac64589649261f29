"""`python -m tdd_lab.evaluate` end to end on tiny gmm2d and digits runs."""

import csv
import json

import pytest

from .test_wandb_sweep import GMM, ROOT, offline_runs, run_cli

DIGITS = ["+experiment=tdd_digits", "debug=smoke", "teacher.train_steps=20", "teacher.batch_size=32",
          "metrics.metrics.classifier_epochs=1"]


@pytest.fixture(scope="module")
def gmm_run(tmp_path_factory, cache_dir):
    run = tmp_path_factory.mktemp("eval") / "gmm_run"
    res = run_cli(["-m", "tdd_lab.train", *GMM, "logger=wandb", f"hydra.run.dir={run}"], ROOT, cache_dir)
    assert res.returncode == 0, res.stderr[-3000:]
    return run


def test_grid_on_gmm2d_appends_keys_logs_csv_and_wandb(gmm_run, cache_dir):
    before = json.loads((gmm_run / "metrics.json").read_text())
    res = run_cli(["-m", "tdd_lab.evaluate", str(gmm_run), "--steps", "2", "4", "--eta", "0", "0.3",
                   "--guidance-scale", "1", "1.5", "--t-l", "-1", "1"], ROOT, cache_dir)
    assert res.returncode == 0, res.stderr[-3000:]
    after = json.loads((gmm_run / "metrics.json").read_text())
    assert {k: after[k] for k in before} == before  # appended, nothing lost
    new = sorted(set(after) - set(before))
    # ode_error is measured with deterministic samplers: the eta axis collapses to eta0
    settings = {"eta0/g1", "eta0/g1.5", "eta0/g1/tl1", "eta0/g1.5/tl1"}
    assert new == sorted(f"eval/{m}@{k}/{s}" for m in ("ode_error", "swd") for k in (2, 4) for s in settings)
    # the exported student from the same noise reproduces training's own evaluation
    for key in ("eval/ode_error@2", "eval/ode_error@4", "eval/swd@4"):
        assert after[f"{key}/eta0/g1"] == pytest.approx(before[key], rel=1e-6)
    assert after["eval/ode_error@4/eta0/g1.5"] != after["eval/ode_error@4/eta0/g1"]
    assert after["eval/ode_error@4/eta0/g1/tl1"] != after["eval/ode_error@4/eta0/g1"]  # x0 clipping acts
    rows = list(csv.DictReader(open(gmm_run / "evaluate.csv")))
    assert len(rows) == len(new) and {r["key"] for r in rows} == set(new)
    assert "| eta0/g1.5/tl1 |" in res.stdout
    train_run, eval_run = offline_runs(gmm_run)
    assert eval_run["job_type"] == "evaluate" and eval_run["group"] == train_run["group"] == "gmm_run"
    assert {k: eval_run["summary"][k] for k in new} == {k: after[k] for k in new}


def test_bad_inputs_exit_2(gmm_run, tmp_path, cache_dir, capsys):
    from tdd_lab.evaluate import main

    cases = [
        ([str(tmp_path / "missing")], "does not exist"),
        ([str(tmp_path)], "config.yaml not found"),
        ([str(gmm_run), "--bogus"], "unrecognized arguments"),
        ([str(gmm_run), "--timestep-schedule", "cosine"], "invalid choice"),
        ([str(gmm_run), "--metrics", "nope"], "unknown option 'nope'"),
        ([str(gmm_run), "--eta", "1.5"], "sampler.eta"),
        ([str(gmm_run), "--steps", "99"], "grid size"),
        ([str(gmm_run), "--set", "metrics.no_such_key=1"], "existing config key"),
    ]
    for args, message in cases:
        try:
            code = main(args)
        except SystemExit as e:  # argparse's own usage errors
            code = e.code
        err = capsys.readouterr().err
        assert code == 2 and message in err, (args, err[-2000:])
    res = run_cli(["-m", "tdd_lab.evaluate", str(tmp_path / "missing")], ROOT, cache_dir)  # and as a process
    assert res.returncode == 2 and res.stderr.startswith("error:") and "Traceback" not in res.stderr


@pytest.mark.slow
def test_digits_guidance_and_schedule_grid_with_teacher_fidelity(tmp_path, cache_dir):
    run = tmp_path / "digits_run"
    res = run_cli(["-m", "tdd_lab.train", *DIGITS, f"hydra.run.dir={run}"], ROOT, cache_dir)
    assert res.returncode == 0, res.stderr[-3000:]
    res = run_cli(["-m", "tdd_lab.evaluate", str(run), "--steps", "2", "4", "--guidance-scale", "1", "2",
                   "--timestep-schedule", "equidistant", "nonequidistant", "--metrics", "digits_fidelity",
                   "--set", "metrics.metrics.members.digits.classifier_epochs=1", "--num-samples", "100",
                   "--batch-size", "100"], ROOT, cache_dir)
    assert res.returncode == 0, res.stderr[-3000:]
    metrics = json.loads((run / "metrics.json").read_text())
    for name in ("fid", "class_acc", "fid_teacher", "kid/teacher"):
        for setting in ("eta0.2/g1", "eta0.2/g2", "eta0.2/g1/noneq", "eta0.2/g2/noneq"):
            value = metrics[f"eval/{name}@4/{setting}"]
            assert value == value and abs(value) < 1e6  # finite
    assert metrics["eval/fid_teacher@4/eta0.2/g1"] > 0
    assert metrics["eval/fid@4/eta0.2/g2"] != metrics["eval/fid@4/eta0.2/g1"]  # CFG post-tuning changes samples
    assert not list(run.glob("wandb/offline-run-*"))  # smoke runs log to CSV: no W&B run is made
    assert (run / "evaluate.csv").exists()
