"""Process-wide numeric settings applied by the entry points (training, sampling).

Tiny weights of zero-initialised layers (adaLN-Zero gates, the output layer) and Adam's
second moments of their tiny gradients drift into subnormal floats, which x86 CPUs compute
on a slow microcode path: a training step of the shapes recipe went from 0.6 s to 7-10 s.
Flushing subnormals to zero removes that cliff; it changes results only below ~1e-38 and
stays deterministic.
"""

from __future__ import annotations

import torch


def configure_cpu_numerics() -> None:
    """Flush subnormal floats to zero on the CPU (a no-op where unsupported).

    The flag is per thread and new threads inherit it, so call this before torch's first
    parallel region (the CLI does it first thing); later calls still cover the calling thread.
    """
    torch.set_flush_denormal(True)
