"""The trainable CrossFlow system (VE + flow network + L_enc head) and its loss step.

The training loop calls `system(batch, phase)` (forward = the loss step) and knows no flow maths
and no task. Phases: "joint" (L_FM + L_enc + lambda*KL, gradients from the flow reach the VE),
"ve" (VE pretraining: L_enc + lambda*KL only) and "flow" (VE frozen: L_FM only, z0 from the
frozen VE). Randomness (t, eps, null pairs, dropout) comes from torch's global RNG, which the
checkpointer saves, so a resumed run replays exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from crossflow_core.codecs.base import SourceBatch
from crossflow_core.guidance import null_pairs
from crossflow_core.losses import flow_matching_loss, kl_loss
from crossflow_core.model import build_flow_model
from crossflow_core.path import CrossFlowPath, sample_time
from crossflow_core.recipe import Recipe
from crossflow_core.ve_kinds import build_ve, cond_channels
from crossflow_core.ve_objectives import build_objective

Phase = Literal["joint", "ve", "flow"]


@dataclass(frozen=True)
class Batch:
    """One training batch: the source (what the VE reads) and the target latents [B, C, H, W]."""

    source: SourceBatch
    target: Tensor


@dataclass(frozen=True)
class LossOutput:
    """Scalar loss terms; `total` is what is back-propagated."""

    total: Tensor
    fm: Tensor
    enc: Tensor
    kl: Tensor

    def as_floats(self) -> dict[str, float]:
        terms = torch.stack([self.total, self.fm, self.enc, self.kl]).detach().float().cpu().tolist()
        return dict(zip(("total", "fm", "enc", "kl"), terms))


class CrossFlowSystem(nn.Module):
    """ve: source -> z0; flow: (z_t, t, indicator, cond) -> velocity; objective: L_enc (or None)."""

    def __init__(
        self,
        ve: nn.Module,
        flow: nn.Module,
        objective: nn.Module | None,
        *,
        sigma_min: float,
        time_sampling: str,
        cfg_indicator: float,
        enc_weight: float,
        kl_weight: float,
        kl: str,
    ) -> None:
        super().__init__()
        self.ve, self.flow, self.objective = ve, flow, objective
        self.time_sampling, self.cfg_indicator = time_sampling, cfg_indicator
        self.enc_weight, self.kl_weight, self.kl = enc_weight, kl_weight, kl
        self.path = CrossFlowPath(sigma_min)

    @classmethod
    def from_recipe(cls, recipe: Recipe, spec: dict, latent_shape: tuple[int, int, int]) -> CrossFlowSystem:
        """The system a recipe describes, for a source of shape facts `spec` and the target's latent shape."""
        ve = build_ve(recipe.ve, spec, latent_shape)
        flow = build_flow_model(recipe.model, latent_shape, cond_channels(recipe.ve, latent_shape))
        objective = build_objective(recipe.ve, spec, latent_shape)
        f, v = recipe.flow, recipe.ve
        return cls(
            ve,
            flow,
            objective,
            sigma_min=f.sigma_min,
            time_sampling=f.time_sampling,
            cfg_indicator=f.cfg_indicator,
            enc_weight=v.enc_weight,
            kl_weight=v.kl_weight,
            kl=v.kl,
        )

    def forward(self, batch: Batch, phase: Phase = "joint") -> LossOutput:
        """All loss terms for one batch; terms a phase does not train are zero."""
        x1 = batch.target
        zero = x1.new_zeros(())
        enc, kl = zero, zero
        if phase == "flow":
            with torch.no_grad():
                ve_out = self.ve(batch.source)
        else:
            ve_out = self.ve(batch.source)
            if self.objective is not None:
                enc = self.objective(ve_out, batch.source, x1)
            if ve_out.logvar is not None:
                kl = kl_loss(ve_out.mu, ve_out.logvar, self.kl)
        if phase == "ve":
            fm = zero
        else:
            b = x1.shape[0]
            indicator, perm = null_pairs(b, self.cfg_indicator, None)
            indicator, perm = indicator.to(x1.device), perm.to(x1.device)
            t = sample_time(b, self.time_sampling, None, x1.device)
            sample = self.path.sample(ve_out.z0, x1[perm], t)
            pred = self.flow(sample.xt, sample.t, indicator, ve_out.cond)
            fm = flow_matching_loss(pred.float(), sample.target.float())
        total = fm + self.enc_weight * enc + self.kl_weight * kl
        return LossOutput(total=total, fm=fm, enc=enc, kl=kl)
