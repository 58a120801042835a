"""The velocity network: a DiT-style transformer over latent patches, no cross-attention.

The model never sees text. Its only conditioning is the time t and the CFG indicator
(1 = the target belongs to the source z0, 0 = unconditional pair), a learned 2-way
embedding added to the time embedding (the official DiT variant). Blocks use adaLN-Zero.

Time convention: t in [0, 1], t = 0 the source (text latent), t = 1 the target (image latent).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from crossflow_core.errors import CrossflowError
from crossflow_core.path import batch_times
from crossflow_core.recipe import ModelConfig


@dataclass(frozen=True)
class ModelSize:
    width: int
    depth: int
    heads: int


SIZES: dict[str, ModelSize] = {
    "tiny": ModelSize(width=192, depth=6, heads=6),
    "small": ModelSize(width=384, depth=12, heads=6),
    "base": ModelSize(width=768, depth=12, heads=12),
    "large": ModelSize(width=1024, depth=24, heads=16),
    "xl": ModelSize(width=1152, depth=28, heads=16),
    # the official DiT_H/2: 1.07B with patch 2 on 4x32x32 (the paper's 0.95B is its DiMR model)
    "huge": ModelSize(width=1280, depth=36, heads=20),
}


def resolve_size(cfg: ModelConfig) -> ModelSize:
    """The registry size with the recipe's explicit width/depth/heads overrides applied."""
    base = SIZES[cfg.size]
    size = ModelSize(
        width=cfg.width or base.width, depth=cfg.depth or base.depth, heads=cfg.heads or base.heads
    )
    if size.width % size.heads:
        raise CrossflowError(
            f"model width {size.width} must be divisible by model.heads={size.heads}: change model.heads"
        )
    return size


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal features of 1000*t: t [B] in [0, 1] -> [B, dim]."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device) / half)
    args = 1000.0 * t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    return F.pad(emb, (0, dim % 2))


def sincos_2d(width: int, grid_h: int, grid_w: int) -> Tensor:
    """Fixed 2-D sine-cosine position embedding [grid_h * grid_w, width]."""
    if width % 4:
        raise CrossflowError(f"model.width={width} must be divisible by 4 (2-D position embedding)")
    quarter = width // 4
    omega = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float64) / quarter)
    ys, xs = torch.meshgrid(
        torch.arange(grid_h, dtype=torch.float64), torch.arange(grid_w, dtype=torch.float64), indexing="ij"
    )
    out_y = ys.reshape(-1, 1) * omega[None]
    out_x = xs.reshape(-1, 1) * omega[None]
    emb = torch.cat([out_x.sin(), out_x.cos(), out_y.sin(), out_y.cos()], dim=1)
    return emb.float()


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


class DiTBlock(nn.Module):
    """Self-attention + MLP, each gated and modulated by the conditioning (adaLN-Zero)."""

    def __init__(self, width: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.norm2 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        hidden = int(width * mlp_ratio)
        self.mlp = nn.Sequential(
            nn.Linear(width, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, width)
        )
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(width, 6 * width))

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        """x [B, N, W], c [B, W] -> [B, N, W]."""
        shift1, scale1, gate1, shift2, scale2, gate2 = self.ada(c).chunk(6, dim=1)
        b, n, w = x.shape
        h = modulate(self.norm1(x), shift1, scale1)
        q, k, v = self.qkv(h).view(b, n, 3, self.heads, w // self.heads).permute(2, 0, 3, 1, 4)
        h = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, w)
        x = x + gate1.unsqueeze(1) * self.proj(h)
        x = x + gate2.unsqueeze(1) * self.mlp(modulate(self.norm2(x), shift2, scale2))
        return x


class FlowTransformer(nn.Module):
    """v(x [B, C, H, W], t [B], indicator [B] long, cond [B, K, H, W] | None) -> velocity [B, C, H, W].

    `cond` (only with cond_channels = K > 0) is concatenated to x before the patch embedding."""

    def __init__(
        self,
        latent_shape: tuple[int, int, int],
        width: int = 192,
        depth: int = 6,
        heads: int = 6,
        patch_size: int = 4,
        mlp_ratio: float = 4.0,
        long_skips: bool = False,
        final_conv: bool = False,
        cond_channels: int = 0,
    ) -> None:
        super().__init__()
        self.init_args = dict(
            latent_shape=list(latent_shape),
            width=width,
            depth=depth,
            heads=heads,
            patch_size=patch_size,
            mlp_ratio=mlp_ratio,
            long_skips=long_skips,
            final_conv=final_conv,
            cond_channels=cond_channels,
        )
        channels, height, width_px = latent_shape
        p = patch_size
        if height % p or width_px % p:
            raise CrossflowError(
                f"latent size {height}x{width_px} is not divisible by model.patch_size={p}: "
                "choose a patch size that divides it"
            )
        size = ModelSize(width=width, depth=depth, heads=heads)
        self.latent_shape = tuple(latent_shape)
        self.patch_size = p
        self.cond_channels = cond_channels
        self.grid = (height // p, width_px // p)
        w = size.width
        self.patch_embed = nn.Conv2d(channels + cond_channels, w, kernel_size=p, stride=p)
        self.register_buffer("pos_embed", sincos_2d(w, *self.grid)[None], persistent=False)
        self.time_mlp = nn.Sequential(nn.Linear(256, w), nn.SiLU(), nn.Linear(w, w))
        self.indicator_embed = nn.Embedding(2, w)
        self.blocks = nn.ModuleList(DiTBlock(w, size.heads, mlp_ratio) for _ in range(size.depth))
        n_skips = size.depth // 2 if long_skips else 0
        self.skips = nn.ModuleList(nn.Linear(2 * w, w) for _ in range(n_skips))
        self.final_conv = nn.Conv2d(channels, channels, 3, padding=1) if final_conv else None
        self.final_norm = nn.LayerNorm(w, elementwise_affine=False, eps=1e-6)
        self.final_ada = nn.Sequential(nn.SiLU(), nn.Linear(w, 2 * w))
        self.final_proj = nn.Linear(w, p * p * channels)
        self._init_weights()

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        nn.init.xavier_uniform_(self.patch_embed.weight.view(self.patch_embed.weight.shape[0], -1))
        nn.init.zeros_(self.patch_embed.bias)
        nn.init.normal_(self.time_mlp[0].weight, std=0.02)
        nn.init.normal_(self.time_mlp[2].weight, std=0.02)
        nn.init.normal_(self.indicator_embed.weight, std=0.02)
        for block in self.blocks:
            nn.init.zeros_(block.ada[-1].weight)
            nn.init.zeros_(block.ada[-1].bias)
        nn.init.zeros_(self.final_ada[-1].weight)
        nn.init.zeros_(self.final_ada[-1].bias)
        nn.init.zeros_(self.final_proj.weight)
        nn.init.zeros_(self.final_proj.bias)
        for skip in self.skips:  # start as a plain DiT: pass h through, ignore the skip
            w = skip.weight.shape[0]
            nn.init.zeros_(skip.weight)
            skip.weight.data[:, :w] = torch.eye(w)
        if self.final_conv is not None:  # start as the identity
            nn.init.zeros_(self.final_conv.weight)
            nn.init.zeros_(self.final_conv.bias)
            for ch in range(self.final_conv.weight.shape[0]):
                self.final_conv.weight.data[ch, ch, 1, 1] = 1.0

    def accepts(self, height: int, width: int) -> str | None:
        """None when a latent of this size can pass the network, else why not (fixed position grid)."""
        if (height, width) != tuple(self.latent_shape[1:]):
            return (
                f"this transformer was trained on {self.latent_shape[1]}x{self.latent_shape[2]} latents only"
            )
        return None

    def forward(self, x: Tensor, t: Tensor, indicator: Tensor, cond: Tensor | None = None) -> Tensor:
        b = x.shape[0]
        t = batch_times(t, b)
        if self.cond_channels:
            x = torch.cat([x, cond.to(x.dtype)], dim=1)
        h = self.patch_embed(x).flatten(2).transpose(1, 2) + self.pos_embed
        c = self.time_mlp(timestep_embedding(t, 256).to(h.dtype)) + self.indicator_embed(indicator.long())
        depth, saved = len(self.blocks), []
        for i, block in enumerate(self.blocks):
            j = depth - 1 - i  # the mirror block whose input is saved for this one
            if j < len(self.skips) < i + 1:
                h = self.skips[j](torch.cat([h, saved.pop()], dim=-1))
            h = block(h, c)
            if i < len(self.skips):
                saved.append(h)
        shift, scale = self.final_ada(c).chunk(2, dim=1)
        out = self._unpatchify(self.final_proj(modulate(self.final_norm(h), shift, scale)))
        return self.final_conv(out) if self.final_conv is not None else out

    def _unpatchify(self, h: Tensor) -> Tensor:
        """[B, N, p*p*C] -> [B, C, H, W]."""
        c, p = self.latent_shape[0], self.patch_size
        gh, gw = self.grid
        h = h.view(h.shape[0], gh, gw, p, p, c)
        return torch.einsum("bhwpqc->bchpwq", h).reshape(h.shape[0], c, gh * p, gw * p)


def build_flow_model(
    cfg: ModelConfig, latent_shape: tuple[int, int, int], cond_channels: int = 0
) -> nn.Module:
    """The recipe's velocity network: `FlowTransformer` (arch "dit") or `FlowUNet` (arch "unet").

    Both map (x [B, C, H, W], t [B], indicator [B], cond [B, K, H, W] | None) -> velocity [B, C, H, W]."""
    if cfg.arch == "unet":
        from crossflow_core.unet import FlowUNet

        return FlowUNet(
            latent_shape,
            channels=tuple(cfg.unet_channels),
            layers=cfg.unet_layers,
            attention=tuple(cfg.unet_attention),
            head_dim=cfg.unet_head_dim,
            cond_channels=cond_channels,
            global_read=cfg.unet_global_read,
            time_modulation=cfg.unet_time_modulation,
            layout_read=cfg.unet_layout_read,
        )
    size = resolve_size(cfg)
    return FlowTransformer(
        latent_shape,
        width=size.width,
        depth=size.depth,
        heads=size.heads,
        patch_size=cfg.patch_size,
        mlp_ratio=cfg.mlp_ratio,
        long_skips=cfg.long_skips,
        final_conv=cfg.final_conv,
        cond_channels=cond_channels,
    )
