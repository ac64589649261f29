"""Data modules. Batches are dicts ``{"x0": (B, ...), "label": (B,)}``; the teacher turns them into conditions."""

from tdd_lab.data.modules import DigitsDataModule, GMMDataModule

__all__ = ["DigitsDataModule", "GMMDataModule"]
