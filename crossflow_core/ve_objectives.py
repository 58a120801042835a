"""The VE's encoding objectives L_enc (PAPER.md, piece 2), best last in the paper's ablation.

- text_reconstruction: decode z0 back to the LM tokens (masked MSE).
- text_text_contrastive: InfoNCE between z0 and the pooled LM tokens of the same caption.
- image VEs (`ve.kind: image`, crossflow_core/image_ve.py): image_reconstruction, or
  target_contrastive (the image-text contrastive module below, its tower over the target latent).
- image_text_contrastive (default): InfoNCE between z0 and features of the paired image latent
  from an image tower trained jointly from scratch (the official code uses a randomly
  initialised SigLIP tower; here a small CNN), projected to the latent size.

Each objective is an `nn.Module` whose forward takes the VE output, the `SourceBatch` (tokens
[B, L, D] + mask [B, L]) and the target latents [B, C, H, W] and returns a scalar loss; its
parameters are trained with the VE and saved in checkpoints.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from crossflow_core.codecs.base import SourceBatch
from crossflow_core.image_ve import ImageReconstruction
from crossflow_core.losses import info_nce, text_reconstruction_loss
from crossflow_core.recipe import VEConfig
from crossflow_core.ve import VEOutput


def logit_multiplier(logit_scale: Tensor, form: str) -> Tensor:
    """The contrastive logits' multiplier from the learned scalar: "exp" -> exp(s) capped at 100
    (CLIP), "raw" -> s itself (the official CrossFlow code, about 2.66 at init)."""
    if form == "raw":
        return logit_scale
    return logit_scale.clamp(max=math.log(100.0)).exp()


class ImageTower(nn.Module):
    """image latents [B, C, H, W] -> features [B, out_dim] (a small CNN, trained from scratch)."""

    def __init__(self, channels: int, width: int, out_dim: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(channels, width, 3, padding=1),
            nn.GELU(),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1),
            nn.GELU(),
            nn.Conv2d(2 * width, 4 * width, 3, stride=2, padding=1),
            nn.GELU(),
            nn.AdaptiveAvgPool2d(4),
            nn.Flatten(),
        )
        self.head = nn.Sequential(nn.Linear(64 * width, 4 * width), nn.GELU(), nn.Linear(4 * width, out_dim))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.net(x))


class ImageTextContrastive(nn.Module):
    def __init__(self, cfg: VEConfig, latent_shape: tuple[int, int, int]) -> None:
        super().__init__()
        numel = math.prod(latent_shape)
        self.tower = ImageTower(latent_shape[0], cfg.image_encoder_width, numel)
        self.logit_scale = nn.Parameter(torch.tensor(cfg.logit_scale_init))
        self.form = cfg.logit_scale_form

    def forward(self, ve: VEOutput, source: SourceBatch, target: Tensor) -> Tensor:
        feats = self.tower(target)
        return info_nce(ve.z0.flatten(1), feats, logit_multiplier(self.logit_scale, self.form))


class TextTextContrastive(nn.Module):
    def __init__(self, cfg: VEConfig, latent_shape: tuple[int, int, int], token_dim: int) -> None:
        super().__init__()
        self.proj = nn.Sequential(
            nn.Linear(token_dim, cfg.width), nn.GELU(), nn.Linear(cfg.width, math.prod(latent_shape))
        )
        self.logit_scale = nn.Parameter(torch.tensor(cfg.logit_scale_init))
        self.form = cfg.logit_scale_form

    def forward(self, ve: VEOutput, source: SourceBatch, target: Tensor) -> Tensor:
        tokens, mask = source.x, source.mask
        m = mask.to(tokens.dtype).unsqueeze(-1)
        pooled = (tokens * m).sum(1) / m.sum(1).clamp(min=1.0)
        feats = self.proj(pooled.to(self.proj[0].weight.dtype))
        return info_nce(ve.z0.flatten(1), feats, logit_multiplier(self.logit_scale, self.form))


class TextReconstruction(nn.Module):
    def __init__(self, cfg: VEConfig, latent_shape: tuple[int, int, int], token_dim: int, num_tokens: int):
        super().__init__()
        self.num_tokens, self.width = num_tokens, cfg.width
        self.expand = nn.Linear(math.prod(latent_shape), num_tokens * cfg.width)
        layer = nn.TransformerEncoderLayer(
            cfg.width, cfg.heads, cfg.ffn, dropout=cfg.dropout, batch_first=True
        )
        self.decoder = nn.TransformerEncoder(layer, num_layers=1, enable_nested_tensor=False)
        self.out = nn.Linear(cfg.width, token_dim)

    def forward(self, ve: VEOutput, source: SourceBatch, target: Tensor) -> Tensor:
        tokens, mask = source.x, source.mask
        h = self.expand(ve.z0.flatten(1)).view(-1, self.num_tokens, self.width)
        pred = self.out(self.decoder(h))
        return text_reconstruction_loss(pred, tokens.to(pred.dtype), mask.bool())


def build_objective(cfg: VEConfig, spec: dict, latent_shape: tuple[int, int, int]) -> nn.Module | None:
    """The `ve.objective` module of the recipe (None when the encoder has nothing to learn)."""
    if cfg.kind == "image":
        if cfg.objective == "image_reconstruction":
            return ImageReconstruction(spec["channels"], latent_shape, cfg.width, cfg.depth)
        return ImageTextContrastive(cfg, latent_shape)  # target_contrastive: a tower over the target
    if cfg.kind != "text":
        return None
    token_dim, num_tokens = spec["token_dim"], spec["num_tokens"]
    if cfg.objective == "image_text_contrastive":
        return ImageTextContrastive(cfg, latent_shape)
    if cfg.objective == "text_text_contrastive":
        return TextTextContrastive(cfg, latent_shape, token_dim)
    return TextReconstruction(cfg, latent_shape, token_dim, num_tokens)
