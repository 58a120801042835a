"""Fixed-step ODE solvers that take a plain velocity function (not a model).

Time convention: t in [0, 1]; t = 0 is the SOURCE (text latent z0 from the variational
encoder) and t = 1 is the TARGET (image latent z1). Sampling integrates dx/dt = v(x, t) from
t0 = 0 to t1 = 1 in `steps` equal steps. No Gaussian noise source ever.

Methods:
- "euler": x_{n+1} = x_n + h v(x_n, t_n). First order, 1 evaluation per step.
- "heun":  explicit trapezoid (predictor-corrector), second order, 2 evaluations per step:
           k1 = v(x_n, t_n); k2 = v(x_n + h k1, t_n + h); x_{n+1} = x_n + h (k1 + k2) / 2.
           No evaluation is shared between steps (k2 is taken at the predicted point, not at
           x_{n+1}), so every step, the last included, costs exactly 2.

Gradients are not disabled here; wrap the call in `torch.inference_mode()` when sampling.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from crossflow_core.errors import CrossflowError

VelocityFn = Callable[[Tensor, Tensor], Tensor]
"""v(x [B, ...], t [B]) -> velocity [B, ...]; t = 0 source (text), t = 1 target (image)."""

StepCallback = Callable[[int, float, Tensor], None]
"""callback(step, t, x): called after each step with step in 1..steps, the time reached, x [B, ...]."""

SOLVERS: tuple[str, ...] = ("euler", "heun")
_EVALS_PER_STEP = {"euler": 1, "heun": 2}


def _check(method: str, steps: int) -> None:
    if method not in SOLVERS:
        raise CrossflowError(f"unknown ODE solver {method!r}; choose one of {', '.join(SOLVERS)}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise CrossflowError(f"steps must be an int >= 1, got {steps!r}; e.g. 50 for Euler")


def nfe(method: str, steps: int) -> int:
    """Number of velocity evaluations `integrate(method=method, steps=steps)` makes.

    Euler: steps. Heun: 2 * steps (no evaluation is reused, see the module docstring).
    With CFG at scale != 1 each evaluation is one batched model forward of size 2B.
    """
    _check(method, steps)
    return _EVALS_PER_STEP[method] * steps


def _times(x: Tensor, value: float) -> Tensor:
    """A [B] tensor filled with `value`, on x's device and in x's dtype."""
    return torch.full((x.shape[0],), value, dtype=x.dtype, device=x.device)


def integrate(
    velocity: VelocityFn,
    x0: Tensor,
    steps: int,
    method: str = "euler",
    t0: float = 0.0,
    t1: float = 1.0,
    callback: StepCallback | None = None,
) -> Tensor:
    """Solve dx/dt = velocity(x, t) from x(t0) = x0 [B, ...] to t1; returns x(t1) [B, ...].

    The default t0 = 0 (source, text latent) to t1 = 1 (target, image latent) is sampling;
    t0 > t1 integrates backwards (image -> text latent). Grid times are t0 + (t1 - t0) * i / steps
    computed in double precision, so the last step lands on t1 exactly.
    """
    _check(method, steps)
    if not (math.isfinite(t0) and math.isfinite(t1)):
        raise CrossflowError(f"t0 and t1 must be finite, got t0={t0}, t1={t1}")
    if x0.dim() < 1:
        raise CrossflowError(f"x0 must have a batch dimension [B, ...], got shape {tuple(x0.shape)}")
    grid = [t0 + (t1 - t0) * i / steps for i in range(steps + 1)]
    x = x0
    for i in range(steps):
        ta, tb = grid[i], grid[i + 1]
        h = tb - ta
        k1 = velocity(x, _times(x, ta))
        if method == "euler":
            x = x + h * k1
        else:
            k2 = velocity(x + h * k1, _times(x, tb))
            x = x + (0.5 * h) * (k1 + k2)
        if callback is not None:
            callback(i + 1, tb, x)
    return x
