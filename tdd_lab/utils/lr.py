"""Learning-rate schedules as picklable callables (for ``torch.optim.lr_scheduler.LambdaLR``)."""

from __future__ import annotations


class ConstantWithWarmup:
    """Linear warm-up over ``warmup_steps`` optimizer steps, then constant."""

    def __init__(self, warmup_steps: int = 0):
        self.warmup_steps = warmup_steps

    def __call__(self, step: int) -> float:
        return min(1.0, (step + 1) / self.warmup_steps) if self.warmup_steps > 0 else 1.0
