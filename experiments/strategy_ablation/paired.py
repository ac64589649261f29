"""Seed-paired comparison of TDD against each other strategy in a sweep.

    python experiments/strategy_ablation/paired.py SWEEP_DIR METRIC [--reference tdd]

For every step count K: the mean over seeds of (reference - other) of ``eval/<METRIC>@K`` for runs with
the same seed (same student init, data stream and evaluation noise), and on how many seeds the
reference is better. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import re
import statistics
from collections import defaultdict
from pathlib import Path

from tdd_lab.report import better_low, load_runs


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("sweep_dir", type=Path)
    p.add_argument("metric", help="e.g. ode_error or fid")
    p.add_argument("--reference", default="tdd")
    args = p.parse_args(argv)
    by = defaultdict(dict)  # strategy -> seed -> metrics
    for r in load_runs(args.sweep_dir):
        by[r["overrides"]["strategy"]][r["overrides"]["seed"]] = r["metrics"]
    ks = sorted({int(m.group(1)) for ms in by[args.reference].values() for k in ms
                 if (m := re.fullmatch(rf"eval/{args.metric}@(\d+)", k))})
    low = better_low(args.metric)
    lines = [f"| {args.reference} - other, eval/{args.metric} | " + " | ".join(f"K={k}" for k in ks) + " |",
             "|" + "---|" * (len(ks) + 1)]
    for other in sorted(s for s in by if s != args.reference):
        cells = []
        for k in ks:
            key = f"eval/{args.metric}@{k}"
            seeds = sorted(set(by[args.reference]) & set(by[other]))
            diffs = [by[args.reference][s][key] - by[other][s][key] for s in seeds]
            wins = sum((d < 0) if low else (d > 0) for d in diffs)
            cells.append(f"{statistics.fmean(diffs):+.4g} ({args.reference} better on {wins}/{len(diffs)})")
        lines.append(f"| vs {other} | " + " | ".join(cells) + " |")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
