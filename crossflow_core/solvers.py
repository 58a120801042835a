"""Fixed-step ODE solvers that take a plain velocity function (not a model).

Time convention: t in [0, 1]; t = 0 is the SOURCE (text latent z0 from the variational
encoder) and t = 1 is the TARGET (image latent z1). Sampling integrates dx/dt = v(x, t) from
t0 = 0 to t1 = 1 in `steps` equal steps. No Gaussian noise source ever.

Methods:
- "euler": x_{n+1} = x_n + h v(x_n, t_n). First order, 1 evaluation per step.
- "heun":  EDM's Heun (Karras et al. 2022, Alg. 1): explicit trapezoid (predictor-corrector),
           k1 = v(x_n, t_n); k2 = v(x_n + h k1, t_n + h); x_{n+1} = x_n + h (k1 + k2) / 2,
           EXCEPT on a last step that lands on t = 1, which is an Euler step (no correction).
           Reason: training draws t from a logit-normal, which never reaches t = 1, so k2 there
           would query the model where it was never trained. Forward sampling (0 -> 1) thus
           evaluates only at grid times t_0 .. t_{N-1}, the same times the Euler sampler uses,
           and costs 2 * steps - 1 evaluations (no evaluation is shared between steps).
           Global order stays 2 (the one Euler step adds a local error h^2 / 2 * |x''(1)|, also
           O(h^2)); the error constant grows: for dx/dt = -x it is 2x plain Heun's, sign flipped.
           Any other end t1 != 1 keeps the correction on every step (2 * steps evaluations).
           Backwards (1 -> 0, image -> text latent) thus ends on a corrected step evaluated at
           t = 0: logit-normal training never draws t = 0 exactly either, but every sampler
           (Euler included) evaluates there first, so it is no new query; the backward run's
           own first evaluation at t = 1 is unavoidable, as it starts there.

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
_UNSEEN_END = 1.0
"""The target end t = 1: training never samples it, so Heun does not correct onto it."""


def _check(method: str, steps: int) -> None:
    if method not in SOLVERS:
        raise CrossflowError(f"unknown ODE solver {method!r}; choose one of {', '.join(SOLVERS)}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise CrossflowError(f"steps must be an int >= 1, got {steps!r}; e.g. 50 for Euler")


def _corrects_last(t1: float) -> bool:
    """Whether Heun's last step gets its correction: not when it lands on t = 1."""
    return t1 != _UNSEEN_END


def nfe(method: str, steps: int, t1: float = 1.0) -> int:
    """Number of velocity evaluations `integrate(method=method, steps=steps, t1=t1)` makes.

    Euler: steps. Heun: 2 * steps - 1 when integrating to t1 = 1 (sampling: the last step is
    Euler, see the module docstring), else 2 * steps. With CFG at scale != 1 each evaluation
    is one batched model forward of size 2B.
    """
    _check(method, steps)
    skipped = method == "heun" and not _corrects_last(t1)
    return _EVALS_PER_STEP[method] * steps - int(skipped)


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
    computed in double precision, so the last step lands on t1 exactly. With t1 = 1 Heun's last
    step is Euler, so t = 1 is never evaluated; `nfe(method, steps, t1)` counts the evaluations.
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
        if method == "euler" or (i == steps - 1 and not _corrects_last(t1)):
            x = x + h * k1
        else:
            k2 = velocity(x + h * k1, _times(x, tb))
            x = x + (0.5 * h) * (k1 + k2)
        if callback is not None:
            callback(i + 1, tb, x)
    return x
