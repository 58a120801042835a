"""Classifier-free guidance with CrossFlow's binary indicator, as a wrapper around a velocity.

Time convention: t in [0, 1]; t = 0 is the SOURCE (text latent z0 from the variational
encoder) and t = 1 is the TARGET (image latent z1). No Gaussian noise source ever.

The source z0 already carries the text, so CFG cannot drop the condition. Instead the model
receives an indicator per sample: 1 = conditional (z1 belongs to z0), 0 = unconditional
(trained on pairs whose target image was swapped for another image of the batch, see
`null_pairs`). At sampling v = v_u + s * (v_c - v_u) = s * v_c + (1 - s) * v_u.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from crossflow_core.errors import CrossflowError
from crossflow_core.solvers import VelocityFn

IndicatorVelocityFn = Callable[[Tensor, Tensor, Tensor], Tensor]
"""v(x [B, ...], t [B], indicator [B] long: 1 = conditional, 0 = unconditional) -> [B, ...]."""

COND = 1
UNCOND = 0


def cfg_velocity(model_fn: IndicatorVelocityFn, scale: float) -> VelocityFn:
    """Wrap an indicator-conditioned model into a guided velocity v(x [B, ...], t [B]).

    For scale != 1 the conditional and unconditional velocities come from ONE forward of
    batch 2B: x and t are concatenated twice with indicators [1]*B + [0]*B, the output is split
    and combined as v_u + scale * (v_c - v_u). Scale 1 returns exactly the conditional velocity
    and skips the unconditional half (one forward of batch B). Scale 0 is the unconditional one.
    """
    scale = float(scale)
    if not math.isfinite(scale):
        raise CrossflowError(f"guidance scale must be finite, got {scale}; the official value is 7")

    if scale == 1.0:

        def conditional(x: Tensor, t: Tensor) -> Tensor:
            ind = torch.full((x.shape[0],), COND, dtype=torch.long, device=x.device)
            return model_fn(x, t, ind)

        return conditional

    def guided(x: Tensor, t: Tensor) -> Tensor:
        b = x.shape[0]
        ind = torch.cat(
            [
                torch.full((b,), COND, dtype=torch.long, device=x.device),
                torch.full((b,), UNCOND, dtype=torch.long, device=x.device),
            ]
        )
        out = model_fn(torch.cat([x, x]), torch.cat([t, t]), ind)
        if out.shape[0] != 2 * b:
            raise CrossflowError(
                f"the model returned batch {out.shape[0]} for an input batch of {2 * b}; "
                "it must return one velocity per input sample"
            )
        v_c, v_u = out[:b], out[b:]
        return v_u + scale * (v_c - v_u)

    return guided


def null_pairs(batch: int, p: float, generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
    """Choose unconditional ("null") training pairs as the official CrossFlow code does.

    Each sample is null with probability p (independent Bernoulli). If at most one is chosen,
    none is null. Otherwise the targets of the null subset are rolled by one within it: the k-th
    null sample takes the target of the (k+1)-th (the last takes the first's), so no null sample
    keeps its own target.

    Returns indicator [B] long (1 = conditional, 0 = null) and perm [B] long such that
    `x1[perm]` are the targets to train on (perm is the identity on conditional samples).
    Both are on the generator's device (CPU when None).
    """
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 0:
        raise CrossflowError(f"batch must be a non-negative int, got {batch!r}")
    if not (0.0 <= p <= 1.0):
        raise CrossflowError(f"the null-pair probability must be in [0, 1], got {p!r}; official: 0.1")
    device = generator.device if generator is not None else torch.device("cpu")
    chosen = torch.rand(batch, generator=generator, device=device) < p
    indicator = torch.full((batch,), COND, dtype=torch.long, device=device)
    perm = torch.arange(batch, device=device)
    idx = chosen.nonzero().flatten()
    if idx.numel() <= 1:
        return indicator, perm
    indicator[idx] = UNCOND
    perm[idx] = idx.roll(-1)
    return indicator, perm
