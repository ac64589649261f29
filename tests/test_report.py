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
