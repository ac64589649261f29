"""Periodic checkpoints that always include the last step, so the final checkpoint holds the weights the run's
final evaluation used (what ``python -m tdd_lab.evaluate watch=true`` evaluates last).

Lightning's ``ModelCheckpoint`` saves every ``every_n_train_steps`` steps; when ``max_steps`` is not a multiple
of it, the steps after the last multiple are never written (its ``on_train_end`` saves ``last.ckpt`` only when
no checkpoint was saved at all). Files are written atomically by the trainer's checkpoint IO
(:class:`tdd_lab.utils.checkpoint_io.AtomicCheckpointIO`, ``conf/trainer/default.yaml``).
"""

from __future__ import annotations

import pytorch_lightning as pl
from pytorch_lightning.callbacks import ModelCheckpoint


class FinalStepCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` that also saves (top-k and ``last.ckpt``) at the end of training when the final step
    has not been saved yet."""

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_end(trainer, pl_module)
        if trainer.fast_dev_run or self._last_global_step_saved == trainer.global_step:
            return
        candidates = self._monitor_candidates(trainer)
        self._save_topk_checkpoint(trainer, candidates)  # step_<N>.ckpt (no-op with save_top_k=0)
        self._save_last_checkpoint(trainer, candidates)  # last.ckpt (no-op without save_last)
