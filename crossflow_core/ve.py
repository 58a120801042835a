"""Text Variational Encoder (VE): LM token embeddings -> a Gaussian over image-latent space.

The VE turns the frozen language model's tokens [B, L, D] into mu and log sigma^2 with
exactly the image latent's shape [B, C, H, W]; the flow's source is z0 = mu + sigma * eps.
Shape of the computation: a linear input projection (the official code has none for CLIP:
its width is the LM's), `depth` post-LN transformer encoder layers with a padding mask, then
`reduce_layers` reduction stages, the L tokens flattened, and one linear layer to 2 * C*H*W.

A reduction stage (`reduction="encoder"`, the official TransEncoder's EncoderReductionLayer)
is a full post-LN encoder layer at the current width (attention + FFN, same heads and FFN size,
the padding mask) followed by a Linear halving the width, with no activation. `"linear"` is
the lighter Linear + GELU stage of models exported before it (the constructor's default, so
their stored arguments rebuild them; recipes choose with `ve.reduction`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

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


REDUCTIONS: tuple[str, ...] = ("encoder", "linear")


def _post_ln_layer(width: int, heads: int, ffn: int, dropout: float) -> nn.TransformerEncoderLayer:
    """One post-LN encoder layer (attention + ReLU FFN), tokens [B, L, width] batch-first."""
    return nn.TransformerEncoderLayer(
        d_model=width,
        nhead=heads,
        dim_feedforward=ffn,
        dropout=dropout,
        activation="relu",
        batch_first=True,
        norm_first=False,
    )


class _ReductionStage(nn.Module):
    """The official reduction stage: tokens [B, L, d] -> an encoder layer -> Linear -> [B, L, d/2]."""

    def __init__(self, width: int, heads: int, ffn: int, dropout: float) -> None:
        super().__init__()
        self.layer = _post_ln_layer(width, heads, ffn, dropout)
        self.halve = nn.Linear(width, width // 2)

    def forward(self, h: Tensor, pad: Tensor) -> Tensor:
        """h [B, L, d]; pad [B, L] bool, True = padding (never attended to)."""
        return self.halve(self.layer(h, src_key_padding_mask=pad))


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
        reduction: Literal["encoder", "linear"] = "linear",
    ) -> None:
        super().__init__()
        if width % heads:
            raise CrossflowError(f"the VE width {width} must be divisible by its {heads} heads")
        if width >> reduce_layers < 1:
            raise CrossflowError(f"{reduce_layers} reduction layers halve the VE width {width} below 1")
        if reduction not in REDUCTIONS:
            raise CrossflowError(f"unknown VE reduction {reduction!r}; choose one of {', '.join(REDUCTIONS)}")
        if reduction == "encoder" and (width >> max(reduce_layers - 1, 0)) % heads:
            raise CrossflowError(
                f"encoder reduction stages attend at widths down to {width >> max(reduce_layers - 1, 0)}, "
                f"not divisible by {heads} heads: use fewer reduction layers or heads"
            )
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
            reduction=reduction,
        )
        self.reduction = reduction
        self.latent_shape = tuple(latent_shape)
        self.num_tokens = num_tokens
        self.input_proj = nn.Linear(token_dim, width)
        self.pos_embed = nn.Parameter(torch.zeros(1, num_tokens, width))
        nn.init.normal_(self.pos_embed, std=0.02)
        self.encoder = nn.TransformerEncoder(
            _post_ln_layer(width, heads, ffn, dropout), num_layers=depth, enable_nested_tensor=False
        )
        if reduction == "encoder":
            self.reduce = nn.ModuleList(
                _ReductionStage(width >> k, heads, ffn, dropout) for k in range(reduce_layers)
            )
        else:
            stages: list[nn.Module] = []
            for k in range(reduce_layers):
                stages += [nn.Linear(width >> k, width >> (k + 1)), nn.GELU()]
            self.reduce = nn.Sequential(*stages)
        width >>= reduce_layers
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
        if self.reduction == "encoder":
            for stage in self.reduce:
                h = stage(h, pad)
            h = h.masked_fill(pad.unsqueeze(-1), 0.0)  # padding positions carry nothing
        else:
            h = self.reduce(h.masked_fill(pad.unsqueeze(-1), 0.0))
        h = h.flatten(1)
        mu, logvar = self.to_moments(h).chunk(2, dim=1)
        mu = mu.view(batch, *self.latent_shape)
        logvar = logvar.view(batch, *self.latent_shape)
        if noise is None:
            noise = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
        z0 = mu + torch.exp(0.5 * logvar) * noise
        return VEOutput(z0=z0, mu=mu, logvar=logvar)
