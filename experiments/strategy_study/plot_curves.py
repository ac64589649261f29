"""Learning curves of the strategy study: val/<metric>@K vs training step, per arm: mean over seeds,
shaded from the lowest to the highest seed (a range stays positive on the log axis, where mean - sd would not).

    python experiments/strategy_study/plot_curves.py TEACHER [--metric swd] [--phase main|lr]

The curves are the in-training validation (tdd_lab.callbacks.validation: a fixed 200-sample set with its own
noise seed 10000, the run's designed sampler), so they show whether a budget is where the curves have
flattened. Writes curves_<TEACHER>_<metric>.png (one panel per step count; PCM's K-phase model in panel K only)
and prints the tail means (last four points) per arm and K. ``--phase lr``: one curve per (arm, lr) of the sweep.
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
from tables import runs_of  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("teacher", choices=sorted(TEACHERS))
    p.add_argument("--metric", default=None, help="default: the teacher's primary fidelity metric")
    p.add_argument("--phase", default="main", choices=["main", "lr"])
    args = p.parse_args(argv)
    t = TEACHERS[args.teacher]
    metric = args.metric or t.primary
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = list(t.steps)
    fig, axes = plt.subplots(1, len(steps), figsize=(3.8 * len(steps), 3.4), dpi=100, squeeze=False)
    curves = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))  # curve -> K -> step -> [values]
    for arm in t.all_arms:
        for _seed, lr, d in runs_of(t.name, arm, args.phase):
            f = d / "validation.json"
            if not f.exists():
                continue
            name = ARMS[arm].label if args.phase == "main" else f"{arm} lr {lr:g}"
            if arm.startswith("pcm") and args.phase == "main":
                name = "PCM (one model per K)"
            for step, vals in json.loads(f.read_text()).items():
                for k in steps:
                    v = vals.get(f"val/{metric}@{k}")
                    if v is not None:
                        curves[name][k][int(step)].append(v)
    print(f"tail mean (last 4 validation points) of val/{metric}@K, mean over seeds:")
    for i, (name, per_k) in enumerate(sorted(curves.items())):
        color = f"C{i % 10}"
        tails = {}
        for ax, k in zip(axes[0], steps):
            if k not in per_k:
                continue
            xs = sorted(per_k[k])
            m = [statistics.fmean(per_k[k][x]) for x in xs]
            lo = [min(per_k[k][x]) for x in xs]
            hi = [max(per_k[k][x]) for x in xs]
            ax.plot(xs, m, color=color, label=name, lw=1.2)
            ax.fill_between(xs, lo, hi, color=color, alpha=0.15)
            tails[k] = statistics.fmean(m[-4:])
        print(f"  {name}: " + ", ".join(f"K={k}: {v:.4f}" for k, v in tails.items()))
    for ax, k in zip(axes[0], steps):
        ax.set_title(f"K = {k}")
        ax.set_xlabel("training step")
        ax.set_ylabel(f"val/{metric}@{k}")
        ax.set_yscale("log")
        ax.grid(alpha=0.3, which="both")
    # one legend for the figure: an arm evaluated at some K only (PCM's per-K models) still gets its entry
    handles = {}
    for ax in axes[0]:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(lab, h)
    fig.legend(list(handles.values()), list(handles), loc="lower center", ncol=min(len(handles), 5), fontsize=7)
    fig.tight_layout(rect=(0, 0.1 + 0.04 * ((len(handles) - 1) // 5), 1, 1))
    out = HERE / f"curves_{t.name}_{metric}{'' if args.phase == 'main' else '_lr'}.png"
    fig.savefig(out)
    print(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
