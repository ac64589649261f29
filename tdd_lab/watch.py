"""A checkpoint watcher: evaluation off the training GPUs, ``python -m tdd_lab.evaluate run_dir=RUN watch=true``.

Polls ``RUN/checkpoints`` and evaluates each new checkpoint as it appears, exactly as the run's final evaluation
would: the run's ``Evaluator`` (full metrics config, every step count, the same per-sample seeds), its sampler and
guidance, the student rebuilt from ``RUN/.hydra/config.yaml`` with the checkpoint's weights. The teacher and the
module are built once; each checkpoint only loads its state dict.

- A checkpoint is identified by its ``global_step`` (read from the file): ``last.ckpt`` and ``step_000500.ckpt``
  at one step are one evaluation. Evaluated steps and their numbers are in ``RUN/watch.json`` (written atomically
  before anything else is logged), so a restarted watcher never evaluates a step twice.
- Checkpoints are written atomically (:class:`tdd_lab.utils.checkpoint_io.AtomicCheckpointIO`: temporary file
  ``.<name>.tmp*``, then rename); hidden files are ignored, and a file that does not load (copied in by hand,
  truncated) is skipped with a warning and retried only when it changes.
- ``eval/<metric>@K`` per checkpoint: rows in ``RUN/watch.csv`` and, when the run logs to W&B, one W&B run
  (``job_type=watch``) in the training run's group with ``step = global_step``.
- Stops when training has finished (``RUN/training_done.json``, written by ``tdd_lab.train`` right after fit,
  before its final evaluation) once the final step is evaluated; or after ``watch_timeout`` seconds without a
  new checkpoint.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tdd_lab.utils.cache import atomic_write_json

log = logging.getLogger(__name__)
DONE_FILE = "training_done.json"  # {"final_step": N, "status": "finished"}: tdd_lab.train, right after fit
STATE_FILE = "watch.json"         # {"evaluated": {step: {key: value}}, "checkpoints": {step: name}, "wandb_id"}
CSV_FILE = "watch.csv"
CSV_COLUMNS = ["time", "step", "checkpoint", "key", "value"]
SETTING_KEYS = ("eta", "guidance_scale", "timestep_schedule", "t_l")  # the evaluate app's sampling settings


# ---- the training side: the done marker ------------------------------------------------------------------
def clear_training_done(run_dir: str | Path) -> None:
    """Remove a previous fit's marker (a run continued with ``resume=auto`` is running again)."""
    (Path(run_dir) / DONE_FILE).unlink(missing_ok=True)


def mark_training_done(run_dir: str | Path, final_step: int) -> Path:
    """``RUN/training_done.json``: training finished at ``final_step`` (its checkpoint is written by then)."""
    path = Path(run_dir) / DONE_FILE
    atomic_write_json(path, {"final_step": int(final_step), "status": "finished"})
    return path


def training_done(run: Path) -> dict | None:
    path = run / DONE_FILE
    return json.loads(path.read_text()) if path.exists() else None


# ---- checkpoints: identity by global step, never a partial file -------------------------------------------
def read_checkpoint(path: Path) -> dict[str, Any]:
    """The checkpoint at ``path`` (CPU, memory-mapped: reading its step does not read its weights)."""
    import torch

    return torch.load(path, map_location="cpu", weights_only=True, mmap=True)


@dataclass
class CheckpointScanner:
    """The checkpoints of a folder by global step; each file is read again only when it changes."""

    directory: Path
    seen: dict[Path, tuple[tuple[int, int, int], int | None]] = field(default_factory=dict)  # path: (sig, step)

    def scan(self) -> dict[int, Path]:
        """{global_step: path} of the loadable ``*.ckpt`` files (hidden temporaries ignored; an unloadable file is
        skipped with a warning, once per version of it)."""
        found: dict[int, Path] = {}
        paths = sorted(self.directory.glob("*.ckpt")) if self.directory.is_dir() else []
        for path in paths:
            if path.name.startswith("."):
                continue
            try:
                st = path.stat()
            except FileNotFoundError:  # removed by ModelCheckpoint's top-k since the listing
                continue
            sig = (st.st_ino, st.st_size, st.st_mtime_ns)
            if path in self.seen and self.seen[path][0] == sig:
                step = self.seen[path][1]
            else:
                try:
                    step = int(read_checkpoint(path)["global_step"])
                except FileNotFoundError:
                    continue
                except Exception as e:  # truncated, not a checkpoint, written by hand: skip until it changes
                    log.warning("watch: skipping %s (not a loadable checkpoint: %s)", path, str(e).splitlines()[0])
                    step = None
                self.seen[path] = (sig, step)
            if step is not None:
                found.setdefault(step, path)  # last.ckpt sorts before step_*.ckpt: either is this step
        return found


def load_weights(module, ckpt: dict[str, Any]) -> None:
    """Load a training checkpoint's state dict into a rebuilt ``DistillationModule`` (LoRA checkpoints omit the
    frozen weights, which the rebuilt module already holds: ``on_load_checkpoint`` checks the rest is there)."""
    module.on_load_checkpoint(ckpt)
    module.load_state_dict(ckpt["state_dict"], strict=not ckpt.get("frozen_weights_omitted"))


# ---- the watcher -------------------------------------------------------------------------------------------
def locate_training_run(path: Path) -> Path:
    """A training run directory (its ``.hydra/config.yaml``); no exported student is needed yet."""
    from tdd_lab.validate import ConfigError

    if not (path / ".hydra" / "config.yaml").exists():
        raise ConfigError(f"run_dir: {path / '.hydra' / 'config.yaml'} not found: pass a training run directory "
                          "(start the watcher once training has started)")
    return path


def check_watch_keys(cfg) -> None:
    from tdd_lab.validate import ConfigError

    bad = [k for k in SETTING_KEYS if cfg.get(k) is not None]
    if bad:
        raise ConfigError(f"watch=true evaluates checkpoints at the run's own setting (the keys of its metrics.json);"
                          f" drop {', '.join(f'{k}={cfg[k]}' for k in bad)}")
    if not cfg.poll_seconds or cfg.poll_seconds <= 0:
        raise ConfigError(f"poll_seconds must be > 0, got {cfg.poll_seconds}")
    if cfg.watch_timeout is not None and cfg.watch_timeout <= 0:
        raise ConfigError(f"watch_timeout must be > 0 seconds or null (no limit), got {cfg.watch_timeout}")


def build_student_module(run_cfg):
    """The run's ``DistillationModule`` (teacher included) with the run's components: what a checkpoint's
    weights are loaded into. No data is read and no data path is checked (the watcher may run elsewhere)."""
    import pytorch_lightning as pl

    from tdd_lab.train import build_module
    from tdd_lab.validate import Components, instantiate

    parts = Components(**{g: instantiate(run_cfg[g], g) for g in ("strategy", "guidance", "loss", "sampler",
                                                                   "student", "target")}, evaluator=None,
                       adversarial=instantiate(run_cfg.adversarial, "adversarial") if "adversarial" in run_cfg else None)
    pl.seed_everything(int(run_cfg.seed), verbose=False)
    module, _ = build_module(run_cfg, parts)
    return module, parts


class WatchLog:
    """What a watcher has done: ``watch.json`` (the state a restart continues from), ``watch.csv`` and W&B."""

    def __init__(self, run: Path, run_cfg, use_wandb: bool):
        self.run, self.path = run, run / STATE_FILE
        self.state = json.loads(self.path.read_text()) if self.path.exists() else {}
        self.state.setdefault("evaluated", {})
        self.state.setdefault("checkpoints", {})
        self.wandb = self._init_wandb(run_cfg) if use_wandb else None

    @property
    def steps(self) -> set[int]:
        return {int(s) for s in self.state["evaluated"]}

    def _init_wandb(self, run_cfg):
        from tdd_lab.evaluate import wandb_target

        target = wandb_target(run_cfg, self.run)
        if target is None:
            return None
        import wandb

        project, group, mode = target
        self.state.setdefault("wandb_id", uuid.uuid4().hex[:8])  # a restarted watcher continues this W&B run
        atomic_write_json(self.path, self.state)
        return wandb.init(project=project, group=group, job_type="watch", dir=str(self.run), mode=mode,
                          name=f"{self.run.name}-watch", id=self.state["wandb_id"], resume="allow",
                          config={"run_dir": str(self.run)}, tags=["watch"], reinit="finish_previous")

    def record(self, step: int, checkpoint: Path, results: dict[str, float]) -> None:
        from tdd_lab.evaluate import append_rows

        self.state["evaluated"][str(step)] = results
        self.state["checkpoints"][str(step)] = checkpoint.name
        atomic_write_json(self.path, self.state)  # first: a restart must not evaluate this step again
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
        append_rows(self.run / CSV_FILE, [{"time": stamp, "step": step, "checkpoint": checkpoint.name, "key": k,
                                           "value": v} for k, v in results.items()], CSV_COLUMNS)
        if self.wandb is not None:
            self.wandb.log(results, step=step, commit=True)  # written now, not when a later step arrives

    def finish(self, status: str) -> None:
        self.state["status"] = status
        atomic_write_json(self.path, self.state)
        if self.wandb is not None:
            self.wandb.finish()


def watch(cfg) -> dict[str, Any]:
    """Evaluate ``cfg.run_dir``'s checkpoints until training has finished (or ``watch_timeout``); returns
    {"status": "finished" | "timeout", "evaluated": [steps this call evaluated], "final": {key: value} | None}."""
    import torch
    from omegaconf import OmegaConf

    from tdd_lab.evaluate import check_app_keys, run_config
    from tdd_lab.validate import ConfigError, check_evaluator, instantiate

    if OmegaConf.is_missing(cfg, "run_dir"):
        raise ConfigError("run_dir: required, the training run to watch (run_dir=logs/train/runs/...)")
    check_app_keys(cfg)
    check_watch_keys(cfg)
    run = locate_training_run(Path(str(cfg.run_dir)))
    run_cfg = run_config(run, cfg)
    check_evaluator(run_cfg.metrics, "metrics")
    if run_cfg.get("cpu_threads") is not None:  # the training run's CPU numerics (tdd_lab.utils.threads)
        torch.set_num_threads(int(run_cfg.cpu_threads))
    evaluator = instantiate(run_cfg.metrics, "metrics")
    module, parts = build_student_module(run_cfg)  # the teacher, once
    module.to(cfg.device).eval()
    try:
        parts.guidance.student_sampling(float(evaluator.guidance_scale))
    except ValueError as e:
        raise ConfigError(str(e)) from None

    wlog = WatchLog(run, run_cfg, bool(cfg.wandb))
    if wlog.steps:
        log.info("watch: steps %s already evaluated (%s)", sorted(wlog.steps), wlog.path)
    scanner = CheckpointScanner(run / "checkpoints")
    evaluated, status, done, last_new = [], None, None, time.monotonic()
    try:
        while status is None:
            for step, path in sorted(scanner.scan().items()):
                if step in wlog.steps:
                    continue
                try:
                    ckpt = read_checkpoint(path)
                except Exception as e:  # replaced or removed since the scan: the next poll sees the new file
                    log.warning("watch: %s changed before it was read (%s); next poll", path, e)
                    continue
                if int(ckpt["global_step"]) != step:
                    continue
                load_weights(module, ckpt)
                del ckpt
                results, _ = evaluator.evaluate_student(module.student, module.teacher, parts.guidance, parts.sampler,
                                                        cfg.device)
                wlog.record(step, path, results)
                evaluated.append(step)
                last_new = time.monotonic()
                print(f"step {step} ({path.name}): " + ", ".join(f"{k} {v:.4g}" for k, v in results.items()),
                      flush=True)
            done = training_done(run)
            if done is not None:
                final = int(done["final_step"])
                if final in wlog.steps:
                    status = "finished"
                    break
                if final not in scanner.scan():  # written before the marker: it will never come
                    raise ConfigError(f"training finished at step {final} but {run / 'checkpoints'} holds no "
                                      "checkpoint of that step (train with callbacks=default: FinalStepCheckpoint "
                                      "saves the final step)")
            if cfg.watch_timeout is not None and time.monotonic() - last_new > cfg.watch_timeout:
                status = "timeout"
                break
            time.sleep(float(cfg.poll_seconds))
    finally:
        wlog.finish(status or "interrupted")
    final = wlog.state["evaluated"].get(str(done["final_step"])) if status == "finished" else None
    return {"status": status, "evaluated": evaluated, "final": final, "state": str(wlog.path)}
