"""Guidance-scale post-tuning of trained students: re-run only the evaluation of exported students.

    python experiments/strategy_ablation/post_tune.py OUT_NAME ARM=GLOB [ARM=GLOB ...] [--scales 1 1.5 2 3]

Each ``ARM=GLOB`` names the run dirs (one per seed) of one training arm, e.g.
``decoupled=experiments/strategy_ablation/runs/gmm2d/main/*`` filtered to strategy=tdd with ``--where``.
For every run and CFG scale g the exported student (``tdd_lab.export.load_student``) is sampled with
CFG g on itself (``Guidance.student_sampling``; the run's own sampler, evaluation seeds and metrics,
from its ``.hydra/config.yaml``) and scored by ``tdd_lab.evaluation.Evaluator``. At g = 1 this
reproduces the run's own ``metrics.json`` (checked, printed as ``check``). Writes
``OUT_NAME.csv`` (one row per run and g), ``OUT_NAME.md`` (mean ± std over seeds) and
``OUT_NAME_<metric>.png`` (metric vs g per arm and step count) into ``--out-dir`` (default: next to
this script).
"""

from __future__ import annotations

import argparse
import csv
import glob
import json
import statistics
import time
from collections import defaultdict
from pathlib import Path

import hydra
import torch
from omegaconf import OmegaConf

from tdd_lab.evaluation import Evaluator
from tdd_lab.export import load_student

HERE = Path(__file__).resolve().parent


def run_dirs(pattern: str, where: dict[str, str]) -> list[Path]:
    """Run dirs matching ``pattern`` whose Hydra overrides contain every ``key=value`` of ``where``."""
    out = []
    for d in sorted(Path(p) for p in glob.glob(pattern)):
        ov = d / ".hydra" / "overrides.yaml"
        if not (d / "metrics.json").exists() or not ov.exists():
            continue
        items = {o.lstrip("+").split("=", 1)[0]: o.split("=", 1)[1] for o in OmegaConf.load(ov)}
        if all(items.get(k) == v for k, v in where.items()):
            out.append(d)
    return out


@torch.no_grad()
def evaluate_run(run_dir: Path, scales: list[float]) -> list[dict]:
    """Metrics of one run's exported student at every CFG scale in ``scales``."""
    cfg = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
    inst = hydra.utils.instantiate
    teacher, guidance, sampler = inst(cfg.teacher), inst(cfg.guidance), inst(cfg.sampler)
    evaluator: Evaluator = inst(cfg.metrics, progress=False)
    student = load_student(run_dir)
    recorded = json.loads((run_dir / "metrics.json").read_text())
    seed = OmegaConf.select(cfg, "seed")
    rows = []
    for g in scales:
        evaluator.guidance_scale = g
        start = time.perf_counter()
        metrics, _ = evaluator.evaluate_student(student.denoiser, teacher, guidance, sampler, "cpu")
        row = {"run": str(run_dir), "seed": seed, "guidance_scale": g, **metrics}
        if g == 1.0:  # the export must reproduce the training run's own evaluation
            row["check"] = max(abs(v - recorded[k]) for k, v in metrics.items())
        rows.append(row)
        print(f"{run_dir} g={g}: " + ", ".join(f"{k}={v:.4g}" for k, v in metrics.items())
              + f" ({time.perf_counter() - start:.1f}s)" + (f" check={row['check']:.2g}" if "check" in row else ""),
              flush=True)
    return rows


def summarise(rows: list[dict], out: Path) -> str:
    metrics = sorted(k for k in rows[0] if k.startswith("eval/"))
    groups: dict[tuple, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        for m in metrics:
            groups[(r["arm"], r["guidance_scale"])][m].append(r[m])
    lines = ["| arm | g | runs | " + " | ".join(metrics) + " |", "|" + "---|" * (len(metrics) + 3)]
    for (arm, g), vals in groups.items():
        cells = [f"{statistics.fmean(v):.4g} ± {statistics.stdev(v):.2g}" if len(v) > 1 else f"{v[0]:.4g}"
                 for v in (vals[m] for m in metrics)]
        lines.append(f"| {arm} | {g:g} | {len(vals[metrics[0]])} | " + " | ".join(cells) + " |")
    plot(groups, metrics, out)
    return "\n".join(lines)


def plot(groups, metrics: list[str], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    families = defaultdict(list)
    for m in metrics:
        name, _, k = m.partition("@")
        families[name].append(int(k))
    arms = sorted({a for a, _ in groups})
    for fam, ks in families.items():
        fig, ax = plt.subplots(figsize=(5, 3.5), dpi=100)
        for arm, style in zip(arms, ("-", "--", ":", "-.")):
            for k, color in zip(sorted(ks), ("C0", "C1", "C2", "C3")):
                gs = sorted(g for a, g in groups if a == arm)
                ys = [statistics.fmean(groups[(arm, g)][f"{fam}@{k}"]) for g in gs]
                ax.plot(gs, ys, style, marker="o", color=color, label=f"{arm}, {k} steps")
        ax.set_xlabel("student CFG scale g")
        ax.set_ylabel(fam)
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(f"{out}_{fam.replace('/', '_')}.png")
        plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out_name")
    p.add_argument("arms", nargs="+", help="ARM=GLOB of run dirs")
    p.add_argument("--scales", nargs="+", type=float, default=[1.0, 1.5, 2.0, 3.0])
    p.add_argument("--where", nargs="*", default=[], help="key=value overrides a run must have")
    p.add_argument("--out-dir", type=Path, default=HERE)
    args = p.parse_args(argv)
    where = dict(w.split("=", 1) for w in args.where)
    rows = []
    for spec in args.arms:
        arm, _, pattern = spec.partition("=")
        dirs = run_dirs(pattern, where)
        if not dirs:
            raise SystemExit(f"error: no finished run matches {pattern} {where}")
        for d in dirs:
            rows += [{"arm": arm, **r} for r in evaluate_run(d, args.scales)]
    fields = list(dict.fromkeys(k for r in rows for k in r))
    out = args.out_dir / args.out_name
    with open(f"{out}.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    table = summarise(rows, out)
    Path(f"{out}.md").write_text(table + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
