"""Inference schedulers usable inside stock diffusers pipelines."""

from tdd_lab.schedulers.scheduling_flow_tdd import FlowTDDScheduler
from tdd_lab.schedulers.scheduling_tdd import TDDScheduler, TDDSchedulerOutput

__all__ = ["FlowTDDScheduler", "TDDScheduler", "TDDSchedulerOutput"]
