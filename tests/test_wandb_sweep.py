"""A multirun sweep under W&B offline: runs share the sweep's group, carry the ablation axes, and the report
has a row per run."""

import json
import struct
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GMM = ["+experiment=tdd_gmm2d", "debug=smoke", "teacher.init_steps=20", "metrics.metrics.ode_steps=100"]


def run_cli(args, cwd, cache):
    env = {"TDD_LAB_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "PATH": "/usr/bin:/bin",
           "HOME": str(cwd), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def wandb_records(path: Path):
    """The protobuf records of an offline ``run-*.wandb`` file (W&B's LevelDB-style log: 32 KiB blocks)."""
    from wandb.proto import wandb_internal_pb2

    data, pos, buf = path.read_bytes(), 7, b""  # 7-byte file header ":W&B", magic, version
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:  # block trailer padding
            pos += 32768 - pos % 32768
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        chunk, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind == 0:
            continue
        buf = chunk if kind == 2 else buf + chunk  # 2 FIRST, 3 MIDDLE, 1 FULL, 4 LAST
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(buf)
            buf = b""
            yield record


def offline_runs(run_dir: Path) -> list[dict]:
    """[{"group", "job_type", "tags", "config", "summary"}] of the offline W&B runs below ``run_dir``."""
    out = []
    for f in sorted(run_dir.glob("wandb/offline-run-*/run-*.wandb")):
        info = {"config": {}, "summary": {}}
        for r in wandb_records(f):
            kind = r.WhichOneof("record_type")
            if kind == "run":
                info.update(group=r.run.run_group, job_type=r.run.job_type, tags=list(r.run.tags))
                info["config"].update({u.key: json.loads(u.value_json) for u in r.run.config.update})
            elif kind == "config":
                info["config"].update({u.key: json.loads(u.value_json) for u in r.config.update})
            elif kind == "summary":
                info["summary"].update({u.key: json.loads(u.value_json) for u in r.summary.update})
        out.append(info)
    return out


def test_multirun_shares_a_wandb_group_and_reports_a_row_per_run(tmp_path, cache_dir):
    sweep = tmp_path / "sweeps" / "strategy_smoke"
    res = run_cli(["-m", "tdd_lab.train", "-m", *GMM, "logger=wandb", "strategy=tcd,tdd", "sampler=tdd",
                   f"hydra.sweep.dir={sweep}"], ROOT, cache_dir)
    assert res.returncode == 0, res.stderr[-3000:]
    runs = {d.name: offline_runs(d) for d in sorted(sweep.iterdir()) if (d / "metrics.json").exists()}
    assert sorted(runs) == ["0", "1"] and all(len(r) == 1 for r in runs.values())  # one W&B run per job
    infos = [r[0] for r in runs.values()]
    assert {i["group"] for i in infos} == {"strategy_smoke"}  # the sweep dir's name
    assert "strategy:tcd" in infos[0]["tags"] and "strategy:tdd" in infos[1]["tags"]
    assert "TCDStrategy" in infos[0]["tags"] and "sampler:tdd" in infos[1]["tags"]
    assert infos[0]["config"]["ablation"]["strategy"] == "tcd" and infos[1]["config"]["classes"]["strategy"] == \
        "TDDStrategy"
    for name, (info,) in runs.items():  # summary keys = metrics.json keys
        metrics = json.loads((sweep / name / "metrics.json").read_text())
        assert {k: info["summary"][k] for k in metrics} == metrics
    res = run_cli(["-m", "tdd_lab.report", str(sweep)], ROOT, cache_dir)
    assert res.returncode == 0, res.stderr[-3000:]
    rows = (sweep / "ablation.csv").read_text().splitlines()
    assert len(rows) == 3 and rows[0].startswith("run,strategy,")
    assert "| strategy=tcd |" in res.stdout and "| strategy=tdd |" in res.stdout


def test_single_run_group_is_its_run_dir(tmp_path, cache_dir):
    run = tmp_path / "my_run"
    res = run_cli(["-m", "tdd_lab.train", *GMM, "logger=wandb", f"hydra.run.dir={run}"], ROOT, cache_dir)
    assert res.returncode == 0, res.stderr[-3000:]
    (info,) = offline_runs(run)
    assert info["group"] == "my_run" and info["job_type"] == "train" and "smoke" in info["tags"]
