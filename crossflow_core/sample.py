"""Sampling a trained model: seeded noise, the guided ODE from t = 0 to t = 1.

`SampleSettings` is the recipe's `sample` section (`SampleConfig`); a command changes it with
`recipe.sample.with_overrides(steps=..., seed=...)`. Input i of a call is drawn with its own
generator seeded `settings.seed + i`, so a batch gives the same outputs as one input at a time.
The pipeline itself lives in `crossflow_core.pipeline` (re-exported here).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from crossflow_core.guidance import cfg_velocity
from crossflow_core.recipe import SampleConfig
from crossflow_core.solvers import integrate

SampleSettings = SampleConfig

__all__ = ["SampleSettings", "conditioned", "sample_latents", "seeded_noise"]  # + the lazy re-exports below


def seeded_noise(shape: tuple[int, ...], seeds: list[int]) -> Tensor:
    """eps [len(seeds), *shape] on the CPU, row i from a generator seeded seeds[i]."""
    rows = [torch.randn(shape, generator=torch.Generator().manual_seed(s)) for s in seeds]
    return torch.stack(rows) if rows else torch.empty(0, *shape)


def conditioned(flow: nn.Module, cond: Tensor | None):
    """flow(x, t, indicator) with `cond` [B, ...] repeated to x's batch (CFG doubles it)."""
    if cond is None:
        return lambda x, t, ind: flow(x, t, ind)
    return lambda x, t, ind: flow(
        x, t, ind, cond.repeat(x.shape[0] // cond.shape[0], *[1] * (cond.dim() - 1))
    )


@torch.inference_mode()
def sample_latents(flow: nn.Module, z0: Tensor, settings: SampleConfig, cond: Tensor | None = None) -> Tensor:
    """Integrate the guided velocity from z0 [B, C, H, W] (t = 0) to target latents (t = 1)."""
    velocity = cfg_velocity(conditioned(flow, cond), settings.cfg_scale)
    return integrate(velocity, z0, settings.steps, settings.solver)


def __getattr__(name: str):  # the pipeline imports this module: re-export it lazily
    if name in ("CrossFlowPipeline", "resolve_model_dir"):
        from crossflow_core import pipeline

        return getattr(pipeline, name)
    raise AttributeError(name)
