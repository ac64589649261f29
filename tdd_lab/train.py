"""Train a few-step student: ``python -m tdd_lab.train [+experiment=...] [group=option] [key=value]``.

Config -> instantiate -> teacher / solver / strategy / guidance / loss / student / sampler objects
-> DistillationModule -> Trainer -> evaluation -> logger and ``metrics.json`` -> ``student/`` export.
Returns the configured ``optimized_metric`` for sweepers.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import hydra
import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf

from tdd_lab.data.image_folder import DataQualityError
from tdd_lab.export import export_student
from tdd_lab.module import DistillationModule, NonFiniteLossError
from tdd_lab.outputs import finish_loggers, log_results, make_loggers, print_table, save_sample_grids
from tdd_lab.utils.cache import atomic_write_json
from tdd_lab.validate import Components, ConfigError, instantiate, preflight

log = logging.getLogger(__name__)


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
        **cfg.get("model", {}),
    )
    return module, instantiate(cfg.data, "data", teacher=teacher)


def resume_path(cfg: DictConfig, out_dir: Path) -> str | None:
    """``resume=auto``: the run dir's last checkpoint if there is one; ``resume=PATH``: that checkpoint."""
    resume = cfg.get("resume")
    if resume == "auto":
        last = out_dir / "checkpoints" / "last.ckpt"
        return str(last) if last.exists() else None
    return None if resume is None else str(resume)


def train(cfg: DictConfig) -> dict[str, float]:
    """Fit, evaluate, log and export; returns the metrics written to ``metrics.json``."""
    parts = preflight(cfg)  # every cheap component built once, before any weights are read
    pl.seed_everything(cfg.seed, workers=True)
    out_dir = Path(cfg.paths.output_dir)
    module, datamodule = build_module(cfg, parts)
    evaluator, sampler, guidance = parts.evaluator, parts.sampler, parts.guidance
    loggers = make_loggers(cfg)
    callbacks = [hydra.utils.instantiate(c) for c in (cfg.get("callbacks") or {}).values()]
    trainer: pl.Trainer = hydra.utils.instantiate(cfg.trainer, logger=loggers or False, callbacks=callbacks)
    for lg in loggers:
        lg.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))

    trainer.fit(module, datamodule=datamodule, ckpt_path=resume_path(cfg, out_dir))
    if not trainer.is_global_zero:
        return {}

    # Lightning's teardown moves the module back to the CPU after fit: evaluate on the training device
    # (one .to() places student, target, solver grids, schedule tables and the frozen teacher)
    device = trainer.strategy.root_device
    module.to(device).eval()
    teacher = module.teacher
    student_metrics, student_samples = evaluator.evaluate_student(module.student, teacher, guidance, sampler, device)
    teacher_metrics, teacher_samples = evaluator.evaluate_teacher(teacher, guidance, sampler, device)
    metrics = {**student_metrics, **teacher_metrics, "train/steps": float(trainer.global_step)}
    if "train/loss" in trainer.callback_metrics:
        metrics["train/loss_final"] = float(trainer.callback_metrics["train/loss"])
    atomic_write_json(out_dir / "metrics.json", metrics)

    images = save_sample_grids(out_dir / "samples", teacher, evaluator, student_samples, teacher_samples)
    log_results(loggers, metrics, images, evaluator.steps)
    if cfg.get("export", True):
        guider, _ = guidance.student_sampling(evaluator.guidance_scale)
        export_student(out_dir / "student", module.student, module.student_factory, teacher, sampler, guidance,
                       {"sampler": sampler.describe(), "steps": evaluator.steps, "guidance_scale": guider.guidance_scale},
                       kohya=bool(cfg.get("export_kohya", False)), fused=bool(cfg.get("export_fused", False)))
    print_table(metrics, evaluator.steps, evaluator.teacher_steps)
    finish_loggers(loggers, "success")
    return metrics


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    torch.set_float32_matmul_precision("high")
    if cfg.get("cpu_threads") is not None:  # the same numbers on any core count (tdd_lab.utils.threads)
        torch.set_num_threads(int(cfg.cpu_threads))
    try:
        metrics = train(cfg)
    except (ConfigError, NonFiniteLossError, DataQualityError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
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
    main()
