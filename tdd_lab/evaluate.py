"""Evaluate a trained student at other sampling settings: ``python -m tdd_lab.evaluate run_dir=RUN [key=value ...]``.

A Hydra app (``conf/evaluate.yaml``): steps, eta, guidance scale, timestep schedule, t_l and the metrics option
are ordinary keys and groups, so a grid is a multirun with one job per setting::

    python -m tdd_lab.evaluate -m run_dir=RUN eta=0,0.2,0.5 guidance_scale=1,1.5 steps=[2,4,8]

Each job rebuilds teacher, guidance, sampler and metrics from ``RUN/.hydra/config.yaml`` (null keys: the run's
own setting), loads the exported student (``RUN/student``) and evaluates it with the run's ``Evaluator`` (the
same per-sample noise as training's evaluation, so the run's own settings reproduce its ``eval/<m>@K``). It
appends to ``RUN/metrics.json``, atomically under a file lock, keys that spell out the setting::

    eval/<metric>@<K>/eta<eta>/g<guidance scale>[/noneq][/tl<t_l>]
    e.g. eval/fid@4/eta0.2/g1.5   eval/ode_error@2/eta0/g1/noneq/tl1

(``eta`` is absent for samplers without one, ``noneq`` marks the non-equidistant schedule, ``tl`` x0
clipping; metrics evaluated with deterministic samplers, such as gmm2d's ``ode_error``, record eta0), rows to
``RUN/evaluate.csv`` and, when the run logs to W&B, a W&B run (``job_type=evaluate``) in the training run's
group. Bad input exits with code 2 and ``error: ...``. Hydra's own files go to ``RUN/.hydra_evaluate/``.
``watch=true`` evaluates a run's checkpoints while it trains instead (:mod:`tdd_lab.watch`).

Settings that collapse onto another are said so and recorded once, under the setting they equal: an ``eta``
asked of deterministic metrics (recorded as eta0), a non-equidistant schedule whose timesteps at some K are
the equidistant ones (recorded without ``/noneq``). A collapsed setting whose keys are already in
``metrics.json`` (an earlier job of the grid) is not evaluated again.
"""

from __future__ import annotations

import csv
import fcntl
import inspect
import json
import logging
import sys
import tempfile
import time
from collections.abc import Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import hydra
import torch
import yaml
from hydra.core.utils import JobStatus
from hydra.experimental.callback import Callback
from hydra.utils import get_class
from omegaconf import DictConfig, ListConfig, OmegaConf

from tdd_lab.utils.cache import atomic_write_json
from tdd_lab.validate import (
    JOB_STARTED,
    ConfigError,
    check_evaluator,
    check_keys,
    exit_2_on_bad_command_line,
    instantiate,
)
from tdd_lab.watch import watch

log = logging.getLogger(__name__)
KEYS = {"steps": {int}, "eta": {float}, "guidance_scale": {float}, "t_l": {int}, "num_samples": {int},
        "batch_size": {int}, "wandb": {bool}, "watch": {bool}, "poll_seconds": {float},
        "watch_timeout": {float}}  # the typed keys of conf/evaluate.yaml (steps: each item)
CSV_COLUMNS = ["time", "key", "metric", "steps", "eta", "guidance_scale", "timestep_schedule", "t_l", "value"]


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


# ---- the run: its folder, its config with this evaluation's changes ------------------------------------
def locate_run(path: Path) -> Path:
    """The run dir of ``path`` (a run dir or its ``student/``), checked for its config and export."""
    if not path.exists():
        raise ConfigError(f"run_dir: {path} does not exist")
    run = path.parent if (path / "student.json").exists() and path.name == "student" else path
    if not (run / ".hydra" / "config.yaml").exists():
        raise ConfigError(f"run_dir: {run / '.hydra' / 'config.yaml'} not found: pass a training run directory "
                          "(the evaluator rebuilds the teacher and metrics from its config)")
    if not (run / "student" / "student.json").exists():
        raise ConfigError(f"run_dir: {run / 'student' / 'student.json'} not found: the run has no exported student")
    return run


def hydra_output_root(run_dir: Any) -> str:
    """Hydra's folder for evaluations of ``run_dir``: ``<run>/.hydra_evaluate``, never the run's own ``.hydra``
    (a temporary folder when ``run_dir`` is not a run, which the app then reports)."""
    try:
        if run_dir is not None:
            return str(locate_run(Path(str(run_dir))) / ".hydra_evaluate")
    except ConfigError:
        if run_dir is not None and (Path(str(run_dir)) / ".hydra" / "config.yaml").exists():
            return str(Path(str(run_dir)) / ".hydra_evaluate")  # a run still training (watch=true)
    return str(Path(tempfile.gettempdir()) / "tdd_lab_evaluate")


OmegaConf.register_new_resolver("tdd_lab.evaluate_dir", hydra_output_root, replace=True)


def override_items(overrides: Any) -> list[tuple[str, Any]]:
    """``run_overrides`` as (key, value) pairs: a mapping ``{key: value}`` or ``key=value`` strings."""
    if overrides is None:
        return []
    if isinstance(overrides, (Mapping, DictConfig)):
        return [(str(k), OmegaConf.to_container(v) if isinstance(v, (DictConfig, ListConfig)) else v)
                for k, v in overrides.items()]
    items = []
    for item in [overrides] if isinstance(overrides, str) else overrides:
        key, sep, value = str(item).partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"run_overrides: expected key=value, got {item!r}")
        items.append((key.strip(), yaml.safe_load(value)))
    return items


def run_config(run: Path, cfg: DictConfig) -> DictConfig:
    """The run's config with this evaluation's metrics option, ``run_overrides`` and evaluator keys applied."""
    run_cfg = OmegaConf.load(run / ".hydra" / "config.yaml")
    OmegaConf.set_struct(run_cfg, False)
    run_cfg.paths.output_dir = str(run)  # its only ${hydra:...} value
    if cfg.get("metrics") is not None:  # a conf/metrics option, resolved against the run's paths
        run_cfg.metrics = OmegaConf.to_container(cfg.metrics, resolve=False)
    missing = object()
    for key, value in override_items(cfg.run_overrides):
        if OmegaConf.select(run_cfg, key, default=missing, throw_on_resolution_failure=False) is missing:
            raise ConfigError(f"run_overrides: {key!r} is not a key of the run's config ({run / '.hydra' / 'config.yaml'})")
        OmegaConf.update(run_cfg, key, value, merge=False)
    steps = cfg.steps
    if steps is not None:
        run_cfg.metrics.steps = [int(k) for k in (steps if isinstance(steps, ListConfig) else [steps])]
    for key in ("num_samples", "batch_size", "guidance_scale"):
        if cfg[key] is not None:
            run_cfg.metrics[key] = cfg[key]
    return run_cfg


def build_sampler(run_cfg: DictConfig, cfg: DictConfig):
    """The run's sampler with this evaluation's eta / timestep_schedule / t_l (where its constructor has them)."""
    cls = get_class(run_cfg.sampler._target_)
    params = inspect.signature(cls).parameters
    kwargs = {}
    for key in ("eta", "timestep_schedule", "t_l"):
        if cfg[key] is not None:
            if key not in params:
                raise ConfigError(f"{key}: the run's sampler {cls.__name__} has no {key} parameter")
            kwargs[key] = cfg[key]
    if "t_l" in kwargs and "thresholding" in params:
        kwargs["thresholding"] = kwargs["t_l"] >= 0
    return instantiate(run_cfg.sampler, "sampler", **kwargs)


def check_app_keys(cfg: DictConfig) -> None:
    """Types and ranges of the app's own keys (``num_samples=0`` fails here, not after sampling)."""
    check_keys(cfg, KEYS)
    for key, low in (("num_samples", 2), ("batch_size", 1)):
        if cfg[key] is not None and cfg[key] < low:
            raise ConfigError(f"{key} must be >= {low}, got {cfg[key]}")
    if cfg.guidance_scale is not None and cfg.guidance_scale < 0:
        raise ConfigError(f"guidance_scale must be >= 0 (diffusers' convention, 1 = no CFG), got {cfg.guidance_scale}")


def sampler_timesteps(sampler, schedule_config: dict, k: int) -> list[int]:
    """The training timesteps ``sampler`` calls the network at for ``k`` steps."""
    scheduler = sampler.make_scheduler(schedule_config)
    scheduler.set_timesteps(k)
    return [int(t) for t in sampler.network_timesteps(scheduler)]


def collapsed_steps(run_cfg: DictConfig, cfg: DictConfig, sampler, schedule_config: dict, steps) -> list[int]:
    """The step counts at which a requested non-equidistant schedule has the equidistant timesteps."""
    if cfg.timestep_schedule != "nonequidistant":
        return []
    equidistant = build_sampler(run_cfg, OmegaConf.merge(cfg, {"timestep_schedule": "equidistant"}))
    return [k for k in steps if sampler_timesteps(sampler, schedule_config, k) ==
            sampler_timesteps(equidistant, schedule_config, k)]


def effective_suffixes(cfg: DictConfig, evaluator, eta, g: float, schedule: str, t_l: int, same_as_equidistant,
                       recorded: dict) -> dict[int, str]:
    """{K: key suffix} of the step counts to evaluate: collapsed settings under the setting they equal (a warning
    says so); a collapsed K whose keys ``recorded`` already holds is dropped (a warning says so)."""
    eta_collapsed = cfg.eta is not None and eta is not None and float(cfg.eta) != float(eta)
    if eta_collapsed:
        log.warning("eta=%g: the run's metrics are measured with deterministic sampling (eta 0), so this setting "
                    "equals eta=0 and is recorded as eta0", cfg.eta)
    if same_as_equidistant:
        log.warning("timestep_schedule=nonequidistant: at K=%s the non-equidistant timesteps are the equidistant "
                    "ones, so those keys are recorded without /noneq", same_as_equidistant)
    out = {}
    for k in evaluator.steps:
        suffix = setting_suffix(eta, g, "equidistant" if k in same_as_equidistant else schedule, t_l)
        seen = any(key.startswith("eval/") and key.endswith(f"@{k}/{suffix}") for key in recorded)
        if seen and (eta_collapsed or k in same_as_equidistant):
            log.warning("K=%d: %s is already in metrics.json (the same setting): not evaluated again", k, suffix)
            continue
        out[k] = suffix
    return out


def setting(sampler, deterministic: bool) -> tuple[float | None, str, int]:
    """(eta, timestep schedule, t_l) a sampler evaluates at (eta 0 for deterministic metrics)."""
    desc = sampler.describe()
    eta = (sampler.deterministic() if deterministic else sampler).eta
    return eta, desc.get("timestep_schedule", "equidistant"), int(desc["t_l"]) if desc.get("thresholding") else -1


# ---- outputs: metrics.json and evaluate.csv under a lock, W&B, the printed grid -------------------------
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


def append_rows(path: Path, rows, columns: list[str]) -> Path:
    """Append ``rows`` (dicts) to the CSV at ``path`` under its lock, writing the header when the file is new."""
    with locked(path):
        new = not path.exists()
        with open(path, "a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns)
            if new:
                writer.writeheader()
            writer.writerows(rows)
    return path


def append_csv(run: Path, rows: list[dict]) -> Path:
    return append_rows(run / "evaluate.csv", rows, CSV_COLUMNS)


def wandb_target(cfg: DictConfig, run: Path) -> tuple[str, str, str] | None:
    """(project, group, mode) of the training run ``run`` whose config ``cfg`` logs to W&B (None if it does not):
    the group the training run got, so evaluations join it (a multirun's run dir is <sweep dir>/<job number>)."""
    spec = OmegaConf.select(cfg, "logger.wandb")
    if spec is None:
        return None
    from tdd_lab.outputs import wandb_group

    hydra_file = run / ".hydra" / "hydra.yaml"
    multirun = hydra_file.exists() and OmegaConf.load(hydra_file).hydra.get("mode") == "MULTIRUN"
    group = spec.get("group") or wandb_group(cfg.get("task_name", "train"), multirun, str(run.parent), str(run))
    return spec.get("project", "tdd_lab"), group, "offline" if spec.get("offline", True) else "online"


def log_wandb(cfg: DictConfig, run: Path, rows: list[dict], new: dict[str, float], grid: dict) -> str | None:
    """A W&B run (job_type evaluate) in the training run's group: the grid table and the new keys as summary."""
    target = wandb_target(cfg, run)
    if target is None:
        return None
    import wandb

    project, group, mode = target
    wb = wandb.init(project=project, group=group, job_type="evaluate", dir=str(run),
                    name=f"{run.name}-evaluate", mode=mode, config={"run_dir": str(run), "grid": grid},
                    tags=["evaluate"], reinit="finish_previous")
    wb.log({"evaluate/grid": wandb.Table(columns=CSV_COLUMNS, data=[[r[c] for c in CSV_COLUMNS] for r in rows])})
    wb.summary.update(new)
    wb.finish()
    return group


def print_grid(rows: list[dict]) -> str:
    """Markdown: one row per setting (``eta0.2/g1.5``), one column per ``metric@K``."""
    table: dict[str, dict[str, float]] = {}
    for r in rows:
        setting_ = r["key"].split("@", 1)[1].split("/", 1)[1]
        table.setdefault(setting_, {})[f"{r['metric']}@{r['steps']}"] = r["value"]
    cols = sorted({c for row in table.values() for c in row}, key=lambda c: (c.rsplit("@", 1)[0], int(c.rsplit("@", 1)[1])))
    lines = ["| setting | " + " | ".join(cols) + " |", "|" + "---|" * (len(cols) + 1)]
    for setting_, row in table.items():
        lines.append(f"| {setting_} | " + " | ".join(f"{row[c]:.4g}" if c in row else "-" for c in cols) + " |")
    text = "\n".join(lines)
    print(text)
    return text


class PrintGrid(Callback):
    """Prints the grid of all jobs at the end of a multirun (each job prints its own setting as it ends)."""

    def __init__(self):
        self.rows: list[dict] = []

    def on_job_end(self, config, job_return, **kwargs) -> None:
        if job_return.status == JobStatus.COMPLETED and isinstance(job_return.return_value, list):
            self.rows += job_return.return_value

    def on_multirun_end(self, config, **kwargs) -> None:
        if self.rows:
            print(f"\ngrid of {len({r['key'].split('@', 1)[1].split('/', 1)[1] for r in self.rows})} settings:")
            print_grid(self.rows)


# ---- the app -------------------------------------------------------------------------------------------
def evaluate(cfg: DictConfig) -> tuple[dict[str, float], list[dict]]:
    """Evaluate ``cfg.run_dir``'s student at one setting; returns the new keys (appended to metrics.json) and
    the CSV rows. Raises :class:`ConfigError` on bad input."""
    from tdd_lab.export import load_student

    if OmegaConf.is_missing(cfg, "run_dir"):
        raise ConfigError("run_dir: required, the training run to evaluate (run_dir=logs/train/runs/...)")
    check_app_keys(cfg)
    run = locate_run(Path(str(cfg.run_dir)))
    run_cfg = run_config(run, cfg)
    check_evaluator(run_cfg.metrics, "metrics")
    evaluator = instantiate(run_cfg.metrics, "metrics")
    student = load_student(run, cfg.device)
    n = student.num_ddim_timesteps
    bad = [k for k in evaluator.steps if not 1 <= k <= n]
    if bad:
        raise ConfigError(f"steps: {bad} outside [1, {n}] (the student's grid size, num_ddim_timesteps)")
    guidance = instantiate(run_cfg.guidance, "guidance")
    g = float(evaluator.guidance_scale)
    try:
        guidance.student_sampling(g)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    sampler = build_sampler(run_cfg, cfg)
    eta, schedule, t_l = setting(sampler, evaluator.metrics.deterministic)
    same = collapsed_steps(run_cfg, cfg, sampler, student.denoiser.schedule.diffusers_config(), evaluator.steps)
    recorded = json.loads((run / "metrics.json").read_text()) if (run / "metrics.json").exists() else {}
    suffixes = effective_suffixes(cfg, evaluator, eta, g, schedule, t_l, same, recorded)
    if not suffixes:
        return {}, []
    evaluator.steps = list(suffixes)
    teacher = instantiate(run_cfg.teacher, "teacher").to(cfg.device)

    results, _ = evaluator.evaluate_student(student.denoiser, teacher, guidance, sampler, cfg.device)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
    new, rows = {}, []
    for base_key, value in results.items():
        metric, k = base_key.split("/", 1)[1].rsplit("@", 1)
        key = grid_key(base_key, suffixes[int(k)])
        new[key] = float(value)
        rows.append({"time": stamp, "key": key, "metric": metric, "steps": int(k), "eta": eta, "guidance_scale": g,
                     "timestep_schedule": "equidistant" if int(k) in same else schedule, "t_l": t_l,
                     "value": float(value)})
    append_metrics(run, new)
    append_csv(run, rows)
    if cfg.wandb:
        log_wandb(run_cfg, run, rows, new, {"steps": evaluator.steps, "eta": eta, "guidance_scale": g,
                                            "timestep_schedule": schedule, "t_l": t_l})
    return new, rows


def report_watch(result: dict, cfg: DictConfig) -> list[dict]:
    """Say how a watcher stopped (``tdd_lab.watch``)."""
    run = Path(str(cfg.run_dir))
    if result["status"] == "timeout":
        print(f"watch: stopped after watch_timeout={cfg.watch_timeout:g} s without a new checkpoint in "
              f"{run / 'checkpoints'} (training has not written training_done.json); evaluated steps "
              f"{result['evaluated']} in this session; restarting the watcher continues", file=sys.stderr)
    else:
        print(f"watch: training finished; evaluated steps {result['evaluated']} in this session, the final step: "
              + ", ".join(f"{k} {v:.4g}" for k, v in (result["final"] or {}).items()))
    print(f"watch state: {result['state']}")
    return []


@hydra.main(version_base="1.3", config_path="../conf", config_name="evaluate")
def main(cfg: DictConfig) -> list[dict]:
    JOB_STARTED.set()
    torch.set_float32_matmul_precision("high")
    try:
        if cfg.get("watch"):
            return report_watch(watch(cfg), cfg)
        new, rows = evaluate(cfg)
    except (ConfigError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    run = locate_run(Path(str(cfg.run_dir)))
    if rows:
        print_grid(rows)
    print(f"appended {len(new)} keys to {run / 'metrics.json'}")
    print(f"run directory: {run.resolve()}")
    return rows


if __name__ == "__main__":
    exit_2_on_bad_command_line(main, "tdd_lab.evaluate")
