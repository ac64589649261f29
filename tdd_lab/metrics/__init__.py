"""Evaluation metrics of the embedded experiments (real-model FID/CLIP come with the sweep layer)."""

from tdd_lab.metrics.base import Metrics
from tdd_lab.metrics.digits import DigitsMetrics
from tdd_lab.metrics.gmm import GMMMetrics

__all__ = ["DigitsMetrics", "GMMMetrics", "Metrics"]
