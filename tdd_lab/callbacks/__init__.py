"""Lightning callbacks of tdd_lab."""

from tdd_lab.callbacks.preemption import SaveOnSigterm
from tdd_lab.callbacks.rng import RNGStateCallback
from tdd_lab.callbacks.validation import ValidationCallback

__all__ = ["RNGStateCallback", "SaveOnSigterm", "ValidationCallback"]
