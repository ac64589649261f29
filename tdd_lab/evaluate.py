"""Evaluate a trained student over a grid of sampling settings: ``python -m tdd_lab.evaluate RUN_DIR [options]``.

The grid is the product of ``--eta``, ``--guidance-scale`` (CFG on the student: the post-tuning curve that
decoupled guidance allows), ``--timestep-schedule`` and ``--t-l`` (x0 clipping on steps 0..t_l; -1 = off),
each evaluated at every ``--steps`` K. It loads the run's exported student (``student/``) and its config
(``.hydra/config.yaml``) to rebuild the teacher, the guidance mode and the metrics, and evaluates with the
run's ``Evaluator`` (same per-sample noise as training's evaluation).

Results are appended to ``RUN_DIR/metrics.json`` under keys that spell out the setting::

    eval/<metric>@<K>/eta<eta>/g<guidance scale>[/noneq][/tl<t_l>]
    e.g. eval/fid@4/eta0.2/g1.5   eval/ode_error@2/eta0/g1/noneq/tl1

(``eta`` is absent for samplers without one, ``noneq`` marks the non-equidistant schedule, ``tl`` x0
clipping; metrics evaluated with deterministic samplers, such as gmm2d's ``ode_error``, record eta0.)
Each call also appends rows to ``RUN_DIR/evaluate.csv`` and, when the run logs to W&B, writes a W&B run
(``job_type=evaluate``) in the training run's group with the grid as a ``wandb.Table`` and the new keys
in its summary. Bad input exits with code 2 and ``error: ...``.
"""

from __future__ import annotations

import argparse
import csv
import fcntl
import inspect
import itertools
import json
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from tdd_lab.utils.cache import atomic_write_json

SCHEDULES = ("equidistant", "nonequidistant")
CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


class EvaluateError(ValueError):
    """Bad input to the evaluation CLI (exit code 2)."""


def setting_suffix(eta: float | None, guidance_scale: float, schedule: str = "equidistant", t_l: int = -1) -> str:
    """``eta0.2/g1.5[/noneq][/tl2]``: the part of a key after ``@K``."""
    parts = ([] if eta is None else [f"eta{eta:g}"]) + [f"g{guidance_scale:g}"]
    if schedule == "nonequidistant":
        parts.append("noneq")
    if t_l >= 0:
        parts.append(f"tl{t_l}")
    return "/".join(parts)


def grid_key(base_key: str, suffix: str) -> str:
    """``eval/fid@4`` + ``eta0.2/g1.5`` -> ``eval/fid@4/eta0.2/g1.5``."""
    return f"{base_key}/{suffix}"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m tdd_lab.evaluate", description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n", 2)[2])
    p.add_argument("run", type=Path, help="training run directory (or its student/ export)")
    p.add_argument("--steps", type=int, nargs="+", default=[2, 4, 6, 8], help="sampling step counts K")
    p.add_argument("--eta", type=float, nargs="+", default=None, help="sampler eta values (default: the run's)")
    p.add_argument("--guidance-scale", type=float, nargs="+", default=None,
                   help="CFG scales on the student (standard form, 1 = off; default: the run's)")
    p.add_argument("--timestep-schedule", nargs="+", choices=SCHEDULES, default=None, help="TDD sampler schedules")
    p.add_argument("--t-l", type=int, nargs="+", default=None,
                   help="TDD sampler x0 clipping on steps 0..t_l (-1 = no clipping)")
    p.add_argument("--metrics", default=None, help="a conf/metrics option instead of the run's (e.g. digits_fidelity)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a key of the run's config (e.g. metrics.num_samples=200); repeatable")
    p.add_argument("--num-samples", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--device", default="cpu")
    p.add_argument("--no-wandb", action="store_true", help="do not write a W&B run even if the run logs to W&B")
    return p.parse_args(argv)


def locate_run(path: Path) -> Path:
    """The run dir of ``path`` (a run dir or its ``student/``), checked for its config and export."""
    if not path.exists():
        raise EvaluateError(f"{path} does not exist")
    run = path.parent if (path / "student.json").exists() and path.name == "student" else path
    if not (run / ".hydra" / "config.yaml").exists():
        raise EvaluateError(f"{run / '.hydra' / 'config.yaml'} not found: pass a training run directory "
                            "(the evaluator rebuilds the teacher and metrics from its config)")
    if not (run / "student" / "student.json").exists():
        raise EvaluateError(f"{run / 'student' / 'student.json'} not found: the run has no exported student")
    return run


def load_run_config(run: Path, metrics: str | None, overrides: list[str]) -> DictConfig:
    """The run's config with ``paths.output_dir`` = ``run`` (its only ``${hydra:...}`` value), and overrides."""
    cfg = OmegaConf.load(run / ".hydra" / "config.yaml")
    OmegaConf.set_struct(cfg, False)
    cfg.paths.output_dir = str(run)
    if metrics is not None:
        option = CONF_DIR / "metrics" / f"{metrics}.yaml"
        if not option.exists():
            names = sorted(p.stem for p in (CONF_DIR / "metrics").glob("*.yaml"))
            raise EvaluateError(f"--metrics: unknown option {metrics!r} (one of {', '.join(names)})")
        cfg.metrics = OmegaConf.load(option)
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or OmegaConf.select(cfg, key, default="__missing__") == "__missing__":
            raise EvaluateError(f"--set {item}: expected KEY=VALUE with an existing config key")
        OmegaConf.update(cfg, key, yaml_value(value), merge=False)
    return cfg


def yaml_value(text: str):
    import yaml

    return yaml.safe_load(text)


def build_samplers(recorded: dict, etas, schedules, t_ls, deterministic: bool) -> list[tuple[str | None, object]]:
    """[(setting prefix without g, sampler)] over the eta/schedule/t_l grid, starting from the recorded sampler."""
    from tdd_lab.sample import build_sampler
    from tdd_lab.samplers import TDDSampler

    base = build_sampler(None, None, recorded)
    cls = type(base)
    params = inspect.signature(cls).parameters
    if etas is not None and "eta" not in params:
        raise EvaluateError(f"--eta: the run's {cls.__name__} has no eta")
    if (schedules is not None or t_ls is not None) and cls is not TDDSampler:
        raise EvaluateError(f"--timestep-schedule/--t-l apply to the TDDSampler, the run samples with {cls.__name__}")
    kwargs = {k: v for k, v in recorded.items() if k != "class"} if cls.__name__ == recorded.get("class") else {}
    out, seen = [], set()
    for eta, sched, t_l in itertools.product(etas or [None], schedules or [None], t_ls or [None]):
        kw = dict(kwargs)
        if eta is not None:
            kw["eta"] = eta
        if sched is not None:
            kw["timestep_schedule"] = sched
        if t_l is not None:
            kw["thresholding"], kw["t_l"] = t_l >= 0, t_l
        try:
            sampler = cls(**kw)
        except (TypeError, ValueError) as e:
            raise EvaluateError(str(e)) from None
        effective = sampler.deterministic() if deterministic else sampler
        key = (effective.eta, getattr(sampler, "timestep_schedule", "equidistant"),
               getattr(sampler, "t_l", -1) if getattr(sampler, "thresholding", False) else -1)
        if key not in seen:
            seen.add(key)
            out.append((key, sampler))
    return out


@contextmanager
def locked(path: Path):
    """An exclusive lock on ``path.lock`` (concurrent evaluations of one run append safely)."""
    lock = path.with_name(f".{path.name}.lock")
    with open(lock, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def append_metrics(run: Path, new: dict[str, float]) -> dict[str, float]:
    """Merge ``new`` into ``run/metrics.json`` atomically (read, update and rename under a lock)."""
    path = run / "metrics.json"
    with locked(path):
        metrics = json.loads(path.read_text()) if path.exists() else {}
        metrics.update(new)
        atomic_write_json(path, metrics)
    return metrics


CSV_COLUMNS = ["time", "key", "metric", "steps", "eta", "guidance_scale", "timestep_schedule", "t_l", "value"]


def append_csv(run: Path, rows: list[dict]) -> Path:
    path = run / "evaluate.csv"
    with locked(path):
        new = not path.exists()
        with open(path, "a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
            if new:
                writer.writeheader()
            writer.writerows(rows)
    return path


def log_wandb(cfg: DictConfig, run: Path, rows: list[dict], new: dict[str, float], grid: dict) -> str | None:
    """A W&B run (job_type evaluate) in the training run's group: the grid table and the new keys as summary."""
    spec = OmegaConf.select(cfg, "logger.wandb")
    if spec is None:
        return None
    import wandb

    from tdd_lab.outputs import wandb_group

    hydra_file = run / ".hydra" / "hydra.yaml"
    multirun = hydra_file.exists() and OmegaConf.load(hydra_file).hydra.get("mode") == "MULTIRUN"
    # the group the training run got (a multirun's run dir is <sweep dir>/<job number>)
    group = spec.get("group") or wandb_group(cfg.get("task_name", "train"), multirun, str(run.parent), str(run))
    mode = "offline" if spec.get("offline", True) else "online"
    wb = wandb.init(project=spec.get("project", "tdd_lab"), group=group, job_type="evaluate", dir=str(run),
                    name=f"{run.name}-evaluate", mode=mode, config={"run_dir": str(run), "grid": grid},
                    tags=["evaluate"], reinit="finish_previous")
    wb.log({"evaluate/grid": wandb.Table(columns=CSV_COLUMNS, data=[[r[c] for c in CSV_COLUMNS] for r in rows])})
    wb.summary.update(new)
    wb.finish()
    return group


def evaluate(args: argparse.Namespace) -> tuple[dict[str, float], list[dict]]:
    """Run the grid; returns the new keys (also appended to metrics.json) and the CSV rows."""
    import hydra

    from tdd_lab.evaluation import build_evaluator
    from tdd_lab.export import load_student

    run = locate_run(args.run)
    cfg = load_run_config(run, args.metrics, args.set)
    if any(k < 1 for k in args.steps):
        raise EvaluateError(f"--steps must be >= 1, got {args.steps}")
    evaluator = build_evaluator(cfg.metrics)
    student = load_student(run, args.device)
    if any(k > student.num_ddim_timesteps for k in args.steps):
        raise EvaluateError(f"--steps must be <= the student's grid size {student.num_ddim_timesteps}")
    guidance = hydra.utils.instantiate(cfg.guidance)
    rec = student.meta.get("recommended", {})
    scales = args.guidance_scale or [float(rec.get("guidance_scale", evaluator.guidance_scale))]
    if guidance.embedding_dim is not None and scales != [1.0]:
        raise EvaluateError("--guidance-scale: this student takes the guidance scale through its w-embedding "
                            f"({type(guidance).__name__}); CFG post-tuning applies to students without one")
    samplers = build_samplers(rec.get("sampler") or {}, args.eta, args.timestep_schedule, args.t_l,
                              evaluator.metrics.deterministic)
    teacher = hydra.utils.instantiate(cfg.teacher).to(args.device)
    evaluator.steps = list(args.steps)
    evaluator.num_samples = args.num_samples or evaluator.num_samples
    evaluator.batch_size = args.batch_size or evaluator.batch_size
    new, rows, stamp = {}, [], time.strftime("%Y-%m-%dT%H:%M:%S")
    for ((eta, sched, t_l), sampler), g in itertools.product(samplers, scales):
        evaluator.guidance_scale = g
        suffix = setting_suffix(eta, g, sched, t_l)
        results, _ = evaluator.evaluate_student(student.eps_fn, teacher, guidance, sampler,
                                                student.num_ddim_timesteps, args.device)
        for base_key, value in results.items():
            key = grid_key(base_key, suffix)
            new[key] = float(value)
            metric, k = base_key.split("/", 1)[1].rsplit("@", 1)
            rows.append({"time": stamp, "key": key, "metric": metric, "steps": int(k), "eta": eta,
                         "guidance_scale": g, "timestep_schedule": sched, "t_l": t_l, "value": float(value)})
    append_metrics(run, new)
    append_csv(run, rows)
    if not args.no_wandb:
        log_wandb(cfg, run, rows, new, {"steps": args.steps, "eta": args.eta, "guidance_scale": scales,
                                        "timestep_schedule": args.timestep_schedule, "t_l": args.t_l})
    return new, rows


def print_grid(rows: list[dict]) -> str:
    """Markdown: one row per setting (``eta0.2/g1.5``), one column per ``metric@K``."""
    table: dict[str, dict[str, float]] = {}
    for r in rows:
        setting = r["key"].split("@", 1)[1].split("/", 1)[1]
        table.setdefault(setting, {})[f"{r['metric']}@{r['steps']}"] = r["value"]
    cols = sorted({c for row in table.values() for c in row}, key=lambda c: (c.rsplit("@", 1)[0], int(c.rsplit("@", 1)[1])))
    lines = ["| setting | " + " | ".join(cols) + " |", "|" + "---|" * (len(cols) + 1)]
    for setting, row in table.items():
        lines.append(f"| {setting} | " + " | ".join(f"{row[c]:.4g}" if c in row else "-" for c in cols) + " |")
    text = "\n".join(lines)
    print(text)
    return text


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_float32_matmul_precision("high")
    try:
        new, rows = evaluate(args)
    except (EvaluateError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print_grid(rows)
    print(f"appended {len(new)} keys to {locate_run(args.run) / 'metrics.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
