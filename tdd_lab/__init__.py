"""tdd_lab: Target-Driven Distillation experiments (arXiv 2409.01347)."""

__version__ = "0.1.0"
