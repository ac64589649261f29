"""Pre-flight: build the cheap components once and check the config before any model is built.

:func:`preflight` instantiates every component whose constructor validates its own ranges (strategy,
guidance, loss, sampler, student, target, metrics), checks the cross-component constraints and the
paths, and returns the built components, which ``train`` then uses (nothing is built twice). A bad
value raises :class:`ConfigError` whose message names the config key and the allowed values;
``python -m tdd_lab.train`` prints it and exits with 2. :func:`instantiate` is the one place that
unwraps Hydra's ``InstantiationException`` into the error that caused it. :func:`check_types` catches
wrong-type overrides (``optimizer.lr=fast``) against the signature of each ``_target_``, and
:func:`check_keys` the plain keys of the apps, so they fail as one line naming the key, not as a traceback.
"""

from __future__ import annotations

import inspect
import math
import sys
import threading
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hydra
from hydra.errors import InstantiationException
from hydra.utils import get_class
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from tdd_lab.timesteps import check_grid_size
from tdd_lab.utils.hub import check_pretrained
from tdd_lab.utils.validation import ConfigError

__all__ = ["JOB_STARTED", "Components", "ConfigError", "check_evaluator", "check_keys", "check_pretrained",
           "check_types", "check_value", "exit_2_on_bad_command_line", "instantiate", "preflight", "root_cause"]


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


# ---- value types: a wrong-type override is one line naming the key, before anything is built ------------
_KIND_WORDS = {frozenset({int}): "an integer", frozenset({bool}): "true or false"}


def check_value(key: str, value: Any, kinds: set[type]) -> None:
    """Raise :class:`ConfigError` unless ``value`` fits ``kinds`` (a subset of int, float, bool; None is allowed).

    A string or a bool where a number is expected, a string where a bool is expected and a fraction where
    only an integer is accepted are errors; ``{int, float}`` accepts both numbers.
    """
    if value is None or not kinds:
        return
    if isinstance(value, bool):
        ok = bool in kinds
    elif isinstance(value, int):
        ok = int in kinds or float in kinds
    elif isinstance(value, float):
        ok = math.isfinite(value) and (float in kinds or (int in kinds and value.is_integer()))
    else:  # a string (or a list/dict) where a number or a bool is expected
        ok = False
    if not ok:
        raise ConfigError(f"{key}: expected {_KIND_WORDS.get(frozenset(kinds), 'a number')}, got {value!r}")


def _numeric_kinds(annotation: Any, default: Any) -> set[type]:
    """The number/bool kinds a parameter takes: from its annotation when that names only numbers, bools and
    None (``int``, ``Optional[float]``, ``int | float``), else from its default's type (ints then also take
    floats); empty when neither says (such a value is not checked)."""
    args = typing.get_args(annotation) if typing.get_origin(annotation) in (typing.Union, types.UnionType) \
        else (annotation,)
    if args and all(a in (int, float, bool, type(None)) for a in args) and any(a is not type(None) for a in args):
        return {a for a in args if a is not type(None)}
    if isinstance(default, bool):
        return {bool}
    if isinstance(default, (int, float)):
        return {int, float} if isinstance(default, int) else {float}
    return set()


def _parameter_kinds(target: str) -> dict[str, set[type]]:
    """{parameter: kinds} of the class or function ``target`` names; empty when it cannot be imported."""
    try:
        obj = get_class(target)
    except Exception:  # noqa: BLE001 - an unimportable target is instantiate's error to report
        try:
            obj = hydra.utils.get_method(target)
        except Exception:  # noqa: BLE001
            return {}
    fn = obj.__init__ if inspect.isclass(obj) else obj
    try:
        params = inspect.signature(obj).parameters
    except (TypeError, ValueError):
        return {}
    try:
        hints = typing.get_type_hints(fn)
    except Exception:  # noqa: BLE001 - unresolvable annotations: fall back to the defaults
        hints = {}
    return {name: _numeric_kinds(hints.get(name, p.annotation), p.default) for name, p in params.items()
            if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}


def _leaf(node: Any, key: Any) -> tuple[bool, Any]:
    """(resolved, value) of ``node[key]``; unresolved when missing (???) or its interpolation fails."""
    if OmegaConf.is_missing(node, key):
        return False, None
    try:
        return True, node[key]
    except OmegaConfBaseException:
        return False, None


def check_types(node: Any, key: str = "", extra: Mapping[str, str] | None = None) -> None:
    """Check every value under ``node`` against the parameters of the ``_target_`` that receives it.

    ``trainer.max_steps=abc``, ``optimizer.lr=fast`` or ``data.batch_size=two`` raise
    ``ConfigError("<key>: expected ...")`` here instead of a traceback from inside the component.
    ``extra`` maps keys of nodes without a ``_target_`` to the class they are passed to
    (``{"model": "tdd_lab.module.DistillationModule"}``).
    """
    if isinstance(node, ListConfig):
        for i in range(len(node)):
            ok, value = _leaf(node, i)
            if ok and isinstance(value, (DictConfig, ListConfig)):
                check_types(value, f"{key}[{i}]")
        return
    if not isinstance(node, DictConfig):
        return
    target = node.get("_target_") if "_target_" in node else (extra or {}).get(key)
    kinds = _parameter_kinds(str(target)) if target else {}
    for name in node.keys():
        name = str(name)
        if name.startswith("_") or (not key and name in ("hydra", "paths")):
            continue
        ok, value = _leaf(node, name)
        full = f"{key}.{name}" if key else name
        if not ok:
            continue
        if isinstance(value, (DictConfig, ListConfig)):
            check_types(value, full, extra)
        elif name in kinds:
            check_value(full, value, kinds[name])


def check_keys(cfg: DictConfig, schema: Mapping[str, set[type]]) -> None:
    """Check the plain keys of an app's config (``{"steps": {int}, ...}``); list values are checked item by item."""
    for key, kinds in schema.items():
        ok, value = _leaf(cfg, key) if key in cfg else (False, None)
        if not ok:
            continue
        items = list(value) if isinstance(value, ListConfig) else [value]
        for item in items:
            check_value(key, item, kinds)


def check_evaluator(node: Any, prefix: str = "metrics") -> None:
    """Settings of an :class:`~tdd_lab.evaluation.Evaluator` node that would only fail after training.

    ``num_samples`` >= 2 (FID and spreads need two samples), ``batch_size`` and ``teacher_steps`` >= 1, at
    least one step count, a guidance scale >= 0; the metrics' own ``ode_steps`` and ``batch_size`` >= 1.
    """
    def get(n, k):
        return _leaf(n, k)[1] if k in n else None

    for k, low in (("num_samples", 2), ("batch_size", 1), ("teacher_steps", 1)):
        v = get(node, k)
        if v is not None and int(v) < low:
            raise ConfigError(f"{prefix}.{k} must be >= {low}, got {v}")
    if "steps" in node and not list(get(node, "steps") or []):
        raise ConfigError(f"{prefix}.steps: give at least one step count, e.g. [2, 4, 8]")
    g = get(node, "guidance_scale")
    if g is not None and float(g) < 0:
        raise ConfigError(f"{prefix}.guidance_scale must be >= 0 (diffusers' convention, 1 = no CFG), got {g}")

    def walk(n, key):
        if isinstance(n, DictConfig):
            for name in n.keys():
                ok, v = _leaf(n, name)
                if not ok:
                    continue
                if isinstance(v, DictConfig):
                    walk(v, f"{key}.{name}")
                elif name in ("ode_steps", "batch_size") and isinstance(v, int) and not isinstance(v, bool) and v < 1:
                    raise ConfigError(f"{key}.{name} must be >= 1, got {v}")

    if "metrics" in node and isinstance(get(node, "metrics"), DictConfig):
        walk(get(node, "metrics"), f"{prefix}.metrics")


def check_validation(cfg: DictConfig, num_ddim_timesteps: int) -> None:
    """The ``validation`` block (in-training learning curves): its values, the Evaluator settings it gives the run's
    ``metrics`` config, its step counts within the distillation grid, and a strategy it can run under."""
    from tdd_lab.callbacks.validation import ValidationSettings

    settings = ValidationSettings.from_config(cfg.get("validation"))
    if not settings.every_n_steps:
        return
    node = settings.evaluator_config(cfg.metrics)
    check_evaluator(node, "validation")
    for k in node.steps:
        if not 1 <= int(k) <= num_ddim_timesteps:
            raise ConfigError(f"validation.steps: {k} is outside [1, solver.num_ddim_timesteps={num_ddim_timesteps}]")
    strategy = cfg.trainer.get("strategy")
    target = str(strategy.get("_target_", "")) if isinstance(strategy, DictConfig) else str(strategy or "")
    if "fsdp" in target.lower():
        raise ConfigError("validation: in-training validation samples the student on rank 0 alone, which a sharded "
                          "(FSDP) student cannot do; set validation.every_n_steps=0 under trainer=fsdp")


# every top-level key of conf/train.yaml that is not a component
TRAIN_KEYS = {"seed": {int}, "cpu_threads": {int}, "export": {bool}, "export_kohya": {bool}, "export_fused": {bool}}


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
    adversarial: Any = None  # tdd_lab.adversarial.Adversarial (None: a config without the group, as adversarial=none)


def preflight(cfg: DictConfig) -> Components:
    """Build the cheap components and check the config; raises :class:`ConfigError` on the first bad value.

    Reads no model weights (only checks that paths exist), so it takes well under a second.
    """
    check_keys(cfg, TRAIN_KEYS)
    check_types(cfg, extra={"model": "tdd_lab.module.DistillationModule",
                            "validation": "tdd_lab.callbacks.validation.ValidationSettings"})
    check_evaluator(cfg.metrics, "metrics")
    n = int(cfg.solver.get("num_ddim_timesteps", 50))
    t_train = int(cfg.teacher.get("num_train_timesteps", 1000))
    try:
        check_grid_size(t_train, n)
    except ValueError as e:
        raise ConfigError(f"solver: {e}") from None
    # the evaluator is built last (below): its metrics may train and cache a feature network on first use (the
    # digit classifier), and every other check must fail in seconds before that
    parts = Components(**{g: instantiate(cfg[g], g) for g in ("strategy", "guidance", "loss", "sampler", "student",
                                                                 "target")},
                       evaluator=None,
                       adversarial=instantiate(cfg.adversarial, "adversarial") if "adversarial" in cfg else None)
    accumulate = int(cfg.trainer.get("accumulate_grad_batches", 1))
    if parts.adversarial is not None and parts.adversarial.trains and accumulate != 1:
        raise ConfigError("trainer.accumulate_grad_batches: adversarial training uses manual optimization, which "
                          "Lightning runs without gradient accumulation; set it to 1")
    strat = cfg.strategy
    for key in ("num_inference_steps_max", "num_phases"):
        if key in strat and int(strat[key]) > n:
            raise ConfigError(f"strategy.{key}={strat[key]} exceeds solver.num_ddim_timesteps={n}")
    for k in cfg.metrics.get("steps") or ():  # check_evaluator has checked that they are integers
        if not 1 <= int(k) <= n:
            raise ConfigError(f"metrics.steps: {k} is outside [1, solver.num_ddim_timesteps={n}]")
    check_validation(cfg, n)
    if int(cfg.trainer.get("max_steps", 1)) <= 0:
        raise ConfigError(f"trainer.max_steps must be > 0, got {cfg.trainer.max_steps}")
    if "batch_size" in cfg.data and int(cfg.data.batch_size) <= 0:
        raise ConfigError(f"data.batch_size must be > 0, got {cfg.data.batch_size}")
    if cfg.teacher.get("pretrained"):
        check_pretrained(str(cfg.teacher.pretrained))
    teacher_cls = get_class(cfg.teacher._target_)
    if getattr(parts.guidance, "dropped_caption", "null") == "empty_prompt":
        from tdd_lab.teachers.latent import DiffusersTeacher

        if not issubclass(teacher_cls, DiffusersTeacher):
            raise ConfigError(f"guidance.dropped_caption=empty_prompt: {teacher_cls.__name__} is conditioned on class "
                              "labels; the ablation (the public SDXL script's encoded-\"\" dropped captions) needs a "
                              "text-conditioned diffusers teacher")
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
        check_captions(cfg.data)
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
    parts.evaluator = instantiate(cfg.metrics, "metrics")
    return parts


def check_captions(data: DictConfig) -> None:
    """An image-folder ``data`` node: its caption files parse, and an uncaptioned folder needs
    ``data.allow_uncaptioned=true`` (it would train unconditionally)."""
    from tdd_lab.data.image_folder import ImageFolderDataModule, ImageFolderDataset

    if not issubclass(get_class(str(data._target_)), ImageFolderDataModule):
        return
    try:
        ImageFolderDataset(str(data.root), allow_uncaptioned=bool(data.get("allow_uncaptioned", False)))
    except ValueError as e:
        raise ConfigError(str(e)) from None


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
