"""The trainable CrossFlow system (VE + flow network + L_enc head) and its loss step.

The training loop calls `system(batch, phase)` (forward = the loss step) and knows no flow maths.
Phases: "joint" (L_FM + L_enc + lambda*KL, gradients from the flow reach the VE), "ve"
(VE pretraining: L_enc + lambda*KL only) and "flow" (VE frozen: L_FM only, z0 from the frozen VE).
Randomness (t, eps, null pairs, dropout) comes from torch's global RNG, which the
checkpointer saves, so a resumed run replays exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from crossflow_core.guidance import null_pairs
from crossflow_core.losses import flow_matching_loss, kl_loss
from crossflow_core.model import build_flow_model
from crossflow_core.path import CrossFlowPath, sample_time
from crossflow_core.recipe import FlowConfig, ModelConfig, VEConfig
from crossflow_core.ve import TextVariationalEncoder
from crossflow_core.ve_objectives import build_objective

Phase = Literal["joint", "ve", "flow"]


@dataclass(frozen=True)
class Batch:
    """One training batch: image latents [B, C, H, W], text tokens [B, L, D], mask [B, L] bool."""

    image_latents: Tensor
    text_tokens: Tensor
    text_mask: Tensor


@dataclass(frozen=True)
class LossOutput:
    """Scalar loss terms; `total` is what is back-propagated."""

    total: Tensor
    fm: Tensor
    enc: Tensor
    kl: Tensor

    def as_floats(self) -> dict[str, float]:
        return {k: float(getattr(self, k).detach()) for k in ("total", "fm", "enc", "kl")}


@dataclass(frozen=True)
class SystemShapes:
    """The data-dependent shapes a system is built for (stored in exported configs)."""

    latent_shape: tuple[int, int, int]
    num_tokens: int
    token_dim: int


class CrossFlowSystem(nn.Module):
    """ve: tokens -> z0; flow: (z_t, t, indicator) -> velocity; objective: L_enc."""

    def __init__(
        self, ve_cfg: VEConfig, model_cfg: ModelConfig, flow_cfg: FlowConfig, shapes: SystemShapes
    ) -> None:
        super().__init__()
        self.ve_cfg, self.flow_cfg, self.shapes = ve_cfg, flow_cfg, shapes
        self.ve = TextVariationalEncoder(ve_cfg, shapes.token_dim, shapes.num_tokens, shapes.latent_shape)
        self.flow = build_flow_model(model_cfg, shapes.latent_shape)
        self.objective = build_objective(ve_cfg, shapes.latent_shape, shapes.token_dim, shapes.num_tokens)
        self.path = CrossFlowPath(flow_cfg.sigma_min)

    def forward(self, batch: Batch, phase: Phase = "joint") -> LossOutput:
        """All loss terms for one batch; terms a phase does not train are zero."""
        x1 = batch.image_latents
        zero = x1.new_zeros(())
        if phase == "flow":
            with torch.no_grad():
                ve_out = self.ve(batch.text_tokens, batch.text_mask)
            enc, kl = zero, zero
        else:
            ve_out = self.ve(batch.text_tokens, batch.text_mask)
            enc = self.objective(ve_out, batch.text_tokens, batch.text_mask, x1)
            kl = kl_loss(ve_out.mu, ve_out.logvar, self.ve_cfg.kl)
        if phase == "ve":
            fm = zero
        else:
            b = x1.shape[0]
            indicator, perm = null_pairs(b, self.flow_cfg.cfg_indicator, None)
            indicator, perm = indicator.to(x1.device), perm.to(x1.device)
            t = sample_time(b, self.flow_cfg.time_sampling, None, x1.device)
            sample = self.path.sample(ve_out.z0, x1[perm], t)
            pred = self.flow(sample.xt, sample.t, indicator)
            fm = flow_matching_loss(pred.float(), sample.target.float())
        total = fm + self.ve_cfg.enc_weight * enc + self.ve_cfg.kl_weight * kl
        return LossOutput(total=total, fm=fm, enc=enc, kl=kl)
