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
                kind = {"guidance": arm, "guidance_control": f"{arm}@1"}.get(key.split("/")[0])
                if kind is None:
                    continue
                for k, v in entry.items():
                    if k.startswith("eval/"):
                        values[kind][entry["g"]][k[5:]][seed] = v
                        if kind == arm and entry["g"] == 1.0:  # the control at g = 1 is the run itself
                            values[f"{arm}@1"][1.0][k[5:]][seed] = v
    return values


def label(arm: str) -> str:
    """``tdd`` -> its label at CFG g; ``tdd@1`` -> the control (the same student left at CFG 1)."""
    name, _, control = arm.partition("@")
    return ARMS[name].label + (" at CFG 1 (control)" if control else " at CFG g")


def plot(values, metric: str, steps: list[int], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(steps), figsize=(3.6 * len(steps), 3.2), dpi=100, squeeze=False)
    for ax, k in zip(axes[0], steps):
        bases = sorted({a.partition("@")[0] for a in values})
        for arm in values:
            color = f"C{bases.index(arm.partition('@')[0]) * 3}"
            gs = sorted(values[arm])
            ys = [list(values[arm][g].get(f"{metric}@{k}", {}).values()) for g in gs]
            m = [statistics.fmean(y) if y else float("nan") for y in ys]
            s = [statistics.stdev(y) if len(y) > 1 else 0.0 for y in ys]
            ax.errorbar(gs, m, yerr=s, marker="o", color=color, capsize=3, label=label(arm),
                        ls="--" if arm.endswith("@1") else "-")
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
    p.add_argument("--arms", nargs=2, default=None, help="the decoupled arm, then the fixed arm (default: the teacher's)")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    t = TEACHERS[args.teacher]
    args.arms = args.arms or list(t.guidance_arms)
    if len(args.arms) != 2:
        print(f"{t.name}: no guidance arms (the composed-scale test was not run on this teacher)")
        return 0
    values = load(t.name, args.arms)
    # sampled at eta 0: gmm2d's ode_error is the per-sample distance to the composed-scale teacher's ODE solution
    metrics = ["ode_error", t.primary] if t.name == "gmm2d" else [t.primary]
    steps = [k for k in t.steps if k >= 4]
    parts = [f"## {t.name}: guidance post-tuning against the composed-scale teacher\n"]
    for metric in metrics:
        parts.append(f"### {metric} (student at CFG g vs teacher at g(1+w)-1), mean ± sd over seeds\n")
        parts.append("| arm | g | n | " + " | ".join(f"K={k}" for k in steps) + " |")
        parts.append("|" + "---|" * (len(steps) + 3))
        for arm in [a for x in args.arms for a in (x, f"{x}@1")]:
            for g in sorted(values[arm]):
                v = values[arm][g]
                n = max((len(x) for x in v.values()), default=0)
                parts.append(f"| {label(arm)} | {g:g} | {n} | "
                             + " | ".join(mean_sd(list(v.get(f"{metric}@{k}", {}).values())) for k in steps) + " |")
        dec, fix = args.arms
        for a, b, what in ((dec, fix, "decoupled vs fixed, both post-tuned to g"),
                           (dec, f"{dec}@1", "decoupled: post-tuned to g vs left at 1 (negative: post-tuning helps)"),
                           (fix, f"{fix}@1", "fixed: post-tuned to g vs left at 1 (negative: post-tuning helps)")):
            parts.append(f"\n{label(a)} minus {label(b)} ({what}), {metric}: mean [95% t-interval] wins/n\n")
            parts.append("| g | " + " | ".join(f"K={k}" for k in steps) + " |")
            parts.append("|" + "---|" * (len(steps) + 1))
            for g in sorted(set(values[a]) & set(values[b])):
                if g == 1.0 and b.endswith("@1"):
                    continue
                parts.append(f"| {g:g} | " + " | ".join(
                    fmt_paired(paired(values[a][g].get(f"{metric}@{k}", {}), values[b][g].get(f"{metric}@{k}", {})))
                    for k in steps) + " |")
        png = HERE / f"guidance_{t.name}_{metric}.png"
        plot(values, metric, steps, png)
        parts.append(f"\n![{metric} vs g]({png.name})\n")
    return write(parts, args.out or HERE / f"table_guidance_{t.name}.md")


if __name__ == "__main__":
    raise SystemExit(main())
