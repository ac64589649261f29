"""The distillation LightningModule: composes teacher, solver, strategy, guidance, loss and student.

One training step (TDD_SPEC section 3):
  x_t = a_t x0 + s_t eps;  student denoiser (x0_hat, eps_hat) at (x_t, t, c)  ->  pred = F(x_t, t -> s)
  teacher denoiser through the batch's guider (cond+uncond in one 2B forward), one solver step t -> t'
  target denoiser at (x_{t'}, t', c) under no_grad  ->  target = F(x_{t'}, t' -> s);  loss(pred, target)
No option names are inspected here: every choice is an object with a small contract.

The adversarial term (``adversarial=pcm``, TDD-adv) switches to manual optimization: a second optimizer for the
discriminator's heads, the schedule of updates given by the adversarial component. ``adversarial=none`` keeps
Lightning's automatic optimization and the exact numbers of the plain recipe.

Placement: the student denoiser, target and solver are submodules (schedule tables and grids are
buffers); the frozen teacher is kept out of the state dict but follows every ``.to()`` of this module
(:meth:`_apply`), so nothing is placed by hand and no step checks devices.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import grad_norm

from tdd_lab.adversarial import Adversarial, NoAdversarial
from tdd_lab.denoiser import Denoiser
from tdd_lab.guidance.base import Guidance
from tdd_lab.losses import DistillationLoss
from tdd_lab.solvers.base import TeacherSolver
from tdd_lab.strategies.base import TargetStrategy
from tdd_lab.students import StudentFactory, trainable_parameters
from tdd_lab.targets import TargetNetwork
from tdd_lab.teachers.base import Teacher

log = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite."""


class DistillationModule(pl.LightningModule):
    """Consistency distillation of ``teacher`` into a few-step student."""

    def __init__(
        self,
        teacher: Teacher,
        student: StudentFactory,
        target: TargetNetwork,
        solver: TeacherSolver,
        strategy: TargetStrategy,
        guidance: Guidance,
        loss: DistillationLoss,
        optimizer: Callable[..., torch.optim.Optimizer],            # partial: optimizer(params)
        lr_scheduler: Callable[..., Any] | None = None,              # partial: scheduler(optimizer)
        channels_last: bool = False,                                 # fast path: NHWC memory format for convnets
        compile: bool = False,                                       # fast path: torch.compile student and teacher net
        check_finite: bool = True,                                   # stop on a NaN/inf loss, naming the step
        gradient_checkpointing: bool = False,                        # recompute activations in backward (memory)
        seed: int = 0,                                               # base seed; rank r draws with seed + r
        adversarial: Adversarial | None = None,                      # discriminator term (None: none)
        gradient_clip_val: float | None = None,                      # manual optimization only (the trainer's value)
        gradient_clip_algorithm: str | None = None,                  # manual optimization only: norm | value
    ):
        super().__init__()
        # the frozen teacher is deliberately not a submodule: no state-dict entries, no train() switching
        object.__setattr__(self, "teacher", teacher)
        self.solver, self.strategy = solver, strategy
        self.guidance, self.loss_fn = guidance.bind(teacher), loss
        self.student_factory = student
        # a w-embedding input changes the network's architecture, so it cannot share the teacher's weights
        init = teacher.student_network(share_weights=student.shares_base and not guidance.embedding_dim)
        if guidance.embedding_dim:  # LCM-style w-embedding input, zero-initialised
            init = init.with_time_cond(guidance.embedding_dim)
        self.student: Denoiser = teacher.student_denoiser(student.build(init))
        self.target = target.bind(self.student)
        self._optimizer, self._lr_scheduler = optimizer, lr_scheduler
        self.check_finite, self.seed = check_finite, seed
        # a discriminator to train needs two optimizers: manual optimization (Lightning clips nothing itself then)
        self.adversarial = (adversarial or NoAdversarial()).bind(teacher)
        self.automatic_optimization = not self.adversarial.trains
        self.gradient_clip_val, self.gradient_clip_algorithm = gradient_clip_val, gradient_clip_algorithm
        self._d_optimizer: torch.optim.Optimizer | None = None
        if gradient_checkpointing:
            from diffusers import ModelMixin

            enabled = [m.enable_gradient_checkpointing() for m in self.student.modules()
                       if isinstance(m, ModelMixin) and m._supports_gradient_checkpointing]
            if not enabled:
                raise ValueError("model.gradient_checkpointing: the student network has no diffusers model to checkpoint")
        nets = [self.student.net] + ([teacher.denoiser.net] if teacher.denoiser.net is not self.student.net else [])
        for net in nets:  # fast paths (experiments/bench)
            if channels_last:
                net.to(memory_format=torch.channels_last)
            if compile:
                net.compile()

    @property
    def schedule(self):
        return self.student.schedule

    @property
    def batches_consumed(self) -> int | None:
        """Training batches consumed so far where the adversarial schedule counts them (restored with the
        checkpoint), else None (the data position is then ``global_step`` x accumulation)."""
        return self.adversarial.batches_consumed()

    def _apply(self, fn, *args, **kwargs):
        """Every move of this module moves the frozen teacher too (it is not a submodule: no state-dict entries)."""
        super()._apply(fn, *args, **kwargs)
        self.teacher._apply(fn, *args, **kwargs)
        return self

    def on_fit_start(self) -> None:
        # identical weights on every rank (seeded before building), different noise/timesteps/drops per rank
        # (on resume the RNG states come from the checkpoint instead: RNGStateCallback)
        if self.trainer.ckpt_path is None:
            rank_seed = self.seed + self.global_rank
            pl.seed_everything(rank_seed, workers=True, verbose=False)
            log.info("rank %d: training seed %d", self.global_rank, rank_seed)

    # -- training ----------------------------------------------------------------------------------
    def distillation_loss(self, batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The consistency-distillation loss of one batch and health statistics (no logging, no host syncs)."""
        pred, target, _, _, stats = self.distillation_terms(batch)
        return self.loss_fn(pred, target), stats

    def distillation_terms(self, batch):
        """(pred, target, s, cond, stats) of one batch: the student's prediction at s (B, ...), the detached target at
        s (B, ...), the targets s (B,), the condition the student saw, health statistics."""
        conditioner = self.teacher.conditioner
        x0, cond = conditioner.prepare_batch(batch)
        b, dev = x0.shape[0], x0.device
        g = self.guidance.prepare(cond, conditioner.null_like(cond))
        t, t_prev = self.solver.sample_start(b, device=dev)                       # (B,), (B,)
        s = self.strategy.sample(t_prev, self.solver.grid)                       # (B,)
        noise = torch.randn_like(x0)
        x_t = self.schedule.add_noise(x0, noise, t)                              # (B, ...)

        x0_s, eps_s = self.student(x_t, t, g.cond, g.w_embedding)
        pred = self.strategy.consistency(x_t, t, s, x0_s, eps_s, self.schedule)

        with torch.no_grad():
            x0_w, eps_w = g.teacher_guider(self.teacher.denoiser, x_t, t, g.cond, g.uncond)
            x_prev = self.solver.step(x_t, t, t_prev, x0_w.to(x_t.dtype), eps_w.to(x_t.dtype))
            x0_tg, eps_tg = self.target(x_prev, t_prev, g.cond, g.w_embedding)
            target = self.strategy.consistency(x_prev, t_prev, s, x0_tg, eps_tg, self.schedule)

        stats = {"train/target_t_mean": s.float().mean(), "train/t_mean": t.float().mean(),
                 "train/dropped_frac": g.dropped.float().mean()}
        if "skipped" in batch:  # unreadable samples dropped by the collate
            stats["data/skipped"] = torch.as_tensor(float(batch["skipped"]), device=dev)
        return pred, target, s, g.cond, stats

    def training_step(self, batch, batch_idx):
        if set(batch) <= {"skipped"}:  # every sample of the batch was unreadable: skip the step
            log.warning("step %d: all %d samples of the batch were unreadable; batch skipped",
                        self.global_step, batch.get("skipped", 0))
            return None
        if not self.automatic_optimization:
            return self.adversarial_step(batch)
        loss, stats = self.distillation_loss(batch)
        self._check_finite(loss)
        self.log("train/loss", loss, prog_bar=True)
        self.log_dict(stats)
        self.log("train/lr", self.optimizers().param_groups[0]["lr"])
        return loss

    def _check_finite(self, loss: torch.Tensor) -> None:
        if self.check_finite and not torch.isfinite(loss):  # one host sync; stops before backward/step
            raise NonFiniteLossError(
                f"non-finite loss ({loss.item()}) at step {self.global_step}: stopping before the optimizer step; "
                "the last checkpoint was written before this step and is intact")

    def adversarial_step(self, batch) -> torch.Tensor:
        """One batch under manual optimization: the updates the adversarial schedule asks for.

        Student update: consistency loss + adv_weight x generator hinge loss (heads frozen), then the lr scheduler and
        the target (EMA) update, as the automatic path does after its optimizer step. Discriminator update: hinge loss
        on the detached target (real) and prediction (fake), stepped through the strategy but not counted in
        ``global_step``, so ``trainer.max_steps`` and checkpoint/validation intervals count student steps. All losses
        are computed before any update (one finiteness check); the student steps first, so the discriminator's
        in-place update never touches a graph still to be differentiated.
        """
        opt_s, opt_d = self.optimizers()
        update_d, update_g = self.adversarial.updates()
        with torch.set_grad_enabled(update_g):  # a discriminator-only batch needs no graph through the student
            pred, target, s, cond, stats = self.distillation_terms(batch)
            loss = self.loss_fn(pred, target)
        logs, total = {"train/loss": loss}, loss
        if update_g:
            logs["train/g_loss"] = self.adversarial.generator_loss(pred, s, cond)
            total = loss + self.adversarial.adv_weight * logs["train/g_loss"]
        if update_d:
            logs["train/d_loss"] = self.adversarial.discriminator_loss(target, pred, s, cond)
        self._check_finite(sum(logs.values()))
        self.log("train/loss", loss, prog_bar=True)
        self.log_dict({k: v.detach() for k, v in logs.items() if k != "train/loss"} | stats)
        self.log("train/lr", opt_s.param_groups[0]["lr"])
        if update_g:
            opt_s.zero_grad()
            self.manual_backward(total)
            opt_s.step()  # clipping: on_before_optimizer_step
            scheduler = self.lr_schedulers()
            if scheduler is not None:
                scheduler.step()
            self.target.update(self.student)
        if update_d:
            opt_d.zero_grad()
            self.manual_backward(logs["train/d_loss"])
            self.trainer.strategy.optimizer_step(opt_d.optimizer, closure=_no_closure, model=self)
        self.adversarial.advance()
        return total.detach()

    def on_before_optimizer_step(self, optimizer) -> None:
        if optimizer is self._d_optimizer:  # manual optimization: the heads' step
            self.clip_gradients(optimizer, self.gradient_clip_val, self.gradient_clip_algorithm)
            return
        norms = grad_norm(self.student, norm_type=2)
        if "grad_2.0_norm_total" in norms:
            self.log("train/grad_norm", norms["grad_2.0_norm_total"])
        if not self.automatic_optimization:  # after AMP unscaling and the norm log, as Lightning's automatic clipping
            self.clip_gradients(optimizer, self.gradient_clip_val, self.gradient_clip_algorithm)

    def optimizer_step(self, *args, **kwargs) -> None:
        super().optimizer_step(*args, **kwargs)
        # right after the optimizer step, before callbacks' on_train_batch_end (checkpoints see the update)
        self.target.update(self.student)

    def configure_optimizers(self):
        opt = self._optimizer(trainable_parameters(self.student))
        if not self.automatic_optimization:  # [student, heads]; the scheduler is stepped by adversarial_step
            self._d_optimizer = self.adversarial.make_optimizer()
            return [opt, self._d_optimizer], [] if self._lr_scheduler is None else [self._lr_scheduler(opt)]
        if self._lr_scheduler is None:
            return opt
        return {"optimizer": opt, "lr_scheduler": {"scheduler": self._lr_scheduler(opt), "interval": "step"}}

    # -- checkpoints: frozen weights are not written ----------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Keep only trainable student weights and the target's state (an SDXL LoRA checkpoint is MBs, not GBs).

        The frozen base weights come back from ``teacher.pretrained`` when the module is rebuilt.
        """
        names = {n for n, p in self.student.named_parameters() if not p.requires_grad}
        frozen = {f"student.{n}" for n in names} | {f"target.net.{n}" for n in names}  # EMA copies of frozen weights
        if names:
            checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k not in frozen}
            checkpoint["frozen_weights_omitted"] = len(frozen)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if checkpoint.get("frozen_weights_omitted"):
            names = {n for n, p in self.student.named_parameters() if not p.requires_grad}
            missing = {f"student.{n}" for n in names} | {f"target.net.{n}" for n in names}
            self.strict_loading = False
            absent = [k for k in self.state_dict() if k not in checkpoint["state_dict"] and k not in missing]
            if absent:
                raise RuntimeError(f"checkpoint lacks {len(absent)} trainable weights, e.g. {absent[:3]}")


def _no_closure() -> None:
    """The closure of an optimizer step whose backward already ran (manual optimization)."""
