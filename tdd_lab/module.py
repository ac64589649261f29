"""The distillation LightningModule: composes teacher, solver, strategy, guidance, loss and student.

One training step (TDD_SPEC section 3):
  x_t = a_t x0 + s_t eps;  student (x0_hat, eps_hat) at (x_t, t, c)  ->  pred = F(x_t, t -> s)
  teacher cond+uncond in one 2B forward, CFG ("w + 1" form), one solver step t -> t'
  target net at (x_{t'}, t', c) under no_grad  ->  target = F(x_{t'}, t' -> s);  loss(pred, target)
No option names are inspected here: every choice is an object with a small contract.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import grad_norm

from tdd_lab.guidance.base import Guidance, cfg_combine, concat_conditions
from tdd_lab.losses import DistillationLoss
from tdd_lab.prediction import to_x0_eps
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
    ):
        super().__init__()
        self.teacher, self.solver, self.strategy = teacher, solver, strategy
        self.guidance, self.loss_fn = guidance, loss
        self.student_factory = student
        # a w-embedding input changes the network's architecture, so it cannot share the teacher's weights
        init = teacher.student_network(share_weights=student.shares_base and not guidance.embedding_dim)
        if guidance.embedding_dim:  # LCM-style w-embedding input, zero-initialised
            init = init.with_time_cond(guidance.embedding_dim)
        self.student = student.build(init)
        self.target = target.bind(self.student)
        self._optimizer, self._lr_scheduler = optimizer, lr_scheduler
        self.channels_last, self.compile_nets = channels_last, compile
        self.check_finite, self.seed = check_finite, seed
        if gradient_checkpointing:
            enabled = [m.enable_gradient_checkpointing() for m in self.student.modules()
                       if hasattr(m, "enable_gradient_checkpointing") and hasattr(m, "_supports_gradient_checkpointing")]
            if not enabled:
                raise ValueError("model.gradient_checkpointing: the student network has no diffusers model to checkpoint")
        self._fast_paths_applied = False

    @property
    def schedule(self):
        return self.teacher.schedule

    def setup(self, stage: str) -> None:
        self.teacher.to(self.device)
        # once on the device, so the strategies' per-grid caches hit every step (no rebuild, no sync)
        self.solver.grid = self.solver.grid.to(self.device)
        self.solver.grid_prev = self.solver.grid_prev.to(self.device)
        self.apply_fast_paths()

    def apply_fast_paths(self) -> None:
        """channels_last and torch.compile on the student and on the teacher's network (if it has one)."""
        if self._fast_paths_applied:
            return
        teacher_net = getattr(self.teacher, "net", None)
        nets = [self.student] + ([teacher_net] if isinstance(teacher_net, torch.nn.Module)
                                 and teacher_net is not self.student else [])
        for net in nets:
            if self.channels_last:
                net.to(memory_format=torch.channels_last)
            if self.compile_nets:
                net.compile()
        self._fast_paths_applied = True

    def on_fit_start(self) -> None:
        self.teacher.to(self.device)
        # setup() can run before the module reaches its device: place the grids here, once, so the
        # strategies' per-grid caches hit every step (no per-step copies, rebuilds or host syncs)
        self.solver.grid = self.solver.grid.to(self.device)
        self.solver.grid_prev = self.solver.grid_prev.to(self.device)
        # identical weights on every rank (seeded before building), different noise/timesteps/drops per rank
        # (on resume the RNG states come from the checkpoint instead: RNGStateCallback)
        if self.trainer.ckpt_path is None:
            rank_seed = self.seed + self.global_rank
            pl.seed_everything(rank_seed, workers=True, verbose=False)
            log.info("rank %d: training seed %d", self.global_rank, rank_seed)

    # -- the student as (x0, eps) and as an epsilon model ----------------------------------------------
    def student_predict(self, net, x_t, t, cond, timestep_cond=None):
        """Run ``net`` at integer timesteps t (B,) and convert to (x0_hat, eps_hat)."""
        raw = net(x_t, self.schedule.model_time(t), cond, timestep_cond)
        a, s = self.schedule.alpha_sigma(t, x_t.ndim, x_t.dtype)
        return to_x0_eps(raw, x_t, a, s, self.teacher.prediction_type)

    def student_eps(self, x_t, t, cond, timestep_cond=None):
        """Epsilon of the student."""
        return self.student_predict(self.student, x_t, t, cond, timestep_cond)[1]

    def student_denoise(self, x_t, t, cond, timestep_cond=None):
        """(x0_hat, eps_hat) of the student: the model function of the samplers (flow samplers need x0)."""
        return self.student_predict(self.student, x_t, t, cond, timestep_cond)

    # -- training ----------------------------------------------------------------------------------
    def distillation_loss(self, batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The consistency-distillation loss of one batch and health statistics (no logging, no host syncs)."""
        x0, cond = self.teacher.prepare_batch(batch)
        b, dev = x0.shape[0], x0.device
        g = self.guidance.prepare(cond, self.teacher.null_like(cond))
        t, t_prev = self.solver.sample_start(b, device=dev)                       # (B,), (B,)
        grid = self.solver.grid if self.solver.grid.device == dev else self.solver.grid.to(dev)
        s = self.strategy.sample(t_prev, grid)                                   # (B,)
        noise = torch.randn_like(x0)
        x_t = self.schedule.add_noise(x0, noise, t)                              # (B, ...)

        x0_s, eps_s = self.student_predict(self.student, x_t, t, g.cond, g.w_embedding)
        pred = self.strategy.consistency(x_t, t, s, x0_s, eps_s, self.schedule)

        with torch.no_grad():
            if self.guidance.needs_uncond:
                x0_tc, eps_tc = self.teacher.denoise(                            # one 2B forward
                    torch.cat([x_t, x_t]), torch.cat([t, t]), concat_conditions(g.cond, g.uncond))
                (x0_c, x0_u), (eps_c, eps_u) = x0_tc.chunk(2), eps_tc.chunk(2)
                x0_w, eps_w = cfg_combine(x0_c, x0_u, g.w), cfg_combine(eps_c, eps_u, g.w)
            else:                                                                # w = 0: the conditional branch only
                x0_w, eps_w = self.teacher.denoise(x_t, t, g.cond)
            x_prev = self.solver.step(x_t, t, t_prev, x0_w.to(x_t.dtype), eps_w.to(x_t.dtype))
            x0_tg, eps_tg = self.student_predict(self.target, x_prev, t_prev, g.cond, g.w_embedding)
            target = self.strategy.consistency(x_prev, t_prev, s, x0_tg, eps_tg, self.schedule)

        loss = self.loss_fn(pred, target)
        stats = {"train/target_t_mean": s.float().mean(), "train/t_mean": t.float().mean(),
                 "train/dropped_frac": g.dropped.float().mean()}
        if "skipped" in batch:  # unreadable samples dropped by the collate
            stats["data/skipped"] = torch.as_tensor(float(batch["skipped"]), device=dev)
        return loss, stats

    def training_step(self, batch, batch_idx):
        if set(batch) <= {"skipped"}:  # every sample of the batch was unreadable: skip the step
            log.warning("step %d: all %d samples of the batch were unreadable; batch skipped",
                        self.global_step, batch.get("skipped", 0))
            return None
        loss, stats = self.distillation_loss(batch)
        if self.check_finite and not torch.isfinite(loss):  # one host sync; stops before backward/step
            raise NonFiniteLossError(
                f"non-finite loss ({loss.item()}) at step {self.global_step}: stopping before the optimizer step; "
                "the last checkpoint was written before this step and is intact")
        self.log("train/loss", loss, prog_bar=True)
        self.log_dict(stats)
        self.log("train/lr", self.optimizers().param_groups[0]["lr"])
        return loss

    def on_before_optimizer_step(self, optimizer) -> None:
        norms = grad_norm(self.student, norm_type=2)
        if "grad_2.0_norm_total" in norms:
            self.log("train/grad_norm", norms["grad_2.0_norm_total"])

    def optimizer_step(self, *args, **kwargs) -> None:
        super().optimizer_step(*args, **kwargs)
        # right after the optimizer step, before callbacks' on_train_batch_end (checkpoints see the update)
        self.target.update(self.student)

    def configure_optimizers(self):
        opt = self._optimizer(trainable_parameters(self.student))
        if self._lr_scheduler is None:
            return opt
        return {"optimizer": opt, "lr_scheduler": {"scheduler": self._lr_scheduler(opt), "interval": "step"}}

    def export_network(self) -> torch.nn.Module:
        """The student as a plain network (LoRA merged) for export."""
        return self.student_factory.export_network(self.student)

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
