"""Train a few-step student: ``python -m tdd_lab.train [+experiment=...] [group=option] [key=value]``.

Config -> pre-flight checks -> teacher / solver / strategy / guidance / loss / student / sampler objects
-> DistillationModule -> Trainer -> ``student/`` export -> evaluation -> logger and ``metrics.json``.
The student is exported before it is evaluated, so a failing evaluation never loses it. SIGTERM (cluster
preemption) saves ``checkpoints/last.ckpt`` and exits with 143 within a step. Prints the run directory at the
end and returns the configured ``optimized_metric`` for sweepers.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import hydra
import pytorch_lightning as pl
import torch
from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.utilities.exceptions import SIGTERMException

from tdd_lab.callbacks import SaveOnSigterm
from tdd_lab.callbacks.validation import validation_callback
from tdd_lab.data.image_folder import DataQualityError
from tdd_lab.export import export_student
from tdd_lab.module import DistillationModule, NonFiniteLossError
from tdd_lab.outputs import finish_loggers, log_results, make_loggers, print_table, save_sample_grids
from tdd_lab.utils.cache import atomic_write_json
from tdd_lab.validate import (
    JOB_STARTED,
    TRAIN_KEYS,
    Components,
    ConfigError,
    check_keys,
    exit_2_on_bad_command_line,
    instantiate,
    preflight,
)
from tdd_lab.watch import clear_training_done, mark_training_done

log = logging.getLogger(__name__)
SIGTERM_EXIT = 143  # 128 + SIGTERM: the shell's code for a process ended by SIGTERM


class Preempted(Exception):
    """Training stopped on SIGTERM after saving a resumable checkpoint."""


def build_module(cfg: DictConfig, parts: Components) -> tuple[DistillationModule, Any]:
    """Load the teacher and compose the LightningModule from the pre-flight components; the data module."""
    teacher = instantiate(cfg.teacher, "teacher")
    try:  # the sampler must handle the teacher's schedule family: fail now, not after training
        parts.sampler.check_schedule(teacher.schedule.diffusers_config())
    except ValueError as e:
        raise ConfigError(f"sampler: {e}") from None
    module = DistillationModule(
        teacher=teacher,
        student=parts.student,
        target=parts.target,
        solver=instantiate(cfg.solver, "solver")(schedule=teacher.schedule),
        strategy=parts.strategy,
        guidance=parts.guidance,
        loss=parts.loss,
        optimizer=instantiate(cfg.optimizer, "optimizer"),
        lr_scheduler=instantiate(cfg.lr_scheduler, "lr_scheduler") if cfg.get("lr_scheduler") else None,
        seed=int(cfg.seed),
        adversarial=parts.adversarial,
        gradient_clip_val=cfg.trainer.get("gradient_clip_val"),  # applied by the module under manual optimization
        gradient_clip_algorithm=cfg.trainer.get("gradient_clip_algorithm"),
        **cfg.get("model", {}),
    )
    return module, instantiate(cfg.data, "data", teacher=teacher)


def resume_path(cfg: DictConfig, out_dir: Path) -> str | None:
    """``resume=auto``: the newest of the run dir's ``checkpoints/last.ckpt`` and Lightning's SLURM requeue
    checkpoints (``hpc_ckpt_*.ckpt``), if any; ``resume=PATH``: that checkpoint."""
    resume = cfg.get("resume")
    if resume == "auto":
        found = [p for p in [out_dir / "checkpoints" / "last.ckpt", *out_dir.glob("hpc_ckpt_*.ckpt")] if p.exists()]
        return str(max(found, key=lambda p: p.stat().st_mtime)) if found else None
    return None if resume is None else str(resume)


def checkpointing_warning(cfg: DictConfig) -> str | None:
    """A warning when ``resume=auto`` is asked of a run that writes no periodic checkpoint (``debug=smoke``
    turns them off): only SIGTERM would leave one, so a crash could never be resumed."""
    if cfg.get("resume") != "auto":
        return None
    callbacks = (cfg.get("callbacks") or {}).values()
    periodic = any(issubclass(get_class(str(c._target_)), ModelCheckpoint) for c in callbacks if "_target_" in c)
    if periodic and cfg.trainer.get("enable_checkpointing", True) is not False:
        return None
    return ("resume=auto, but this run writes no checkpoints (trainer.enable_checkpointing=false or no "
            "ModelCheckpoint in callbacks, as under debug=smoke): a crash cannot be resumed, only SIGTERM leaves "
            "checkpoints/last.ckpt; add callbacks=default trainer.enable_checkpointing=true to checkpoint the run")


def make_trainer(cfg: DictConfig, module, loggers, callbacks) -> pl.Trainer:
    """``cfg.trainer`` instantiated for ``module``: under manual optimization (adversarial=pcm) the module clips
    itself (Lightning refuses a Trainer ``gradient_clip_val`` then), and DDP finds unused parameters, because each
    backward of the adversarial schedule leaves one side unused (the heads on a student update, the student on a
    discriminator-only batch) and DDP's reducer otherwise fails on the second step."""
    manual = {} if module.automatic_optimization else {"gradient_clip_val": None}
    if not module.automatic_optimization and cfg.trainer.get("strategy") == "ddp":
        manual["strategy"] = "ddp_find_unused_parameters_true"
    return hydra.utils.instantiate(cfg.trainer, logger=loggers or False, callbacks=callbacks, **manual)


def fit(cfg: DictConfig, module, datamodule, loggers, out_dir: Path, parts: Components | None = None) -> pl.Trainer:
    """``Trainer.fit`` with the configured callbacks plus :class:`SaveOnSigterm` and, given the run's ``parts`` and
    ``validation.every_n_steps`` > 0, :class:`ValidationCallback` (learning curves); raises :class:`Preempted`."""
    on_sigterm = SaveOnSigterm(out_dir / "checkpoints")
    callbacks = [hydra.utils.instantiate(c) for c in (cfg.get("callbacks") or {}).values()] + [on_sigterm]
    validation = validation_callback(cfg, parts.sampler, parts.guidance, out_dir) if parts is not None else None
    if validation is not None:
        callbacks.append(validation)
    trainer = make_trainer(cfg, module, loggers, callbacks)
    for lg in loggers:
        lg.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
    ckpt = resume_path(cfg, out_dir)
    if cfg.get("resume") == "auto":
        log.info("resume=auto: %s", f"continuing from {ckpt}" if ckpt else f"no checkpoint in {out_dir} yet, starting")
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt)
    except SIGTERMException:
        path, step = on_sigterm.saved or (None, trainer.global_step)
        saved = f"checkpoint {path}: continue with resume=auto" if path else "no checkpoint saved"
        raise Preempted(f"stopped by SIGTERM at step {step}; {saved}") from None
    return trainer


def export(cfg: DictConfig, module, parts: Components, out_dir: Path) -> Path | None:
    """Write ``out_dir/student`` (unless ``export=false``) with the evaluator's recommended settings."""
    if not cfg.get("export", True):
        return None
    evaluator, sampler, guidance = parts.evaluator, parts.sampler, parts.guidance
    guider, _ = guidance.student_sampling(evaluator.guidance_scale)
    return export_student(out_dir / "student", module.student, module.student_factory, module.teacher, sampler,
                          guidance, {"sampler": sampler.describe(), "steps": evaluator.steps,
                                     "guidance_scale": guider.guidance_scale},
                          kohya=bool(cfg.get("export_kohya", False)), fused=bool(cfg.get("export_fused", False)))


def split_evaluation(trainer: pl.Trainer) -> bool:
    """Whether the final evaluation's sampling is split over the ranks of this run (Lightning's DDP process group is
    still up after fit): then every rank takes part (:meth:`~tdd_lab.evaluation.Evaluator.split_over_ranks`).
    DDP only: an FSDP-sharded student would need every rank in each forward, and the ranks' batch counts differ."""
    import torch.distributed as dist
    from pytorch_lightning.strategies import DDPStrategy

    return (isinstance(trainer.strategy, DDPStrategy) and trainer.world_size > 1 and dist.is_available()
            and dist.is_initialized())


def train(cfg: DictConfig) -> dict[str, float]:
    """Fit, export, evaluate and log; returns the metrics written to ``metrics.json``."""
    parts = preflight(cfg)  # every cheap component built once, before any weights are read
    warning = checkpointing_warning(cfg)
    if warning:
        log.warning(warning)
    pl.seed_everything(cfg.seed, workers=True)
    out_dir = Path(cfg.paths.output_dir)
    module, datamodule = build_module(cfg, parts)
    evaluator, sampler, guidance = parts.evaluator, parts.sampler, parts.guidance
    loggers = make_loggers(cfg, resume_path(cfg, out_dir))  # a continued run continues its W&B run
    clear_training_done(out_dir)  # a continued run (resume=auto) is not finished until this fit returns
    trainer = fit(cfg, module, datamodule, loggers, out_dir, parts)
    main = trainer.is_global_zero
    if not main and not split_evaluation(trainer):
        return {}
    if main:
        mark_training_done(out_dir, trainer.global_step)  # before evaluation: a checkpoint watcher may stop now

    # Lightning's teardown moves the module back to the CPU after fit: evaluate on the training device
    # (one .to() places student, target, solver grids, schedule tables and the frozen teacher)
    device = trainer.strategy.root_device
    module.to(device).eval()
    teacher = module.teacher
    exported = export(cfg, module, parts, out_dir) if main else None  # first: a failing evaluation must not lose it
    try:
        with evaluator.split_over_ranks():  # multi-process runs: every rank samples its share, rank 0 scores
            student_metrics, student_samples = evaluator.evaluate_student(module.student, teacher, guidance, sampler,
                                                                          device)
            teacher_metrics, teacher_samples = evaluator.evaluate_teacher(teacher, guidance, sampler, device)
    except Exception:
        kept = (f"the trained student is exported in {exported}; `python -m tdd_lab.evaluate run_dir={out_dir}` "
                "evaluates it again" if exported else f"the checkpoints in {out_dir / 'checkpoints'} hold the student")
        log.error("evaluation failed after training: %s", kept)
        raise
    if not main:
        return {}
    metrics = {**student_metrics, **teacher_metrics, "train/steps": float(trainer.global_step)}
    if "train/loss" in trainer.callback_metrics:
        metrics["train/loss_final"] = float(trainer.callback_metrics["train/loss"])
    atomic_write_json(out_dir / "metrics.json", metrics)

    images = save_sample_grids(out_dir / "samples", teacher, evaluator, student_samples, teacher_samples,
                               sampler.describe(), guidance)
    log_results(loggers, metrics, images, evaluator.steps)
    print_table(metrics, evaluator.steps, evaluator.teacher_steps)
    finish_loggers(loggers, "success")
    print(f"run directory: {out_dir.resolve()}")
    return metrics


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    JOB_STARTED.set()
    torch.set_float32_matmul_precision("high")
    try:
        check_keys(cfg, TRAIN_KEYS)
        if cfg.get("cpu_threads") is not None:  # the same numbers on any core count (tdd_lab.utils.threads)
            torch.set_num_threads(int(cfg.cpu_threads))
        metrics = train(cfg)
    except (ConfigError, NonFiniteLossError, DataQualityError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except Preempted as e:
        print(f"{e} (run directory: {Path(cfg.paths.output_dir).resolve()})", file=sys.stderr)
        sys.exit(SIGTERM_EXIT)
    value = metrics.get(cfg.get("optimized_metric"))
    return None if value is None else float(value)


def accept_plus_groups(argv: list[str], groups=("experiment", "hparams_search")) -> list[str]:
    """Let ``+experiment=x`` mean ``experiment=x``.

    The defaults list holds ``experiment: null`` before ``debug`` (so ``debug=smoke`` shrinks any
    experiment); Hydra would reject ``+experiment=x`` as a second value, or append it after
    ``debug``. Both spellings therefore select the slot in the defaults list.
    """
    return [a[1:] if any(a.startswith(f"+{g}=") for g in groups) else a for a in argv]


if __name__ == "__main__":
    sys.argv = accept_plus_groups(sys.argv)
    exit_2_on_bad_command_line(main, "tdd_lab.train")
