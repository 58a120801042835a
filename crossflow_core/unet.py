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

import torch
from torch import Tensor, nn

from crossflow_core.errors import CrossflowError
from crossflow_core.path import batch_times


def _norm_groups(channels: tuple[int, ...]) -> int:
    """The GroupNorm group count: the largest divisor of every level's channels, at most 32."""
    return math.gcd(32, *channels)


class FlowUNet(nn.Module):
    """v(x [B, C, H, W], t [B], indicator [B] long, cond [B, K, H, W] | None) -> velocity [B, C, H, W].

    Convolutional, so it also runs on other sizes whose sides the levels can halve (upscaling
    images of another size); `cond` (cond_channels = K > 0) is concatenated to x."""

    def __init__(
        self,
        latent_shape: tuple[int, int, int],
        channels: tuple[int, ...] = (32, 64, 128),
        layers: int = 1,
        attention: tuple[bool, ...] = (False, False, True),
        head_dim: int = 32,
        cond_channels: int = 0,
    ) -> None:
        super().__init__()
        from diffusers import UNet2DModel

        self.init_args = dict(
            latent_shape=list(latent_shape),
            channels=list(channels),
            layers=layers,
            attention=list(attention),
            head_dim=head_dim,
            cond_channels=cond_channels,
        )
        unet_channels, unet_attention = tuple(channels), tuple(attention)
        channels, height, width = latent_shape
        levels = len(unet_channels)
        self.factor = 2 ** (levels - 1)
        self.cond_channels = cond_channels
        factor = 2 ** (levels - 1)
        if height % factor or width % factor:
            raise CrossflowError(
                f"latent size {height}x{width} is not divisible by {factor}, which "
                f"{levels} U-Net levels (model.unet_channels) need: use fewer levels"
            )
        self.latent_shape = tuple(latent_shape)
        self.unet = UNet2DModel(
            sample_size=(height, width),
            in_channels=channels + cond_channels,
            out_channels=channels,
            block_out_channels=unet_channels,
            layers_per_block=layers,
            down_block_types=tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in unet_attention),
            up_block_types=tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(unet_attention)),
            attention_head_dim=head_dim,
            norm_num_groups=_norm_groups(unet_channels),
            num_class_embeds=2,
        )

    def accepts(self, height: int, width: int) -> str | None:
        """None when a latent of this size can pass the network, else why not."""
        if height % self.factor or width % self.factor:
            halvings = self.factor.bit_length() - 1
            return f"its sides must be multiples of {self.factor} (the U-Net halves them {halvings} times)"
        return None

    def forward(self, x: Tensor, t: Tensor, indicator: Tensor, cond: Tensor | None = None) -> Tensor:
        b = x.shape[0]
        t = batch_times(t, b)
        h, w = x.shape[-2:]
        if h % self.factor or w % self.factor:
            raise CrossflowError(
                f"a {h}x{w} latent cannot pass {self.factor}x downsampling: "
                f"its sides must be multiples of {self.factor}"
            )
        if self.cond_channels:
            x = torch.cat([x, cond.to(x.dtype)], dim=1)
        return self.unet(x, 1000.0 * t, class_labels=indicator.long()).sample
