"""The convolutional velocity network: a U-Net with self-attention at low resolution.

Built on diffusers' `UNet2DModel` (residual conv blocks, GroupNorm, attention blocks where
`unet_attention` says, a mid block with attention). Like the DiT it never sees text: its only
conditioning is the time t and the CFG indicator (1 = the target belongs to the source z0,
0 = unconditional pair), a learned 2-way embedding added to the time embedding
(`num_class_embeds=2`, the same design as the official DiT variant's indicator).

Time convention: t in [0, 1], t = 0 the source (text latent), t = 1 the target (image latent);
the U-Net's sinusoidal time features see 1000*t, as the DiT's do.
"""

from __future__ import annotations

import math

from torch import Tensor, nn

from crossflow_core.errors import CrossflowError
from crossflow_core.path import batch_times
from crossflow_core.recipe import ModelConfig


def _norm_groups(channels: tuple[int, ...]) -> int:
    """The GroupNorm group count: the largest divisor of every level's channels, at most 32."""
    return math.gcd(32, *channels)


class FlowUNet(nn.Module):
    """v(x [B, C, H, W], t [B], indicator [B] long) -> velocity [B, C, H, W]."""

    def __init__(self, cfg: ModelConfig, latent_shape: tuple[int, int, int]) -> None:
        super().__init__()
        from diffusers import UNet2DModel

        channels, height, width = latent_shape
        levels = len(cfg.unet_channels)
        factor = 2 ** (levels - 1)
        if height % factor or width % factor:
            raise CrossflowError(
                f"latent size {height}x{width} is not divisible by {factor}, which "
                f"{levels} U-Net levels (model.unet_channels) need: use fewer levels"
            )
        self.latent_shape = tuple(latent_shape)
        self.unet = UNet2DModel(
            sample_size=(height, width),
            in_channels=channels,
            out_channels=channels,
            block_out_channels=tuple(cfg.unet_channels),
            layers_per_block=cfg.unet_layers,
            down_block_types=tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in cfg.unet_attention),
            up_block_types=tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(cfg.unet_attention)),
            attention_head_dim=cfg.unet_head_dim,
            norm_num_groups=_norm_groups(cfg.unet_channels),
            num_class_embeds=2,
        )

    def forward(self, x: Tensor, t: Tensor, indicator: Tensor) -> Tensor:
        b = x.shape[0]
        t = batch_times(t, b)
        return self.unet(x, 1000.0 * t, class_labels=indicator.long()).sample
