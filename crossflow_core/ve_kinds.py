"""The encoders that turn a source into the flow's z0, by `ve.kind`, and how to build them.

- "text": `TextVariationalEncoder` (crossflow_core/ve.py), LM tokens -> N(mu, sigma^2).
- "identity": no VE; z0 is the source itself, whose shape already is the target's (SR).
- "image": `ImageVariationalEncoder` (crossflow_core/image_ve.py), an image -> N(mu, sigma^2)
  in the target's latent shape (captioning, depth).
- "noise_concat": the standard flow-matching baseline, not CrossFlow: z0 ~ N(0, I) and the
  source goes to the velocity network as concatenated input channels (`cond`).

Every encoder maps (SourceBatch, noise=None, generator=None) -> `VEOutput` and stores its
constructor arguments in `init_args`, so an exported model rebuilds it without the recipe.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from crossflow_core.codecs.base import SourceBatch
from crossflow_core.errors import CrossflowError
from crossflow_core.image_ve import ImageVariationalEncoder
from crossflow_core.recipe import VEConfig
from crossflow_core.ve import TextVariationalEncoder, VEOutput


class IdentityEncoder(nn.Module):
    """z0 = mu = the source [B, C, H, W] (deterministic, no parameters)."""

    def __init__(self) -> None:
        super().__init__()
        self.init_args: dict = {}

    def noise_shape(self, source: SourceBatch) -> tuple[int, ...] | None:
        return None

    def forward(
        self, source: SourceBatch, noise: Tensor | None = None, generator: torch.Generator | None = None
    ) -> VEOutput:
        return VEOutput(z0=source.x, mu=source.x)


class NoiseConcatEncoder(nn.Module):
    """z0 = eps ~ N(0, I) with the source's shape; the source [B, C, H, W] becomes `cond`."""

    def __init__(self) -> None:
        super().__init__()
        self.init_args: dict = {}

    def noise_shape(self, source: SourceBatch) -> tuple[int, ...] | None:
        return tuple(source.x.shape[1:])

    def forward(
        self, source: SourceBatch, noise: Tensor | None = None, generator: torch.Generator | None = None
    ) -> VEOutput:
        x = source.x
        if noise is None:
            noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        return VEOutput(z0=noise.to(x.dtype), mu=torch.zeros_like(x), cond=x)


ENCODERS: dict[str, type[nn.Module]] = {
    "TextVariationalEncoder": TextVariationalEncoder,
    "ImageVariationalEncoder": ImageVariationalEncoder,
    "IdentityEncoder": IdentityEncoder,
    "NoiseConcatEncoder": NoiseConcatEncoder,
}


def build_ve(cfg: VEConfig, spec: dict, latent_shape: tuple[int, int, int]) -> nn.Module:
    """The encoder `cfg.kind` names, for a source of shape facts `spec` and the target's latent shape."""
    if cfg.kind == "text":
        return TextVariationalEncoder(
            spec["token_dim"],
            spec["num_tokens"],
            latent_shape,
            width=cfg.width,
            depth=cfg.depth,
            heads=cfg.heads,
            ffn=cfg.ffn,
            dropout=cfg.dropout,
            reduce_layers=cfg.reduce_layers,
            reduction=cfg.reduction,
        )
    if cfg.kind == "image":
        return ImageVariationalEncoder(
            spec["channels"], spec["size"], latent_shape, width=cfg.width, depth=cfg.depth
        )
    if cfg.kind == "identity":
        return IdentityEncoder()
    if cfg.kind == "noise_concat":
        return NoiseConcatEncoder()
    raise CrossflowError(f"unknown ve.kind {cfg.kind!r}")


def cond_channels(cfg: VEConfig, latent_shape: tuple[int, int, int]) -> int:
    """Extra input channels the velocity network needs for this encoder's `cond`."""
    return latent_shape[0] if cfg.kind == "noise_concat" else 0
