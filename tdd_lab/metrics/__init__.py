"""Evaluation metrics: the embedded experiments' own (digits, gmm2d) and real-model FID/KID/CLIP."""

from tdd_lab.metrics.base import Metrics
from tdd_lab.metrics.clip import CLIPScore
from tdd_lab.metrics.digits import DigitsMetrics
from tdd_lab.metrics.fid import CleanFID, TorchmetricsFID, TorchmetricsKID
from tdd_lab.metrics.gmm import GMMMetrics
from tdd_lab.metrics.paired import TeacherDistance
from tdd_lab.metrics.preference import HPSv2, PickScore
from tdd_lab.metrics.suite import MetricSuite

__all__ = ["CLIPScore", "CleanFID", "DigitsMetrics", "GMMMetrics", "HPSv2", "MetricSuite", "Metrics", "PickScore",
           "TeacherDistance", "TorchmetricsFID", "TorchmetricsKID"]
