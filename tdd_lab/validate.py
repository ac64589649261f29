"""Pre-flight: build the cheap components once and check the config before any model is built.

:func:`preflight` instantiates every component whose constructor validates its own ranges (strategy,
guidance, loss, sampler, student, target, metrics), checks the cross-component constraints and the
paths, and returns the built components, which ``train`` then uses (nothing is built twice). A bad
value raises :class:`ConfigError` whose message names the config key and the allowed values;
``python -m tdd_lab.train`` prints it and exits with 2. :func:`instantiate` is the one place that
unwraps Hydra's ``InstantiationException`` into the error that caused it.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hydra
from hydra.errors import InstantiationException
from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf

from tdd_lab.timesteps import check_grid_size
from tdd_lab.utils.hub import check_pretrained
from tdd_lab.utils.validation import ConfigError

__all__ = ["JOB_STARTED", "Components", "ConfigError", "check_pretrained", "exit_2_on_bad_command_line", "instantiate",
           "preflight", "root_cause"]


def root_cause(e: BaseException) -> BaseException:
    """The innermost cause of a chained exception (what Hydra's wrapper hides)."""
    while e.__cause__ is not None:
        e = e.__cause__
    return e


def instantiate(node: Any, key: str, *args, **kwargs):
    """``hydra.utils.instantiate(node, *args, **kwargs)``; a failure raises its cause, reported against ``key``.

    A missing file stays a ``FileNotFoundError`` (it names the path); an unknown parameter, an out-of-range
    value or an unloadable path becomes ``ConfigError("<key>: ...")``.
    """
    try:
        return hydra.utils.instantiate(node, *args, **kwargs)
    except InstantiationException as e:
        cause = root_cause(e)
        if isinstance(cause, (FileNotFoundError, ConfigError)):
            raise cause from None
        msg = str(cause)
        if isinstance(cause, TypeError) and "unexpected keyword argument" in msg:
            bad = msg.split("unexpected keyword argument")[-1].strip(" '\"")
            raise ConfigError(f"{key}: unknown parameter {key}.{bad}") from None
        if isinstance(cause, (ValueError, TypeError, OSError)):
            raise ConfigError(f"{key}: {msg}") from None
        raise


@dataclass
class Components:
    """The components built (and thereby validated) before any model: train uses these same objects."""

    strategy: Any
    guidance: Any
    loss: Any
    sampler: Any
    student: Any
    target: Any
    evaluator: Any


def preflight(cfg: DictConfig) -> Components:
    """Build the cheap components and check the config; raises :class:`ConfigError` on the first bad value.

    Reads no model weights (only checks that paths exist), so it takes well under a second.
    """
    n = int(cfg.solver.get("num_ddim_timesteps", 50))
    t_train = int(cfg.teacher.get("num_train_timesteps", 1000))
    try:
        check_grid_size(t_train, n)
    except ValueError as e:
        raise ConfigError(f"solver: {e}") from None
    parts = Components(**{g: instantiate(cfg[g], g) for g in ("strategy", "guidance", "loss", "sampler", "student",
                                                                 "target")},
                       evaluator=instantiate(cfg.metrics, "metrics"))
    strat = cfg.strategy
    for key in ("num_inference_steps_max", "num_phases"):
        if key in strat and int(strat[key]) > n:
            raise ConfigError(f"strategy.{key}={strat[key]} exceeds solver.num_ddim_timesteps={n}")
    for k in parts.evaluator.steps:
        if not 1 <= int(k) <= n:
            raise ConfigError(f"metrics.steps: {k} is outside [1, solver.num_ddim_timesteps={n}]")
    if int(cfg.trainer.get("max_steps", 1)) <= 0:
        raise ConfigError(f"trainer.max_steps must be > 0, got {cfg.trainer.max_steps}")
    if "batch_size" in cfg.data and int(cfg.data.batch_size) <= 0:
        raise ConfigError(f"data.batch_size must be > 0, got {cfg.data.batch_size}")
    if cfg.teacher.get("pretrained"):
        check_pretrained(str(cfg.teacher.pretrained))
    teacher_cls = get_class(cfg.teacher._target_)
    for fmt in ("kohya", "fused"):
        if cfg.get(f"export_{fmt}") and fmt not in teacher_cls.export_formats:
            raise ConfigError(f"export_{fmt}: {teacher_cls.__name__} students are exported as "
                              f"{', '.join(teacher_cls.export_formats)}; the {fmt} layout is not available")
    root = cfg.data.get("root")
    if root is not None:
        path = Path(str(root)).expanduser()
        if not path.is_dir():
            raise ConfigError(f"data.root: {str(path)!r} is not a directory")
        from tdd_lab.data.image_folder import IMAGE_EXTS

        n_images = sum(1 for p in path.rglob("*") if p.suffix.lower() in IMAGE_EXTS)
        if not n_images:
            raise ConfigError(f"data.root: {str(path)!r} holds no image ({', '.join(sorted(IMAGE_EXTS))})")
        if "batch_size" in cfg.data and n_images < int(cfg.data.batch_size):
            raise ConfigError(f"data.root: {str(path)!r} holds {n_images} images, fewer than "
                              f"data.batch_size={cfg.data.batch_size}")
    urls = cfg.data.get("urls")
    if urls is not None:
        from tdd_lab.data.webdataset import expand_urls

        try:
            expand_urls(OmegaConf.to_container(urls) if not isinstance(urls, str) else urls)
        except (FileNotFoundError, ValueError) as e:
            raise ConfigError(str(e)) from None
    resume = cfg.get("resume")
    if resume not in (None, "auto") and not Path(str(resume)).is_file():
        raise ConfigError(f"resume: checkpoint {str(resume)!r} not found (use a .ckpt path, 'auto' or null)")
    return parts


# ---- the Hydra apps' exit codes: all bad input exits with 2 ---------------------------------------------
JOB_STARTED = threading.Event()  # set by the apps' task functions: Hydra composed the command line


def exit_2_on_bad_command_line(app: Callable[[], Any], name: str) -> None:
    """Run the Hydra app ``app``; a command line that does not compose (an unknown key or option: Hydra prints
    why and exits 1 before any job starts) exits with 2, as all bad input does. A job that crashes keeps 1."""
    try:
        app()
    except SystemExit as e:
        if e.code == 1 and not JOB_STARTED.is_set():
            print(f"error: the command line does not compose (see above); `python -m {name} --help` lists the keys",
                  file=sys.stderr)
            sys.exit(2)
        raise
