"""The ablation report over a sweep directory."""

import json

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
