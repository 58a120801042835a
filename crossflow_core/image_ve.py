"""Image Variational Encoder (`ve.kind: image`): an image -> a Gaussian in the target's latent shape.

The paper's captioning and depth tasks start from an image: "an Image Variational Encoder to map
the original image into the shape of a depth map" (or of a text latent). Its architecture is not
given; ours is convolutional: a stem, `depth` residual blocks per level, stride-2 downsampling
(channels doubling up to 4 x `width`) until the side is at most the latent's, an adaptive average
pool to the latent's (h, w), and a 3x3 conv to 2 x C moments. When the latent is larger than the
source (a VAE-latent image to a pixel depth map) the features are upsampled instead.

Its encoding objective (`ve.objective`): `image_reconstruction` (the default of the image tasks;
a small decoder maps z0 back to the source image, MSE, the image analogue of the text VE's
token reconstruction: z0 must keep the image's content) or `target_contrastive` (InfoNCE between
z0 and a tower over the target latent, as the text VE's image-text contrastive loss).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from crossflow_core.codecs.base import SourceBatch
from crossflow_core.ve import VEOutput


def _groups(channels: int) -> int:
    return next(g for g in (32, 16, 8, 4, 2, 1) if channels % g == 0)


class ResBlock(nn.Module):
    """x [B, C, H, W] -> x + conv(SiLU(GN(conv(SiLU(GN(x))))))."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.GroupNorm(_groups(channels), channels),
            nn.SiLU(),
            nn.Conv2d(channels, channels, 3, padding=1),
            nn.GroupNorm(_groups(channels), channels),
            nn.SiLU(),
            nn.Conv2d(channels, channels, 3, padding=1),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


def _levels(side: int, target_side: int) -> int:
    """How many stride-2 downsamplings take `side` to at most `target_side` (0 when already there)."""
    n = 0
    while side > target_side and side > 1:
        side = (side + 1) // 2
        n += 1
    return n


class ImageVariationalEncoder(nn.Module):
    """source x [B, C_in, H, W] -> `VEOutput` with mu, logvar, z0 [B, C, h, w] (the latent shape)."""

    def __init__(
        self,
        in_channels: int,
        in_size: int,
        latent_shape: tuple[int, int, int],
        width: int = 64,
        depth: int = 1,
    ) -> None:
        super().__init__()
        self.init_args = dict(
            in_channels=in_channels,
            in_size=in_size,
            latent_shape=list(latent_shape),
            width=width,
            depth=depth,
        )
        self.latent_shape = tuple(latent_shape)
        channels, h, w = self.latent_shape
        layers: list[nn.Module] = [nn.Conv2d(in_channels, width, 3, padding=1)]
        ch = width
        for _ in range(_levels(in_size, max(h, w))):
            layers += [ResBlock(ch) for _ in range(depth)]
            out = min(2 * ch, 4 * width)
            layers.append(nn.Conv2d(ch, out, 3, stride=2, padding=1))
            ch = out
        layers += [ResBlock(ch) for _ in range(depth)]
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(
            nn.GroupNorm(_groups(ch), ch), nn.SiLU(), nn.Conv2d(ch, 2 * channels, 3, padding=1)
        )

    def noise_shape(self, source: SourceBatch) -> tuple[int, ...] | None:
        return self.latent_shape

    def forward(
        self, source: SourceBatch, noise: Tensor | None = None, generator: torch.Generator | None = None
    ) -> VEOutput:
        """Encode; `noise` [B, C, h, w] (or drawn from `generator`) gives z0 = mu + sigma * noise."""
        x = source.x.to(self.features[0].weight.dtype)
        h = self.features(x)
        size = self.latent_shape[1:]
        if tuple(h.shape[-2:]) != size:
            bigger = h.shape[-2] < size[0] or h.shape[-1] < size[1]
            h = (
                F.interpolate(h, size=size, mode="bilinear", align_corners=False)
                if bigger
                else (F.adaptive_avg_pool2d(h, size))
            )
        mu, logvar = self.head(h).chunk(2, dim=1)
        if noise is None:
            noise = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
        return VEOutput(z0=mu + torch.exp(0.5 * logvar) * noise, mu=mu, logvar=logvar)


class ImageReconstruction(nn.Module):
    """L_enc = MSE between the source image [B, C_in, H, W] and a decoder's reconstruction from z0."""

    def __init__(self, in_channels: int, latent_shape: tuple[int, int, int], width: int, depth: int) -> None:
        super().__init__()
        self.inp = nn.Conv2d(latent_shape[0], width, 3, padding=1)
        self.low = nn.Sequential(*[ResBlock(width) for _ in range(depth)])
        self.high = nn.Sequential(*[ResBlock(width) for _ in range(depth)])
        self.out = nn.Sequential(
            nn.GroupNorm(_groups(width), width), nn.SiLU(), nn.Conv2d(width, in_channels, 3, padding=1)
        )

    def reconstruct(self, z0: Tensor, size: tuple[int, int]) -> Tensor:
        """z0 [B, C, h, w] -> the source's reconstruction [B, C_in, *size]."""
        h = self.low(self.inp(z0))
        if tuple(h.shape[-2:]) != tuple(size):
            h = F.interpolate(h, size=size, mode="bilinear", align_corners=False)
        return self.out(self.high(h))

    def forward(self, ve: VEOutput, source: SourceBatch, target: Tensor) -> Tensor:
        x = source.x
        rec = self.reconstruct(ve.z0.to(self.inp.weight.dtype), tuple(x.shape[-2:]))
        return F.mse_loss(rec.float(), x.float())
