"""Table 2 of the strategy study: decoupled vs fixed guidance under the composed-scale post-tuning test.

    python experiments/strategy_study/table_guidance.py TEACHER [--out FILE.md]

Reads RUN/study_eval.json's ``guidance/g<g>`` entries (extra_eval.py): the student sampled with CFG g on itself,
scored against the teacher guided at w' = g (1 + w) - 1. A student whose guidance scale is post-tunable tracks
the teacher at every g; one that is not drifts away from it as g leaves 1. Rows: arm x g; columns: step counts;
then paired differences decoupled minus fixed at each g (same seeds, same noise). Also writes
guidance_<TEACHER>_<metric>.png (metric vs g, mean ± sd over seeds, per arm and K).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from arms import ARMS, TEACHERS  # noqa: E402
from tables import fmt_paired, mean_sd, paired, runs_of, write  # noqa: E402


def load(teacher: str, arms: list[str]):
    """values[arm][g][metric@K][seed]"""
    values = defaultdict(lambda: defaultdict(lambda: defaultdict(dict)))
    for arm in arms:
        for seed, _, d in runs_of(teacher, arm):
            f = d / "study_eval.json"
            if not f.exists():
                continue
            for key, entry in json.loads(f.read_text()).items():
                if key.startswith("guidance/"):
                    for k, v in entry.items():
                        if k.startswith("eval/"):
                            values[arm][entry["g"]][k[5:]][seed] = v
    return values


def plot(values, metric: str, steps: list[int], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(steps), figsize=(3.6 * len(steps), 3.2), dpi=100, squeeze=False)
    for ax, k in zip(axes[0], steps):
        for arm, color in zip(values, ("C0", "C3", "C2", "C1")):
            gs = sorted(values[arm])
            ys = [list(values[arm][g].get(f"{metric}@{k}", {}).values()) for g in gs]
            m = [statistics.fmean(y) if y else float("nan") for y in ys]
            s = [statistics.stdev(y) if len(y) > 1 else 0.0 for y in ys]
            ax.errorbar(gs, m, yerr=s, marker="o", color=color, capsize=3, label=ARMS[arm].label)
        ax.set_title(f"K = {k}")
        ax.set_xlabel("student CFG g (teacher at g(1+w)-1)")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("teacher", choices=sorted(TEACHERS))
    p.add_argument("--arms", nargs=2, default=["tdd", "tdd_fixed"], help="the decoupled arm, then the fixed arm")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    t = TEACHERS[args.teacher]
    values = load(t.name, args.arms)
    metrics = [t.primary] + (["ode_error"] if t.name == "gmm2d" else [])
    steps = [k for k in t.steps if k >= 4]
    parts = [f"## {t.name}: guidance post-tuning against the composed-scale teacher\n"]
    for metric in metrics:
        parts.append(f"### {metric} (student at CFG g vs teacher at g(1+w)-1), mean ± sd over seeds\n")
        parts.append("| arm | g | n | " + " | ".join(f"K={k}" for k in steps) + " |")
        parts.append("|" + "---|" * (len(steps) + 3))
        for arm in args.arms:
            for g in sorted(values[arm]):
                v = values[arm][g]
                n = max((len(x) for x in v.values()), default=0)
                parts.append(f"| {ARMS[arm].label} | {g:g} | {n} | "
                             + " | ".join(mean_sd(list(v.get(f"{metric}@{k}", {}).values())) for k in steps) + " |")
        dec, fix = args.arms
        parts.append(f"\n{ARMS[dec].label} minus {ARMS[fix].label}, {metric}: mean [95% t-interval] wins/n\n")
        parts.append("| g | " + " | ".join(f"K={k}" for k in steps) + " |")
        parts.append("|" + "---|" * (len(steps) + 1))
        for g in sorted(set(values[dec]) & set(values[fix])):
            parts.append(f"| {g:g} | " + " | ".join(
                fmt_paired(paired(values[dec][g].get(f"{metric}@{k}", {}), values[fix][g].get(f"{metric}@{k}", {})))
                for k in steps) + " |")
        png = HERE / f"guidance_{t.name}_{metric}.png"
        plot(values, metric, steps, png)
        parts.append(f"\n![{metric} vs g]({png.name})\n")
    return write(parts, args.out or HERE / f"table_guidance_{t.name}.md")


if __name__ == "__main__":
    raise SystemExit(main())
