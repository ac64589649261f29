"""A fixed number of CPU intra-op threads, so CPU computations give the same numbers on any core count.

torch splits reductions (matmul, convolution) over its intra-op threads; a different thread count sums in a
different order, and over thousands of training steps the rounding differences grow into different models:
40 steps of the digits teacher's pretraining give different weights with 1 and 2 threads on one machine. The
embedded teachers, the digit classifier and CPU training runs therefore fix the count (2: the dev machines'
default, so caches built before this setting stay valid). What stays machine-specific: the CPU's vector
instruction set (AVX2 / AVX-512 kernels of oneDNN and MKL) and the library versions.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch

DETERMINISTIC_THREADS = 2


@contextmanager
def fixed_threads(n: int | None = DETERMINISTIC_THREADS):
    """Run the block with ``n`` torch intra-op threads (None: leave the setting), then restore it."""
    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(before)
