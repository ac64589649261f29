"""Data modules. Batches are dicts ``{"x0": (B, ...), "label": (B,)}``; the teacher turns them into conditions."""

from tdd_lab.data.image_folder import ImageFolderDataModule
from tdd_lab.data.modules import DigitsDataModule, GMMDataModule
from tdd_lab.data.webdataset import WebDatasetDataModule

__all__ = ["DigitsDataModule", "GMMDataModule", "ImageFolderDataModule", "WebDatasetDataModule"]
