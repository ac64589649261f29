"""A training run's W&B record, read back with wandb's own reader (``wandb leet inspect --json``), across a resume.

A gmm2d run logging to W&B offline stops with an error at step 13 (its last checkpoint is at step 10) and is continued
with ``resume=auto``. The two processes write one W&B run (the id kept in ``<run dir>/wandb_id``), and together
their transaction logs hold the config, the summary keys of ``metrics.json``, the ``train/loss`` and ``val/...``
histories with each step once and none missing, the ``eval/by_steps`` table and the sample images.
(tests/test_wandb_sweep.py covers a sweep's group, tags and ablation config.)
"""

import json

import pytest
import pytorch_lightning as pl

from tdd_lab.outputs import wandb_records

from .conftest import compose_cfg, fast_overrides

RUN = ["callbacks=default", "trainer.enable_checkpointing=true", "callbacks.checkpoint.every_n_train_steps=10",
       "trainer.max_steps=25", "logger=wandb", "validation.every_n_steps=5", "validation.num_samples=20",
       "cpu_threads=1"]


class StopAtStep(pl.Callback):
    """Fail right after optimizer step ``step`` (a crash after the last checkpoint, with steps logged since)."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.global_step >= self.step:
            raise RuntimeError(f"stopped at step {trainer.global_step}")


def read_run(path) -> dict:
    """{"run", "config", "summary", "history"} of one ``run-<id>.wandb`` file."""
    out = {"run": None, "config": {}, "summary": {}, "history": []}
    for r in wandb_records(path):
        kind = r["type"]
        if kind == "run":
            out["run"] = r["run"]
            out["config"].update(r["run"].get("config", {}).get("update", {}))
        elif kind == "config":
            out["config"].update(r["config"].get("update", {}))
        elif kind == "summary":
            out["summary"].update(r["summary"].get("update", {}))
        elif kind == "history":
            out["history"].append(r["history"]["item"])
    return out


def steps_of(history: list[dict], prefix: str) -> list[int]:
    """The ``trainer/global_step`` of every history row holding a key that starts with ``prefix``."""
    return [int(h["trainer/global_step"]) for h in history
            if "trainer/global_step" in h and any(k.startswith(prefix) for k in h)]


def test_resumed_run_is_one_wandb_run_with_every_step_once(tmp_path, cache_dir):
    from tdd_lab.train import train

    run = tmp_path / "run"
    stop = "+callbacks.stop={_target_:tests.test_wandb_run.StopAtStep,step:13}"
    with pytest.raises(RuntimeError, match="stopped at step 13"):
        train(compose_cfg(fast_overrides("tdd_gmm2d") + RUN + [stop], run, cache_dir))
    run_id = (run / "wandb_id").read_text().strip()
    metrics = train(compose_cfg(fast_overrides("tdd_gmm2d") + RUN + ["resume=auto"], run, cache_dir))

    files = sorted(run.glob("wandb/offline-run-*/run-*.wandb"))
    assert [f.name for f in files] == [f"run-{run_id}.wandb"] * 2  # offline resume: a second log of the same run
    first, second = (read_run(f) for f in files)
    assert first["run"]["run_id"] == second["run"]["run_id"] == run_id and second["run"].get("resume") is True

    # history: each training step once, none missing; the first process's steps after the checkpoint are not repeated
    loss = steps_of(first["history"], "train/loss") + steps_of(second["history"], "train/loss")
    assert sorted(loss) == list(range(min(loss), 25 + 1)) and min(loss) <= 1
    assert max(steps_of(first["history"], "train/loss")) > 10  # logged past the checkpoint, then skipped on resume
    lr = steps_of(first["history"], "lr-") + steps_of(second["history"], "lr-")  # logged at a step's start
    assert sorted(lr) == list(range(min(lr), 25)) and max(steps_of(first["history"], "lr-")) > max(
        steps_of(first["history"], "train/loss"))  # the stopped step's lr was logged, its loss was not: both once
    for key in ("val/ode_error@2", "val/samples@4"):  # the learning curve and its sample grids: each step once
        assert sorted(steps_of(first["history"], key) + steps_of(second["history"], key)) == [0, 5, 10, 15, 20, 25]

    # config, summary (the keys of metrics.json), table and images
    assert second["config"]["strategy"]["_target_"].endswith("TDDStrategy") and "ablation" in second["config"]
    assert {k: second["summary"][k] for k in metrics} == pytest.approx(metrics)
    # the reader flattens media values: "eval/by_steps._type"
    assert any(h.get("eval/by_steps._type") == "table-file" for h in second["history"])
    images = {k.rsplit(".", 1)[0] for h in second["history"] for k, v in h.items()
              if k.endswith("._type") and "image" in str(v)}
    assert {"samples/student@2", "samples/student@4", "val/samples@2"} <= images, images
    assert json.loads((run / "metrics.json").read_text()) == metrics
