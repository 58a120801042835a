"""The CrossFlow probability path: a straight line from the text latent to the image latent.

Time convention (used everywhere in crossflow): t in [0, 1]; t = 0 is the SOURCE, the text
latent z0 drawn from the Text Variational Encoder; t = 1 is the TARGET, the image latent z1.
There is never a Gaussian noise source.

    z_t = t * z1 + (1 - (1 - sigma_min) * t) * z0          (so z_0 = z0, z_1 = z1 + sigma_min * z0)
    v   = d z_t / dt = z1 - (1 - sigma_min) * z0           (constant along the path)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from crossflow_core.errors import CrossflowError

TimeKind = Literal["logit_normal", "uniform", "zero"]
TIME_KINDS: tuple[str, ...] = ("logit_normal", "uniform", "zero")


@dataclass(frozen=True)
class PathSample:
    """One draw from the path, the seam between path and loss.

    x0: source (text latent) [B, ...]; x1: target (image latent) [B, ...];
    t: times [B] in [0, 1] (0 = source, 1 = target); xt: point on the path [B, ...];
    target: the velocity d xt / dt that the model must predict [B, ...].
    """

    x0: Tensor
    x1: Tensor
    t: Tensor
    xt: Tensor
    target: Tensor


def batch_times(t: Tensor, batch: int) -> Tensor:
    """One time per sample: a scalar or [1] t becomes [batch]; a [batch] t is returned as is."""
    return t.expand(batch) if t.dim() == 0 or t.shape[0] == 1 else t


def _expand_time(t: Tensor, like: Tensor) -> Tensor:
    """Reshape t [B] to [B, 1, ..., 1] so that it broadcasts against `like` [B, ...]."""
    return t.reshape(t.shape[0], *([1] * (like.dim() - 1))).to(like.dtype)


class CrossFlowPath:
    """Linear path with a tiny sigma_min, as in CrossFlow (t = 0 text latent, t = 1 image latent).

    `sample(x0, x1, t)` returns z_t = t*x1 + (1 - (1 - sigma_min)*t)*x0 and the target velocity
    x1 - (1 - sigma_min)*x0. With sigma_min = 0 this is exact rectified-flow interpolation.
    """

    def __init__(self, sigma_min: float = 1e-5) -> None:
        if not (math.isfinite(sigma_min) and 0.0 <= sigma_min < 1.0):
            raise CrossflowError(
                f"sigma_min must be in [0, 1), got {sigma_min!r}; use a small value such as 1e-5"
            )
        self.sigma_min = float(sigma_min)

    def __repr__(self) -> str:
        return f"CrossFlowPath(sigma_min={self.sigma_min})"

    def interpolate(self, x0: Tensor, x1: Tensor, t: Tensor) -> Tensor:
        """z_t for x0, x1 [B, ...] and t [B] (t = 0 source, t = 1 target) -> [B, ...]."""
        tt = _expand_time(t, x0)
        return tt * x1 + (1.0 - (1.0 - self.sigma_min) * tt) * x0

    def velocity(self, x0: Tensor, x1: Tensor) -> Tensor:
        """The (time-independent) target velocity x1 - (1 - sigma_min) * x0 [B, ...]."""
        return x1 - (1.0 - self.sigma_min) * x0

    def sample(self, x0: Tensor, x1: Tensor, t: Tensor) -> PathSample:
        """Point and target velocity on the path.

        x0: source text latents [B, ...]; x1: target image latents [B, ...] (same shape);
        t: [B] times in [0, 1], t = 0 the source and t = 1 the target.
        """
        if x0.shape != x1.shape:
            raise CrossflowError(
                f"source and target latents must have the same shape, got {tuple(x0.shape)} "
                f"and {tuple(x1.shape)}; make the text VE output the image-latent shape"
            )
        if t.dim() != 1 or t.shape[0] != x0.shape[0]:
            raise CrossflowError(
                f"t must have shape [B] = [{x0.shape[0]}], got {tuple(t.shape)}; pass one time per sample"
            )
        return PathSample(x0=x0, x1=x1, t=t, xt=self.interpolate(x0, x1, t), target=self.velocity(x0, x1))


def sample_time(
    batch: int,
    kind: TimeKind,
    generator: torch.Generator | None,
    device: torch.device | str | None = None,
    mean: float = 0.0,
    std: float = 1.0,
) -> Tensor:
    """Training times t [batch] in the open interval (0, 1) (t = 0 source, t = 1 target).

    kind "logit_normal": t = sigmoid(mean + std * n), n ~ N(0, 1) (the official CrossFlow choice);
    kind "uniform": t ~ U(0, 1) (mean/std ignored); kind "zero": t = 0 exactly, every sample (the
    flow then learns only the velocity at the source, x1 - x0: one Euler step from t = 0 is plain
    regression, the paper's "Regression" baseline with the same network). Other values are
    clamped into [eps, 1 - eps] with
    eps = float32 machine epsilon so that 0 and 1 never occur. The draw is made on the generator's
    device (CPU when None) and moved to `device`, so one seed gives the same times everywhere.
    """
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 0:
        raise CrossflowError(f"batch must be a non-negative int, got {batch!r}")
    if kind not in TIME_KINDS:
        raise CrossflowError(f"unknown time sampling {kind!r}; choose one of {', '.join(TIME_KINDS)}")
    if not (math.isfinite(mean) and math.isfinite(std) and std > 0):
        raise CrossflowError(f"logit-normal needs a finite mean and std > 0, got mean={mean}, std={std}")
    gen_device = generator.device if generator is not None else torch.device("cpu")
    if kind == "zero":
        return torch.zeros(batch, device=device)
    if kind == "logit_normal":
        n = torch.randn(batch, generator=generator, device=gen_device, dtype=torch.float32)
        t = torch.sigmoid(mean + std * n)
    else:
        t = torch.rand(batch, generator=generator, device=gen_device, dtype=torch.float32)
    eps = torch.finfo(torch.float32).eps
    t = t.clamp(eps, 1.0 - eps)
    return t.to(device) if device is not None else t
