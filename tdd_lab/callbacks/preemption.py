"""A resumable checkpoint when the run is told to stop (SIGTERM: SLURM preemption, ``scancel``, ``kill``).

Lightning's signal connector turns SIGTERM into a ``SIGTERMException`` at the end of the current training
step (its SLURM convention; ``OnExceptionCheckpoint`` is its own example of saving on it). This callback
writes ``<dirpath>/last.ckpt`` then, the file ``resume=auto`` continues from, so preemption loses at most
the step in flight; ``python -m tdd_lab.train`` then exits with 143 (128 + SIGTERM) within seconds.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytorch_lightning as pl
from pytorch_lightning.utilities.exceptions import SIGTERMException

log = logging.getLogger(__name__)


class SaveOnSigterm(pl.Callback):
    """On ``SIGTERMException`` save ``dirpath/last.ckpt``; :attr:`saved` is then (path, global step)."""

    def __init__(self, dirpath: str | Path):
        self.dirpath = Path(dirpath)
        self.saved: tuple[Path, int] | None = None

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        if not isinstance(exception, SIGTERMException):
            return  # other failures (a non-finite loss, a crash) must not overwrite the last good checkpoint
        path = self.dirpath / "last.ckpt"
        trainer.save_checkpoint(str(path))
        self.saved = (path, int(trainer.global_step))
        log.warning("SIGTERM: saved %s at step %d (resume=auto continues from it)", path, trainer.global_step)
