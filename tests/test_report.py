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
