"""The trainable CrossFlow system (VE + flow network + L_enc head) and its loss step.

The training loop calls `system(batch, phase)` (forward = the loss step) and knows no flow maths
and no task. Phases: "joint" (L_FM + L_enc + lambda*KL, gradients from the flow reach the VE),
"ve" (VE pretraining: L_enc + lambda*KL only) and "flow" (VE frozen: L_FM only, z0 from the
frozen VE). Randomness (t, eps, null pairs, dropout) comes from torch's global RNG, which the
checkpointer saves, so a resumed run replays exactly.

A trainable target codec (`TargetCodec.trainable()`, the captioning text autoencoder) is held as
the submodule `target`: phase "target" trains it alone on its own loss; in every other phase it is
frozen (eval mode, no grad) and the flow's target x1 is `target.latents(batch.target)`. Without
one, `batch.target` is x1 itself and the system is exactly the fixed-codec one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

from crossflow_core.codecs.base import SourceBatch
from crossflow_core.guidance import null_pairs
from crossflow_core.losses import flow_matching_loss, kl_loss
from crossflow_core.model import build_flow_model
from crossflow_core.path import CrossFlowPath, sample_time
from crossflow_core.recipe import Recipe
from crossflow_core.ve import VEOutput
from crossflow_core.ve_kinds import build_ve, cond_channels
from crossflow_core.ve_objectives import build_objective

Phase = Literal["joint", "ve", "flow", "target"]
TERMS = ("total", "fm", "enc", "kl", "ve_mu_std", "ve_sigma", "target", "target_acc")


@dataclass(frozen=True)
class Batch:
    """One training batch: the source (what the VE reads) and the target latents [B, C, H, W]
    (with a trainable target codec: what its network reads, e.g. a `TextTarget`)."""

    source: SourceBatch
    target: Tensor | Any


@dataclass(frozen=True)
class LossOutput:
    """Scalar loss terms; `total` is what is back-propagated. `target` / `target_acc`: the target
    codec's own loss and quality measure, set in the "target" phase only (else None).
    `ve_mu_std` / `ve_sigma`: the VE's signal (`ve_signal`), detached; None when no VE ran."""

    total: Tensor
    fm: Tensor
    enc: Tensor
    kl: Tensor
    ve_mu_std: Tensor | None = None
    ve_sigma: Tensor | None = None
    target: Tensor | None = None
    target_acc: Tensor | None = None

    def as_floats(self) -> dict[str, float]:
        names = [k for k in TERMS if getattr(self, k) is not None]
        terms = torch.stack([getattr(self, k) for k in names]).detach().float().cpu().tolist()
        return dict(zip(names, terms))


def ve_signal(ve_out: VEOutput) -> tuple[Tensor, Tensor]:
    """How much the source speaks through z0 = mu + sigma * eps, detached scalars: the std of mu
    over the batch (mean over latent elements: ~0 when every input gets the same mu) and the mean
    sigma (0 for a deterministic encoder)."""
    with torch.no_grad():
        mu = ve_out.mu.float()
        mu_std = mu.std(dim=0).mean() if mu.shape[0] > 1 else mu.new_zeros(())
        if ve_out.logvar is None:
            return mu_std, mu.new_zeros(())
        return mu_std, torch.exp(0.5 * ve_out.logvar.float()).mean()


class CrossFlowSystem(nn.Module):
    """ve: source -> z0; flow: (z_t, t, indicator, cond) -> velocity; objective: L_enc (or None);
    target: a trainable target codec's network (or None)."""

    def __init__(
        self,
        ve: nn.Module,
        flow: nn.Module,
        objective: nn.Module | None,
        *,
        sigma_min: float,
        time_sampling: str,
        time_mean: float = 0.0,
        time_std: float = 1.0,
        cfg_indicator: float,
        enc_weight: float,
        kl_weight: float,
        kl: str,
        target: nn.Module | None = None,
    ) -> None:
        super().__init__()
        # a fixed codec (target None) adds no submodule: the system's state_dict is unchanged
        self.ve, self.flow, self.objective, self.target = ve, flow, objective, target
        self.time_sampling, self.cfg_indicator = time_sampling, cfg_indicator
        self.time_mean, self.time_std = time_mean, time_std
        self.enc_weight, self.kl_weight, self.kl = enc_weight, kl_weight, kl
        self.path = CrossFlowPath(sigma_min)

    @classmethod
    def from_recipe(
        cls, recipe: Recipe, spec: dict, latent_shape: tuple[int, int, int], target: nn.Module | None = None
    ) -> CrossFlowSystem:
        """The system a recipe describes, for a source of shape facts `spec` and the target's latent
        shape; `target`: the target codec's trainable network, when it has one."""
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
            time_mean=f.time_mean,
            time_std=f.time_std,
            cfg_indicator=f.cfg_indicator,
            enc_weight=v.enc_weight,
            kl_weight=v.kl_weight,
            kl=v.kl,
            target=target,
        )

    def forward(self, batch: Batch, phase: Phase = "joint") -> LossOutput:
        """All loss terms for one batch; terms a phase does not train are zero."""
        if self.target is not None and phase == "target":
            return self._target_loss(batch.target)
        x1 = batch.target if self.target is None else self.target_latents(batch.target)
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
            t = sample_time(b, self.time_sampling, None, x1.device, self.time_mean, self.time_std)
            sample = self.path.sample(ve_out.z0, x1[perm], t)
            pred = self.flow(sample.xt, sample.t, indicator, ve_out.cond)
            fm = flow_matching_loss(pred.float(), sample.target.float())
        total = fm + self.enc_weight * enc + self.kl_weight * kl
        mu_std, sigma = ve_signal(ve_out)
        return LossOutput(total=total, fm=fm, enc=enc, kl=kl, ve_mu_std=mu_std, ve_sigma=sigma)

    def target_latents(self, target: Any) -> Tensor:
        """x1 [B, C, H, W] from the frozen target network (eval mode, no grad, float32)."""
        net = self.target
        was = net.training
        net.eval()
        try:
            with torch.no_grad():
                return net.latents(target).float()
        finally:
            net.train(was)

    def _target_loss(self, target: Any) -> LossOutput:
        """Phase "target": the target network's own loss only (VE and flow untouched)."""
        out = self.target.loss(target)
        zero = out.loss.new_zeros(())
        return LossOutput(
            total=out.loss, fm=zero, enc=zero, kl=zero, target=out.loss, target_acc=out.accuracy.detach()
        )
