"""Text Variational Encoder (VE): LM token embeddings -> a Gaussian over image-latent space.

The VE turns the frozen language model's tokens [B, L, D] into mu and log sigma^2 with
exactly the image latent's shape [B, C, H, W]; the flow's source is z0 = mu + sigma * eps.
Shape of the computation (as in the official TransEncoder): a linear input projection,
post-LN transformer encoder layers with a padding mask, `reduce_layers` linear layers that
each halve the token width, the L tokens flattened, and one linear layer to 2 * C*H*W.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from crossflow_core.codecs.base import SourceBatch
from crossflow_core.errors import CrossflowError


@dataclass(frozen=True)
class VEOutput:
    """z0: the flow's source sample; mu, logvar: its Gaussian (logvar None when the encoder is
    deterministic); cond: extra input of the velocity network (None for CrossFlow). [B, C, H, W]."""

    z0: Tensor
    mu: Tensor
    logvar: Tensor | None = None
    cond: Tensor | None = None


class TextVariationalEncoder(nn.Module):
    """tokens [B, L, D] + mask [B, L] (True = real token) -> `VEOutput` with the latent shape."""

    def __init__(
        self,
        token_dim: int,
        num_tokens: int,
        latent_shape: tuple[int, int, int],
        width: int = 128,
        depth: int = 2,
        heads: int = 4,
        ffn: int = 256,
        dropout: float = 0.1,
        reduce_layers: int = 2,
    ) -> None:
        super().__init__()
        if width % heads:
            raise CrossflowError(f"the VE width {width} must be divisible by its {heads} heads")
        if width >> reduce_layers < 1:
            raise CrossflowError(f"{reduce_layers} reduction layers halve the VE width {width} below 1")
        self.init_args = dict(
            token_dim=token_dim,
            num_tokens=num_tokens,
            latent_shape=list(latent_shape),
            width=width,
            depth=depth,
            heads=heads,
            ffn=ffn,
            dropout=dropout,
            reduce_layers=reduce_layers,
        )
        self.latent_shape = tuple(latent_shape)
        self.num_tokens = num_tokens
        self.input_proj = nn.Linear(token_dim, width)
        self.pos_embed = nn.Parameter(torch.zeros(1, num_tokens, width))
        nn.init.normal_(self.pos_embed, std=0.02)
        layer = nn.TransformerEncoderLayer(
            d_model=width,
            nhead=heads,
            dim_feedforward=ffn,
            dropout=dropout,
            activation="relu",
            batch_first=True,
            norm_first=False,
        )
        self.encoder = nn.TransformerEncoder(layer, num_layers=depth, enable_nested_tensor=False)
        reduce: list[nn.Module] = []
        for _ in range(reduce_layers):
            reduce += [nn.Linear(width, width // 2), nn.GELU()]
            width //= 2
        self.reduce = nn.Sequential(*reduce)
        latent_numel = math.prod(latent_shape)
        self.to_moments = nn.Linear(num_tokens * width, 2 * latent_numel)

    def noise_shape(self, source: SourceBatch) -> tuple[int, ...] | None:
        """Shape of one sample's eps (the latent shape)."""
        return self.latent_shape

    def forward(
        self,
        source: SourceBatch,
        noise: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> VEOutput:
        """Encode; `noise` [B, C, H, W] (or drawn from `generator`) gives z0 = mu + sigma * noise."""
        tokens, mask = source.x, source.mask
        batch, length, _ = tokens.shape
        if length != self.num_tokens:
            raise ValueError(f"expected {self.num_tokens} tokens per caption, got {length}")
        if mask is None:
            mask = torch.ones(batch, length, dtype=torch.bool, device=tokens.device)
        h = self.input_proj(tokens.to(self.input_proj.weight.dtype)) + self.pos_embed
        pad = ~mask.bool()
        pad = pad & ~pad.all(dim=1, keepdim=True)  # an all-padding row would give NaNs
        h = self.encoder(h, src_key_padding_mask=pad)
        h = h.masked_fill(pad.unsqueeze(-1), 0.0)
        h = self.reduce(h).flatten(1)
        mu, logvar = self.to_moments(h).chunk(2, dim=1)
        mu = mu.view(batch, *self.latent_shape)
        logvar = logvar.view(batch, *self.latent_shape)
        if noise is None:
            noise = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
        z0 = mu + torch.exp(0.5 * logvar) * noise
        return VEOutput(z0=z0, mu=mu, logvar=logvar)
