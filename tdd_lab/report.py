"""Ablation report of a sweep: ``python -m tdd_lab.report SWEEP_DIR``.

Reads every run of a Hydra multirun (``SWEEP_DIR/*/metrics.json`` with ``.hydra/overrides.yaml``),
writes ``ablation.csv`` (one row per run: its varied settings and metrics), ``ablation.md`` (runs
grouped over seeds: mean +- std, best value per metric in bold; columns in numeric step order, @2 @4 @10),
plots of each metric against the step count, one line per setting with its spread over seeds (error bars:
std) and the teacher's own curve (``teacher/<metric>@K``, dashed; its reference run as a dotted line), and,
where ``python -m tdd_lab.evaluate`` swept the guidance scale (keys ``eval/<metric>@<K>/eta<e>/g<g>...``),
each metric against the guidance scale; prints the markdown table. A run whose ``metrics.json`` or
``overrides.yaml`` cannot be read is skipped with a warning naming it.

Learning curves: where runs validated during training (``validation.json``, ``validation.every_n_steps`` > 0), a plot
per ``val/<metric>@K`` against the training step, one line per setting (mean over seeds, std shaded), and
``curves.json`` with those curves. ``python -m tdd_lab.report --curves RUN_OR_SWEEP_DIR [--reference curves.json]``
draws only the curves, of finished and still-training runs, with a reference ``curves.json`` (e.g. a recipe's,
written by this report) dashed, so a run can be compared to the curve it should follow.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import re
import statistics
import sys
from collections import defaultdict
from pathlib import Path

import yaml

from tdd_lab.utils.cache import atomic_write_text

LOWER_IS_BETTER = ("fid", "kid", "ode_error", "swd", "loss", "rmse")


def better_low(metric: str) -> bool:
    return any(k in metric for k in LOWER_IS_BETTER)


def read_overrides(run_dir: Path) -> dict[str, str]:
    """{key: value} of a run's command-line overrides (``.hydra/overrides.yaml``; Hydra's own keys left out);
    ``ValueError`` naming the file when it cannot be read."""
    overrides = {}
    ov_file = run_dir / ".hydra" / "overrides.yaml"
    if ov_file.exists():
        try:
            items = yaml.safe_load(ov_file.read_text()) or []
        except yaml.YAMLError as e:
            raise ValueError(f"{ov_file}: not valid YAML ({str(e).splitlines()[0]})") from None
        for item in items:
            key, _, value = str(item).lstrip("+~").partition("=")
            if not key.startswith("hydra"):
                overrides[key] = value
    return overrides


def read_run(run_dir: Path) -> tuple[dict, dict]:
    """(overrides, metrics) of one run; ``ValueError`` naming the file when either cannot be read."""
    overrides = read_overrides(run_dir)
    mfile = run_dir / "metrics.json"
    try:
        metrics = json.loads(mfile.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{mfile}: not valid JSON ({e}); truncated or still being written?") from None
    if not isinstance(metrics, dict):
        raise ValueError(f"{mfile}: expected a JSON object of metrics, got {type(metrics).__name__}")
    return overrides, metrics


def load_runs(sweep_dir: Path) -> list[dict]:
    """[{"dir", "overrides": {key: value}, "metrics": {...}}] for every finished run below ``sweep_dir``; a run
    whose files cannot be read is skipped with a warning on stderr."""
    runs = []
    for mfile in sorted(sweep_dir.rglob("metrics.json")):
        run_dir = mfile.parent
        try:
            overrides, metrics = read_run(run_dir)
        except ValueError as e:
            print(f"warning: skipping run {run_dir.relative_to(sweep_dir)}: {e}", file=sys.stderr)
            continue
        runs.append({"dir": str(run_dir.relative_to(sweep_dir)), "overrides": overrides, "metrics": metrics})
    return runs


def metric_order(name: str) -> tuple:
    """Sort key of metric names: ``eval/fid@2`` < ``eval/fid@4`` < ``eval/fid@10`` (numeric step counts), then
    the setting suffix of evaluate's keys (``eval/fid@4/eta0.2/g1.5``)."""
    base, at, rest = name.partition("@")
    k, _, setting = rest.partition("/")
    return (base, not at, int(k) if k.isdigit() else math.inf, setting)


def varied_keys(runs: list[dict]) -> list[str]:
    keys = sorted({k for r in runs for k in r["overrides"]})
    return [k for k in keys if len({r["overrides"].get(k) for r in runs}) > 1]


def group_label(run: dict, group_keys: list[str]) -> str:
    """A run's setting, the label of its group (its repetitions over seeds): ``strategy=tdd, loss=l2``, or ``all``."""
    return ", ".join(f"{k}={run['overrides'].get(k, '')}" for k in group_keys) or "all"


def _fmt(values: list[float]) -> str:
    if not values:
        return "-"
    mean = statistics.fmean(values)
    return f"{mean:.4g}" if len(values) == 1 else f"{mean:.4g} ± {statistics.stdev(values):.2g}"


def build_tables(runs: list[dict], seed_key: str = "seed"):
    """(csv rows, markdown text, grouped {label: {metric: [values]}})."""
    keys = varied_keys(runs)
    metrics = sorted({m for r in runs for m in r["metrics"] if "@" in m or m.startswith("eval/")}, key=metric_order)
    rows = [{"run": r["dir"], **{k: r["overrides"].get(k, "") for k in keys},
             **{m: r["metrics"].get(m, "") for m in metrics}} for r in runs]
    group_keys = [k for k in keys if k != seed_key]
    groups: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in runs:
        label = group_label(r, group_keys)
        for m in metrics:
            v = r["metrics"].get(m)
            if isinstance(v, (int, float)) and math.isfinite(v):
                groups[label][m].append(float(v))
    best = {}
    for m in metrics:
        means = {g: statistics.fmean(v[m]) for g, v in groups.items() if v.get(m)}
        if means and len(set(means.values())) > 1:  # no winner among ties
            best[m] = (min if better_low(m) else max)(means, key=means.get)
    n_seeds = {g: max((len(v) for v in vals.values()), default=0) for g, vals in groups.items()}
    header = ["setting", "runs", *metrics]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for g, vals in groups.items():
        cells = [f"**{_fmt(vals.get(m, []))}**" if best.get(m) == g else _fmt(vals.get(m, [])) for m in metrics]
        lines.append(f"| {g} | {n_seeds[g]} | " + " | ".join(cells) + " |")
    note = ("\n\nmean ± std over runs (seeds) of each setting; **bold**: best mean per metric "
            f"(lower is better for {', '.join(LOWER_IS_BETTER)}).")
    return rows, "\n".join(lines) + note, groups


def _mean_std(values: list[float]) -> tuple[float, float]:
    if not values:
        return math.nan, math.nan
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def teacher_lines(groups, fam: str, steps: list[int]) -> dict[str, tuple[list, list]]:
    """The teacher's own curve of ``eval/<m>``: ``teacher/<m>@K`` at the students' step counts (one line, or one
    per setting when the settings change the teacher's numbers, e.g. a sweep over guidance.w)."""
    name = fam.split("/", 1)[1]
    per_group = {label: [_mean_std(vals.get(f"teacher/{name}@{k}", []))[0] for k in steps]
                 for label, vals in groups.items()}
    per_group = {label: ys for label, ys in per_group.items() if any(y == y for y in ys)}
    distinct = {tuple(round(y, 12) if y == y else None for y in ys) for ys in per_group.values()}
    if len(distinct) == 1:
        return {"teacher (same sampler)": (steps, next(iter(per_group.values())))}
    return {f"teacher [{label}]": (steps, ys) for label, ys in per_group.items()}


def teacher_reference(groups, fam: str, steps: list[int]) -> dict[str, float]:
    """``{"teacher @K_ref": mean}`` of the teacher's reference runs (``teacher/<m>@K`` at K no student used)."""
    name = fam.split("/", 1)[1]
    ref = defaultdict(list)
    for vals in groups.values():
        for m, values in vals.items():
            match = re.fullmatch(rf"teacher/{re.escape(name)}@(\d+)", m)
            if match and int(match.group(1)) not in steps:
                ref[int(match.group(1))] += values
    return {f"teacher {k} steps (reference)": statistics.fmean(v) for k, v in sorted(ref.items()) if v}


def plot_vs_steps(groups, out_dir: Path) -> list[Path]:
    """One PNG per metric family ``eval/<m>@K``: mean over seeds against K with std error bars, one line per
    setting; the teacher at the same step counts (dashed) and its reference run (dotted)."""
    families = defaultdict(set)
    for vals in groups.values():
        for m in vals:
            match = re.fullmatch(r"(eval/[^@]+)@(\d+)", m)
            if match:
                families[match.group(1)].add(int(match.group(2)))
    paths = []
    for fam, steps in sorted(families.items()):
        steps = sorted(steps)
        lines, spread = {}, {}
        for label, vals in groups.items():
            stats = [_mean_std(vals.get(f"{fam}@{k}", [])) for k in steps]
            lines[label], spread[label] = (steps, [m for m, _ in stats]), [sd for _, sd in stats]
        paths.append(line_plot(out_dir / f"ablation_{fam.replace('/', '_')}.png", lines, "sampling steps", fam,
                               xticks=steps, yerr=spread, dashed=teacher_lines(groups, fam, steps),
                               hlines=teacher_reference(groups, fam, steps)))
    return paths


def line_plot(path: Path, lines: dict[str, tuple[list, list]], xlabel: str, ylabel: str, xticks=None,
              yerr: dict[str, list] | None = None, dashed: dict[str, tuple[list, list]] | None = None,
              hlines: dict[str, float] | None = None) -> Path:
    """One PNG with a marked line per ``{label: (xs, ys)}``, error bars ``yerr[label]`` (std over seeds),
    grey dashed reference lines ``dashed`` and dotted horizontal lines ``hlines``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5), dpi=110)
    for label, (xs, ys) in lines.items():
        err = (yerr or {}).get(label)
        ax.errorbar(xs, ys, yerr=err if err and any(e > 0 for e in err) else None, marker="o", capsize=3,
                    label=label)
    for i, (label, (xs, ys)) in enumerate((dashed or {}).items()):
        ax.plot(xs, ys, "--", marker="x", color=str(0.35 + 0.15 * (i % 4)), label=label)
    for i, (label, y) in enumerate((hlines or {}).items()):
        ax.axhline(y, linestyle=":", color=str(0.3 + 0.15 * (i % 4)), label=label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if xticks is not None:
        ax.set_xticks(xticks)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


GRID_KEY = re.compile(r"(?P<metric>eval/[^@]+)@(?P<k>\d+)/(?P<setting>.+)")


def guidance_curves(groups, stat=statistics.fmean) -> dict[str, dict[str, dict[float, float]]]:
    """{``<metric>@<K>``: {line label: {guidance scale: stat(values)}}} (default the mean over seeds) from the
    evaluate CLI's grid keys.

    A line is one run setting (the report's group) and one sampler setting without the guidance scale
    (e.g. ``eta0.2``, ``eta0.2/noneq``); its points are the guidance scales evaluated.
    """
    curves: dict[str, dict[str, dict[float, float]]] = defaultdict(lambda: defaultdict(dict))
    for label, vals in groups.items():
        for m, values in vals.items():
            match = GRID_KEY.fullmatch(m)
            if not match or not values:
                continue
            parts = match.group("setting").split("/")
            g = [p for p in parts if re.fullmatch(r"g[-+0-9.e]+", p)]
            if len(g) != 1:
                continue
            rest = "/".join(p for p in parts if p != g[0])
            line = f"{label} [{rest}]" if rest else label
            curves[f"{match.group('metric')}@{match.group('k')}"][line][float(g[0][1:])] = stat(values)
    return curves


def plot_vs_guidance(groups, out_dir: Path) -> list[Path]:
    """One PNG per ``eval/<m>@K`` swept over the guidance scale: the metric against the scale, one line per setting
    with its spread over seeds."""
    paths = []
    spreads = guidance_curves(groups, stat=lambda v: _mean_std(v)[1])
    for fam, lines in sorted(guidance_curves(groups).items(), key=lambda item: metric_order(item[0])):
        if max(len(points) for points in lines.values()) < 2:
            continue  # a single guidance scale is no curve
        xy = {line: (sorted(points), [points[x] for x in sorted(points)]) for line, points in lines.items()}
        err = {line: [spreads[fam][line][x] for x in sorted(points)] for line, points in lines.items()}
        path = out_dir / f"ablation_guidance_{fam.replace('/', '_').replace('@', '_at')}.png"
        paths.append(line_plot(path, xy, "guidance scale (CFG on the student)", fam, yerr=err))
    return paths


# ---- learning curves: val/<metric>@K against the training step (tdd_lab.callbacks.validation) ----------------
VAL_KEY = re.compile(r"val/[^@]+@\d+")


def read_validation(run_dir: Path) -> dict[int, dict[str, float]]:
    """{step: {``val/<metric>@K``: value}} of a run's ``validation.json``; ``ValueError`` naming it when unreadable."""
    vfile = run_dir / "validation.json"
    try:
        data = json.loads(vfile.read_text())
        return {int(step): {m: float(v) for m, v in values.items() if VAL_KEY.fullmatch(m)} for step, values in data.items()}
    except (json.JSONDecodeError, UnicodeDecodeError, ValueError, TypeError, AttributeError) as e:
        raise ValueError(f"{vfile}: not a validation curve ({e})") from None


def load_curve_runs(root: Path, run_dirs: list[Path] | None = None) -> list[dict]:
    """[{"dir", "overrides", "curve": {step: {metric: value}}}] of the runs below ``root`` with a ``validation.json``
    (finished or still training), or of ``run_dirs``; an unreadable run is skipped with a warning on stderr."""
    dirs = run_dirs if run_dirs is not None else [f.parent for f in sorted(root.rglob("validation.json"))]
    runs = []
    for run_dir in dirs:
        if not (run_dir / "validation.json").exists():
            continue
        try:
            runs.append({"dir": str(run_dir.relative_to(root)), "overrides": read_overrides(run_dir),
                         "curve": read_validation(run_dir)})
        except ValueError as e:
            print(f"warning: skipping the curve of run {run_dir.relative_to(root)}: {e}", file=sys.stderr)
    return runs


def curve_stats(runs: list[dict], seed_key: str = "seed") -> dict[str, dict[str, dict[str, list]]]:
    """{``val/<metric>@K``: {setting: {"steps", "mean", "std", "runs"}}}: each setting's curve, the mean and the std
    over its runs (seeds) at every step any of them validated (std 0 where one run has the step).

    This is also the format of ``curves.json`` and of a ``--reference`` file.
    """
    group_keys = [k for k in varied_keys(runs) if k != seed_key]
    points: dict[str, dict[str, dict[int, list[float]]]] = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    n_runs: dict[str, int] = defaultdict(int)
    for r in runs:
        label = group_label(r, group_keys)
        n_runs[label] += 1
        for step, values in r["curve"].items():
            for m, v in values.items():
                if math.isfinite(v):
                    points[m][label][step].append(v)
    out: dict[str, dict[str, dict[str, list]]] = {}
    for m in sorted(points, key=metric_order):
        out[m] = {}
        for label, by_step in points[m].items():
            steps = sorted(by_step)
            stats = [_mean_std(by_step[s]) for s in steps]
            out[m][label] = {"steps": steps, "mean": [a for a, _ in stats], "std": [b for _, b in stats],
                             "runs": n_runs[label]}
    return out


def read_reference(path: Path) -> dict[str, dict[str, dict[str, list]]]:
    """A ``curves.json`` written by this report (:func:`curve_stats`' format); ``ValueError`` naming what is wrong."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"--reference {path}: cannot read it as JSON ({e})") from None
    ok = isinstance(data, dict) and all(
        isinstance(lines, dict) and all(isinstance(c, dict) and {"steps", "mean", "std"} <= set(c) and
                                        len(c["steps"]) == len(c["mean"]) == len(c["std"]) for c in lines.values())
        for lines in data.values())
    if not ok:
        raise ValueError(f"--reference {path}: expected {{metric: {{setting: {{steps, mean, std}}}}}} "
                         "(the curves.json this report writes)")
    return data


def curve_plot(path: Path, curves: dict[str, dict], ylabel: str, reference: dict[str, dict] | None = None) -> Path:
    """One PNG: a line per setting (mean over seeds) with its std shaded, against the training step; the
    ``reference`` settings as dashed grey lines with their own (lighter) band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5), dpi=110)
    for i, (label, c) in enumerate((reference or {}).items()):
        xs, mean, std = c["steps"], c["mean"], c["std"]
        color = str(0.35 + 0.15 * (i % 3))
        name = "reference" if len(reference) == 1 else f"reference: {label}"
        ax.plot(xs, mean, "--", color=color, label=name)
        ax.fill_between(xs, [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)], color=color,
                        alpha=0.15, linewidth=0)
    for label, c in curves.items():
        xs, mean, std = c["steps"], c["mean"], c["std"]
        (line,) = ax.plot(xs, mean, marker="o", markersize=3, label=f"{label} ({c.get('runs', 1)} runs)")
        ax.fill_between(xs, [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)],
                        color=line.get_color(), alpha=0.25, linewidth=0)
    ax.set_xlabel("training step")
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def write_curves(runs: list[dict], out_dir: Path, seed_key: str = "seed",
                 reference: dict | None = None) -> tuple[list[Path], dict]:
    """``curves.json`` (:func:`curve_stats`) and a ``curves_val_<metric>_at<K>.png`` per metric in ``out_dir``,
    with the ``reference`` curves of the same metric dashed; returns (plots, stats)."""
    stats = curve_stats(runs, seed_key)
    atomic_write_text(out_dir / "curves.json", json.dumps(stats, indent=1) + "\n")  # metrics in step-count order
    plots = [curve_plot(out_dir / f"curves_{m.replace('/', '_').replace('@', '_at')}.png", lines, m,
                        (reference or {}).get(m)) for m, lines in stats.items()]
    return plots, stats


def curves_summary(stats: dict) -> str:
    """Markdown: each setting's last validated point per metric (mean ± std over seeds)."""
    lines = ["| metric | setting | runs | last step | value |", "|---|---|---|---|---|"]
    for m, by_label in stats.items():
        for label, c in by_label.items():
            std = f" ± {c['std'][-1]:.2g}" if c.get("runs", 1) > 1 else ""
            lines.append(f"| {m} | {label} | {c.get('runs', 1)} | {c['steps'][-1]} | {c['mean'][-1]:.4g}{std} |")
    return "\n".join(lines)


def curves_main(root: Path, seed_key: str, reference_file: Path | None) -> int:
    """``--curves``: the learning curves of every run below ``root`` (or of the run ``root``), finished or not."""
    try:
        reference = read_reference(reference_file) if reference_file else None
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    runs = load_curve_runs(root)
    if not runs:
        print(f"error: no run with a validation.json below {root} (validation.every_n_steps > 0 writes it)",
              file=sys.stderr)
        return 2
    plots, stats = write_curves(runs, root, seed_key, reference)
    missing = sorted(set(reference or {}) - set(stats))
    if missing:
        print(f"warning: the reference has curves these runs lack: {', '.join(missing)}", file=sys.stderr)
    summary = curves_summary(stats)
    (root / "curves.md").write_text(f"# Learning curves: {root.name}\n\n{summary}\n\n"
                                    + "".join(f"![]({p.name})\n" for p in plots))
    print(summary)
    print(f"\n{len(plots)} plots and curves.json in {root}")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tdd_lab.report", description=__doc__.splitlines()[0])
    p.add_argument("sweep_dir", type=Path, help="a sweep (or, with --curves, also a single run) directory")
    p.add_argument("--seed-key", default="seed", help="override that enumerates repetitions (averaged)")
    p.add_argument("--curves", action="store_true",
                   help="only the learning curves (val/<metric>@K against the training step, from each run's "
                        "validation.json) of the runs below the directory, finished or still training")
    p.add_argument("--reference", type=Path, default=None,
                   help="a curves.json written by this report (e.g. a recipe's), drawn as dashed reference curves")
    args = p.parse_args(argv)
    if not args.sweep_dir.is_dir():
        print(f"error: {args.sweep_dir} is not a directory", file=sys.stderr)
        return 2
    if args.curves:
        return curves_main(args.sweep_dir, args.seed_key, args.reference)
    try:
        reference = read_reference(args.reference) if args.reference else None
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    runs = load_runs(args.sweep_dir)
    if not runs:
        print(f"error: no run with a metrics.json below {args.sweep_dir}", file=sys.stderr)
        return 2
    rows, markdown, groups = build_tables(runs, args.seed_key)
    if len(runs) < len(list(args.sweep_dir.rglob("metrics.json"))):
        markdown += f"\n\n{len(list(args.sweep_dir.rglob('metrics.json'))) - len(runs)} unreadable run(s) skipped (see the warnings)."
    with open(args.sweep_dir / "ablation.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    plots = plot_vs_steps(groups, args.sweep_dir) + plot_vs_guidance(groups, args.sweep_dir)
    curve_runs = load_curve_runs(args.sweep_dir, [args.sweep_dir / r["dir"] for r in runs])
    if curve_runs:  # learning curves of the runs that validated during training
        plots += write_curves(curve_runs, args.sweep_dir, args.seed_key, reference)[0]
    (args.sweep_dir / "ablation.md").write_text(
        f"# Ablation: {args.sweep_dir.name}\n\n{markdown}\n\n" + "".join(f"![]({p.name})\n" for p in plots))
    print(markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
