"""Table 1 of the strategy study: methods x step counts (the paper's layout), fidelity first, with paired CIs.

    python experiments/strategy_study/table_strategies.py TEACHER [--out FILE.md]

Prints (and writes to --out, default experiments/strategy_study/table_strategies_<TEACHER>.md):
the lr chosen per arm; the primary fidelity metric per method and sampler; the deterministic rows' per-sample
metrics (gmm2d ode_error, digits teacher_rmse); the real-data metrics where the teacher has them; and paired
differences TDD minus each other row (and TDD with fixed guidance minus each baseline, which share guidance).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from arms import ARMS, TEACHERS  # noqa: E402
from tables import (  # noqa: E402
    fmt_paired,
    layout,
    load_rows,
    lr_choice,
    paired,
    paired_table,
    runs_of,
    teacher_numbers,
    write,
)

SECONDARY = {"gmm2d": [("ode_error", True)],
             "digits": [("teacher_rmse", True), ("kid/teacher", False), ("fid", False), ("class_acc", False)],
             "mnist_sdxl": [("fid", False), ("class_acc", False), ("color_acc", False)]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("teacher", choices=sorted(TEACHERS))
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    t = TEACHERS[args.teacher]
    rows = load_rows(t.name)
    steps = sorted({int(k.split("@")[1]) for r in rows.values() for k in r.values})
    parts = [f"## {t.name}: strategies x step counts\n"]
    choice = lr_choice(t.name)
    if not choice:
        parts.append(f"No lr sweep on this teacher: every arm at the recipe's lr {t.default_lr:g}\n")
    else:
        unswept = [a for a in t.all_arms if a not in choice and not ARMS[a].lr_from and runs_of(t.name, a)]
        parts.append("lr chosen per arm on the validation seed (" + ", ".join(
            f"{a}: {c['lr']:g} ({', '.join(f'{lr}: {s:.4f}' for lr, s in c['scores'].items())})"
            for a, c in choice.items()) + f"; metric: tail mean of {next(iter(choice.values()))['metric']})"
            + (f"; not swept, at the recipe's lr {t.default_lr:g}: {', '.join(unswept)}" if unswept else "") + "\n")
    teacher = teacher_numbers(t.name)
    parts.append("Teacher (50-step DDIM reference sampler, same noise): "
                 + ", ".join(f"{k} = {v:.4f}" for k, v in sorted(teacher.items())) + "\n")
    parts.append(f"### {t.primary} (fidelity to the teacher; lower is better), mean ± sd over seeds\n")
    parts.append(layout(rows, t.primary, steps))
    for metric, only_det in SECONDARY.get(t.name, []):
        if any(k.startswith(f"{metric}@") for r in rows.values() for k in r.values):
            note = " (deterministic samplers only: a per-sample distance)" if only_det else ""
            parts.append(f"\n### {metric}{note}\n")
            parts.append(layout(rows, metric, steps, only_det=only_det))
    ks = [k for k in steps if k in t.steps]
    parts.append(f"\n### Paired differences of {t.primary}: mean [95% t-interval] wins/n "
                 "(negative = the first row is closer to the teacher; * = the interval excludes 0)\n")
    others = [k for k in rows if k != "tdd"]
    if "tdd" in rows:
        parts.append(paired_table(rows, "tdd", others, t.primary, ks))
    if "tdd_fixed" in rows:
        parts.append("\nSame guidance (fixed, w = 3.5) for both sides: the target-timestep selection alone\n")
        parts.append(paired_table(rows, "tdd_fixed", [k for k in ("lcm", "lcm/gamma sampler (tdd, eta 0.2)", "pcm", "tcd")
                                                      if k in rows], t.primary, ks))
    if "tdd_s0" in rows and t.name == "gmm2d":
        parts.append("\nDeterministic rows, per-sample ode_error\n")
        parts.append(paired_table(rows, "tdd_s0", [k for k in ("pcm", "tdd/eta 0") if k in rows], "ode_error", ks))
    if t.name == "digits" and "tdd/eta 0" in rows and "pcm" in rows:
        for m in (t.primary, "teacher_rmse"):
            parts.append(f"\nDeterministic rows (eta 0), {m}\n")
            parts.append(paired_table(rows, "tdd/eta 0", ["pcm"], m, ks))
    # switches of the tdd arm (the public SDXL defect, the adversarial term): every metric, paired with tdd
    for switch in ("tdd_empty", "tdd_adv", "tdd_adv_hlr"):
        if "tdd" in rows and switch in rows:
            parts.append(f"\n### {rows['tdd'].label} minus {rows[switch].label}, every metric ({rows['tdd'].sampler}; "
                         "negative and wins = tdd lower; lower is better for the distances, higher for the accuracies)\n")
            metrics = [t.primary] + [m for m, det in SECONDARY.get(t.name, []) if not det]
            lines = ["| metric | " + " | ".join(f"K={k}" for k in ks) + " |", "|" + "---|" * (len(ks) + 1)]
            for m in metrics:
                lines.append(f"| {m} | " + " | ".join(
                    fmt_paired(paired(rows["tdd"].values.get(f"{m}@{k}", {}), rows[switch].values.get(f"{m}@{k}", {})))
                    for k in ks) + " |")
            parts.append("\n".join(lines))
    return write(parts, args.out or HERE / f"table_strategies_{t.name}.md")


if __name__ == "__main__":
    raise SystemExit(main())
