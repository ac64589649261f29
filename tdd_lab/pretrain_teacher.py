"""Pretrain (or find in the cache) an embedded teacher: ``python -m tdd_lab.pretrain_teacher teacher=digits``."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> None:
    teacher = hydra.utils.instantiate(cfg.teacher)
    teacher.student_network()  # builds the cached student init where the teacher has one
    print(f"teacher ready{f': {teacher.path}' if teacher.path else ''}")


if __name__ == "__main__":
    main()
