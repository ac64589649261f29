"""Shared loading and statistics of the strategy study's tables (used by table_*.py and plot_curves.py).

A *row* is one method sampled one way (an arm's designed sampler, or one of its extra samplers); its values
are per seed, so two rows pair on the seeds both have (same training seed = same init, data stream and
evaluation noise).
"""

from __future__ import annotations

import json
import math
import re
import statistics
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from arms import ARMS, TEACHERS  # noqa: E402
from run import RUNS, lr_choice, lr_of  # noqa: E402

SEED_RE = re.compile(r"lr(?P<lr>[^_]+)_seed(?P<seed>\d+)$")


@dataclass
class Row:
    key: str                         # arm or arm/extra
    label: str                       # method, as the table shows it
    sampler: str                     # sampler, as the table shows it
    deterministic: bool              # eta 0 (ode_error is a per-sample distance only then)
    values: dict[str, dict[int, float]] = field(default_factory=lambda: defaultdict(dict))  # metric@K -> seed -> v
    lrs: set = field(default_factory=set)


def runs_of(teacher: str, arm: str, phase: str = "main") -> list[tuple[int, float, Path]]:
    """Finished runs of an arm as (seed, lr, dir). Main phase: only the arm's lr (its sweep's winner, else the
    recipe's), so runs left from an earlier lr (before the arm's sweep) never mix into its rows."""
    want = lr_of(teacher, arm, lr_choice(teacher)) if phase == "main" else None
    out = []
    for d in sorted((RUNS / teacher / phase / arm).glob("lr*_seed*")):
        m = SEED_RE.search(d.name)
        if m and (d / "metrics.json").exists() and (want is None or math.isclose(float(m["lr"]), want)):
            out.append((int(m["seed"]), float(m["lr"]), d))
    return out


def _is_det(arm: str, overrides: dict | None) -> bool:
    if overrides is not None:
        return float(overrides.get("eta", 1.0)) == 0.0
    return "sampler.eta=0.0" in ARMS[arm].overrides


def load_rows(teacher: str, pcm_merged: bool = True) -> dict[str, Row]:
    """Rows of the main phase: each arm's designed sampler, then its extra samplers; PCM's per-K models merged
    into one row (``pcm``: the K-phase model at K steps)."""
    rows: dict[str, Row] = {}
    for arm_name in TEACHERS[teacher].all_arms:
        arm = ARMS[arm_name]
        pcm = pcm_merged and arm_name.startswith("pcm")
        key = "pcm" if pcm else arm_name
        row = rows.setdefault(key, Row(key, "PCM (one model per K, K phases)" if pcm else arm.label,
                                       arm.sampler_label, _is_det(arm_name, None)))
        for seed, lr, d in runs_of(teacher, arm_name):
            row.lrs.add(lr)
            for k, v in json.loads((d / "metrics.json").read_text()).items():
                if k.startswith("eval/"):
                    name, _, steps = k[5:].partition("@")
                    if steps.isdigit():
                        row.values[f"{name}@{steps}"][seed] = v
            extra_file = d / "study_eval.json"
            extras = json.loads(extra_file.read_text()) if extra_file.exists() else {}
            for extra in arm.extras:
                r = rows.setdefault(f"{arm_name}/{extra.name}",
                                    Row(f"{arm_name}/{extra.name}", arm.label, extra.name, _is_det(arm_name, extra.overrides)))
                r.lrs.add(lr)
                for k, v in extras.get(f"sampler/{extra.name}", {}).items():
                    if k.startswith("eval/") and "@" in k:
                        r.values[k[5:]][seed] = v
    return {k: r for k, r in rows.items() if r.values}


def teacher_numbers(teacher: str) -> dict[str, float]:
    """``teacher/<metric>@50`` (the 50-step reference sampler) from any run: the floor of the fidelity metrics."""
    for arm in TEACHERS[teacher].all_arms:
        for _, _, d in runs_of(teacher, arm):
            m = json.loads((d / "metrics.json").read_text())
            return {k: v for k, v in m.items() if k.startswith("teacher/") and k.endswith("@50")}
    return {}


def t_crit(n: int) -> float:
    """Two-sided 95% Student-t critical value for n - 1 degrees of freedom."""
    from scipy.stats import t

    return float(t.ppf(0.975, n - 1))


def mean_sd(values: list[float]) -> str:
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.4f} (n=1)"
    return f"{statistics.fmean(values):.4f} ± {statistics.stdev(values):.4f}"


def paired(a: dict[int, float], b: dict[int, float]) -> dict | None:
    """Paired difference a - b over the seeds both have: mean, 95% t-interval, wins of a (a < b) out of n."""
    seeds = sorted(set(a) & set(b))
    if len(seeds) < 2:
        return None
    d = [a[s] - b[s] for s in seeds]
    m, sd = statistics.fmean(d), statistics.stdev(d)
    half = t_crit(len(d)) * sd / math.sqrt(len(d))
    return {"mean": m, "lo": m - half, "hi": m + half, "wins": sum(x < 0 for x in d), "n": len(d)}


def fmt_paired(p: dict | None) -> str:
    if p is None:
        return "–"
    sig = " *" if p["lo"] > 0 or p["hi"] < 0 else ""  # an interval touching 0 (e.g. all-equal seeds) is no evidence
    return f"{p['mean']:+.4f} [{p['lo']:+.4f}, {p['hi']:+.4f}] {p['wins']}/{p['n']}{sig}"


def layout(rows: dict[str, Row], metric: str, steps: list[int], only_det: bool = False) -> str:
    """The paper's layout: rows = methods (and samplers), columns = step counts; mean ± sd over seeds (n)."""
    head = "| method | sampler | lr | n | " + " | ".join(f"K={k}" for k in steps) + " |"
    lines = [head, "|" + "---|" * (len(steps) + 4)]
    for r in rows.values():
        if only_det and not r.deterministic:
            continue
        cells = [mean_sd(list(r.values.get(f"{metric}@{k}", {}).values())) for k in steps]
        if all(c == "–" for c in cells):
            continue
        n = max(len(v) for v in r.values.values())
        lines.append(f"| {r.label} | {r.sampler} | {', '.join(f'{x:g}' for x in sorted(r.lrs))} | {n} | "
                     + " | ".join(cells) + " |")
    return "\n".join(lines)


def paired_table(rows: dict[str, Row], ref: str, others: list[str], metric: str, steps: list[int]) -> str:
    """``ref - other`` per K: mean [95% CI] wins-of-ref/n (negative = ref closer to the teacher; * = CI excludes 0)."""
    r = rows[ref]
    lines = [f"| {r.label} ({r.sampler}) minus | " + " | ".join(f"K={k}" for k in steps) + " |",
             "|" + "---|" * (len(steps) + 1)]
    for o in others:
        if o not in rows:
            continue
        other = rows[o]
        cells = [fmt_paired(paired(r.values.get(f"{metric}@{k}", {}), other.values.get(f"{metric}@{k}", {})))
                 for k in steps]
        lines.append(f"| {other.label} ({other.sampler}) | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write(parts: list[str], out) -> int:
    """Join a table script's parts, write them to ``out`` and print them."""
    text = "\n".join(parts) + "\n"
    Path(out).write_text(text)
    print(text)
    return 0
