"""The ablation report over a sweep directory."""

import json

import pytest
import yaml

from tdd_lab.report import main


def fake_sweep(root):
    values = {("tdd", 0): 2.0, ("tdd", 1): 4.0, ("lcm", 0): 6.0, ("lcm", 1): 8.0}
    for i, ((strategy, seed), fid) in enumerate(values.items()):
        run = root / str(i)
        (run / ".hydra").mkdir(parents=True)
        (run / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump([f"strategy={strategy}", f"seed={seed}",
                                                                       "debug=smoke", "hydra.verbose=false"]))
        (run / "metrics.json").write_text(json.dumps({"eval/fid@2": fid * 2, "eval/fid@4": fid,
                                                      "eval/class_acc@4": 0.9, "teacher/fid@4": 9.0}))


def test_report_tables_and_plots(tmp_path, capsys):
    fake_sweep(tmp_path)
    assert main([str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "| strategy=tdd | 2 | 0.9 ± 0 | **6 ± 2.8** | **3 ± 1.4** | 9 ± 0 |" in out  # mean ± std over 2 seeds, best bold
    assert "| strategy=lcm | 2 | 0.9 ± 0 | 14 ± 2.8 | 7 ± 1.4 | 9 ± 0 |" in out
    rows = (tmp_path / "ablation.csv").read_text().splitlines()
    assert rows[0].startswith("run,seed,strategy,") and len(rows) == 5
    assert (tmp_path / "ablation.md").exists() and (tmp_path / "ablation_eval_fid.png").exists()


def test_report_errors(tmp_path, capsys):
    assert main([str(tmp_path / "missing")]) == 2
    assert main([str(tmp_path)]) == 2
    assert "no run with a metrics.json" in capsys.readouterr().err


def test_report_plots_metric_against_guidance_scale(tmp_path, capsys):
    """Keys written by `python -m tdd_lab.evaluate` feed the FID-vs-guidance-scale plot."""
    from tdd_lab.report import guidance_curves

    for i, strategy in enumerate(["tdd", "lcm"]):
        run = tmp_path / str(i)
        (run / ".hydra").mkdir(parents=True)
        (run / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump([f"strategy={strategy}"]))
        offset = 0.0 if strategy == "tdd" else 5.0
        grid = {f"eval/fid@4/eta0.2/g{g:g}": offset + (g - 2.0) ** 2 for g in (1.0, 1.5, 2.0, 3.0)}
        grid["eval/fid@4/eta0.2/g1/noneq"] = offset + 7.0
        (run / "metrics.json").write_text(json.dumps({"eval/fid@4": offset + 1.0, **grid}))
    assert main([str(tmp_path)]) == 0
    assert "eval/fid@4/eta0.2/g1.5" in capsys.readouterr().out
    from tdd_lab.report import build_tables, load_runs

    _, _, groups = build_tables(load_runs(tmp_path))
    curves = guidance_curves(groups)
    assert curves["eval/fid@4"]["strategy=tdd [eta0.2]"] == {1.0: 1.0, 1.5: 0.25, 2.0: 0.0, 3.0: 1.0}
    assert curves["eval/fid@4"]["strategy=lcm [eta0.2/noneq]"] == {1.0: 12.0}
    assert (tmp_path / "ablation_guidance_eval_fid_at4.png").exists()
    assert "ablation_guidance_eval_fid_at4.png" in (tmp_path / "ablation.md").read_text()


def test_unreadable_run_is_skipped_with_a_warning(tmp_path, capsys):
    fake_sweep(tmp_path)
    (tmp_path / "1" / "metrics.json").write_text('{"eval/fid@2": 8.0, "eval/fid@4": ')  # truncated mid-write
    assert main([str(tmp_path)]) == 0
    captured = capsys.readouterr()
    warnings = [ln for ln in captured.err.splitlines() if ln.startswith("warning:")]
    assert len(warnings) == 1 and warnings[0].startswith("warning: skipping run 1: ")
    assert str(tmp_path / "1" / "metrics.json") in warnings[0] and "not valid JSON" in warnings[0]
    assert "| strategy=tdd | 1 | 0.9 | **4** | **2** | 9 |" in captured.out  # the other tdd seed alone
    assert "1 unreadable run(s) skipped" in (tmp_path / "ablation.md").read_text()


def test_columns_sort_by_step_count_numerically(tmp_path, capsys):
    run = tmp_path / "0"
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(["seed=0"]))
    (run / "metrics.json").write_text(json.dumps({f"eval/fid@{k}": float(k) for k in (10, 2, 4)}
                                                 | {"eval/fid@4/eta0.2/g1.5": 1.0, "teacher/fid@50": 3.0}))
    assert main([str(tmp_path)]) == 0
    header = capsys.readouterr().out.splitlines()[0]
    assert header == "| setting | runs | eval/fid@2 | eval/fid@4 | eval/fid@4/eta0.2/g1.5 | eval/fid@10 | teacher/fid@50 |"


def test_step_plot_shows_spread_over_seeds_and_the_teacher(tmp_path, monkeypatch):
    """Each setting's line carries its std over seeds as error bars; the teacher's own curve is drawn dashed."""
    from tdd_lab import report

    fake_sweep(tmp_path)
    for i in range(4):  # the teacher's 10-step reference run, recorded by every run
        path = tmp_path / str(i) / "metrics.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), "teacher/fid@2": 12.0, "teacher/fid@10": 7.0}))
    drawn = {}
    real = report.line_plot
    monkeypatch.setattr(report, "line_plot", lambda path, lines, *a, **kw: drawn.update(
        {path.name: (lines, kw)}) or real(path, lines, *a, **kw))
    assert main([str(tmp_path)]) == 0
    lines, kw = drawn["ablation_eval_fid.png"]
    assert lines["strategy=tdd"] == ([2, 4], [6.0, 3.0]) and lines["strategy=lcm"] == ([2, 4], [14.0, 7.0])
    assert kw["yerr"]["strategy=tdd"] == pytest.approx([2 * 2 ** 0.5, 2 ** 0.5])  # std of (4, 8) and (2, 4)
    assert kw["dashed"] == {"teacher (same sampler)": ([2, 4], [12.0, 9.0])}
    assert kw["hlines"] == {"teacher 10 steps (reference)": 7.0}
    assert (tmp_path / "ablation_eval_fid.png").stat().st_size > 10_000


# ---- learning curves (validation.json of each run) --------------------------------------------------------
def fake_curves(root, with_metrics=True):
    """Two settings x two seeds; seed 1 of lcm stopped early (no step 20). val/fid@4 = base - step / 10 + seed."""
    base = {"tdd": 5.0, "lcm": 9.0}
    for i, (strategy, seed) in enumerate([("tdd", 0), ("tdd", 1), ("lcm", 0), ("lcm", 1)]):
        run = root / str(i)
        (run / ".hydra").mkdir(parents=True)
        (run / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump([f"strategy={strategy}", f"seed={seed}"]))
        steps = (0, 10) if (strategy, seed) == ("lcm", 1) else (0, 10, 20)
        (run / "validation.json").write_text(json.dumps({str(s): {"val/fid@4": base[strategy] - s / 10 + seed,
                                                                  "val/seconds": 0.5} for s in steps}))
        if with_metrics:
            (run / "metrics.json").write_text(json.dumps({"eval/fid@4": base[strategy] - 2}))


def test_curves_mean_and_spread_over_seeds(tmp_path, capsys):
    from tdd_lab.report import curve_stats, load_curve_runs

    fake_curves(tmp_path)
    stats = curve_stats(load_curve_runs(tmp_path))
    assert list(stats) == ["val/fid@4"]  # val/seconds is no curve
    tdd, lcm = stats["val/fid@4"]["strategy=tdd"], stats["val/fid@4"]["strategy=lcm"]
    assert tdd == {"steps": [0, 10, 20], "mean": [5.5, 4.5, 3.5], "std": pytest.approx([0.5 ** 0.5] * 3), "runs": 2}
    assert lcm["steps"] == [0, 10, 20] and lcm["mean"] == [9.5, 8.5, 7.0]  # step 20: seed 0 alone
    assert lcm["std"][2] == 0.0


def test_sweep_report_draws_curves_and_the_cli_compares_to_a_reference(tmp_path, capsys, monkeypatch):
    """The sweep report writes curves.json and a plot per val metric; `--curves DIR --reference curves.json` draws
    the reference dashed, for a single unfinished run (no metrics.json yet) too."""
    from tdd_lab import report

    sweep = tmp_path / "sweep"
    fake_curves(sweep)
    assert main([str(sweep)]) == 0
    assert (sweep / "curves_val_fid_at4.png").stat().st_size > 10_000
    assert "curves_val_fid_at4.png" in (sweep / "ablation.md").read_text()
    reference = json.loads((sweep / "curves.json").read_text())
    assert reference["val/fid@4"]["strategy=tdd"]["mean"] == [5.5, 4.5, 3.5]

    run = tmp_path / "mine"
    run.mkdir()
    (run / "validation.json").write_text(json.dumps({"0": {"val/fid@4": 6.0}, "10": {"val/fid@4": 5.0}}))
    drawn = {}
    real = report.curve_plot
    monkeypatch.setattr(report, "curve_plot", lambda path, curves, ylabel, ref=None: drawn.update(
        {path.name: (curves, ref)}) or real(path, curves, ylabel, ref))
    capsys.readouterr()
    assert main(["--curves", str(run), "--reference", str(sweep / "curves.json")]) == 0
    curves, ref = drawn["curves_val_fid_at4.png"]
    assert curves == {"all": {"steps": [0, 10], "mean": [6.0, 5.0], "std": [0.0, 0.0], "runs": 1}}
    assert ref == reference["val/fid@4"]
    assert "| val/fid@4 | all | 1 | 10 | 5 |" in capsys.readouterr().out
    assert (run / "curves.md").exists() and (run / "curves_val_fid_at4.png").exists()


def test_curves_errors(tmp_path, capsys):
    assert main(["--curves", str(tmp_path)]) == 2
    assert "no run with a validation.json" in capsys.readouterr().err
    fake_curves(tmp_path, with_metrics=False)
    (tmp_path / "bad.json").write_text(json.dumps({"val/fid@4": {"all": {"steps": [0], "mean": []}}}))
    assert main(["--curves", str(tmp_path), "--reference", str(tmp_path / "bad.json")]) == 2
    assert "expected {metric: {setting: {steps, mean, std}}}" in capsys.readouterr().err
    (tmp_path / "3" / "validation.json").write_text('{"0": {"val/fid@4": ')  # being written
    assert main(["--curves", str(tmp_path)]) == 0
    assert "warning: skipping the curve of run 3" in capsys.readouterr().err
