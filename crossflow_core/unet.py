"""The convolutional velocity network: a U-Net with self-attention at low resolution.

Built on diffusers' `UNet2DModel` (residual conv blocks, GroupNorm, attention blocks where
`unet_attention` says, a mid block with attention). Like the DiT it never sees text: its only
conditioning is the time t and the CFG indicator (1 = the target belongs to the source z0,
0 = unconditional pair), a learned 2-way embedding added to the time embedding
(`num_class_embeds=2`, the same design as the official DiT variant's indicator).

`global_read` (model.unet_global_read): a Linear over the whole flattened input x_t, added to the
time embedding, so every residual block sees a global summary of x_t from the first layer on (a
DiT has this through attention; the U-Net's first levels only see 3x3 neighbourhoods, while the
VE spreads the text over z0 with no spatial layout). It reads x_t, never the text: the network
stays v(x_t, t), and the size of x is then fixed to the latent shape.

`layout_read` (model.unet_layout_read = K > 0): a Linear over the whole flattened x_t to a K-channel
map at the lowest level's resolution (H / 2^(levels-1)), upsampled (nearest) to H x W and
concatenated to x as K more input channels: the global read gives every block the same per-channel
bias, this one a layout, so a code with no spatial order can say where, not only what. Zero-
initialised (the network starts as without it); it also reads only x_t and fixes the latent size.

Time convention: t in [0, 1], t = 0 the source (text latent), t = 1 the target (image latent);
the U-Net's sinusoidal time features see 1000*t, as the DiT's do.

The attention blocks run `SpatialAttention`, diffusers' `AttnProcessor2_0` maths laid out for speed
(benchmarks/step_speed.md measures it, tests/test_speed.py checks that outputs and gradients agree).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from crossflow_core.errors import CrossflowError
from crossflow_core.path import batch_times


def _norm_groups(channels: tuple[int, ...]) -> int:
    """The GroupNorm group count: the largest divisor of every level's channels, at most 32."""
    return math.gcd(32, *channels)


def matmul_attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """softmax(q k^T / sqrt(d)) v for q, k, v [B, heads, N, d] as two batched matmuls around a
    float32 softmax (its probabilities back in v's dtype)."""
    scores = (q * q.shape[-1] ** -0.5) @ k.transpose(-1, -2)
    return torch.softmax(scores, dim=-1, dtype=torch.float32).to(v.dtype) @ v


def use_matmul_attention(x: Tensor) -> bool:
    """Where `matmul_attention` beats F.scaled_dot_product_attention: CPU tensors in bf16 / fp16
    (PyTorch's fused CPU kernel, its backward above all, is several times slower there for the
    U-Net's short H*W sequences); fp32 and CUDA keep the fused kernel."""
    return x.device.type == "cpu" and x.dtype in (torch.bfloat16, torch.float16)


class SpatialAttention:
    """A diffusers attention processor for self-attention over a feature map [B, C, H, W], with the
    maths of `AttnProcessor2_0` (GroupNorm, q/k/v projections, softmax(q k^T / sqrt(d)) v, output
    projection, residual, rescale) and three changes of layout, not of maths:

    - q, k and v come from one matmul with the three projections' weights concatenated;
    - the attention is `matmul_attention` where `use_matmul_attention` says (`kernel="auto"`),
      else F.scaled_dot_product_attention; `kernel` "sdpa" / "matmul" force one;
    - the output map is contiguous (NCHW). diffusers returns a transposed view, whose
      channels-last strides then spread into the next blocks (slow channels-last GroupNorms).

    Anything else (masks, cross-attention, extra norms) goes to `AttnProcessor2_0` unchanged."""

    def __init__(self, kernel: str = "auto") -> None:
        if kernel not in ("auto", "sdpa", "matmul"):
            raise ValueError(f"unknown attention kernel {kernel!r}: auto, sdpa or matmul")
        self.kernel = kernel

    def __call__(
        self,
        attn: nn.Module,
        hidden_states: Tensor,
        encoder_hidden_states: Tensor | None = None,
        attention_mask: Tensor | None = None,
        temb: Tensor | None = None,
        *args,
        **kwargs,
    ) -> Tensor:
        projections = (attn.to_q, attn.to_k, attn.to_v)
        plain = (
            hidden_states.dim() == 4
            and encoder_hidden_states is None
            and attention_mask is None
            and getattr(attn, "spatial_norm", None) is None
            and getattr(attn, "norm_q", None) is None
            and getattr(attn, "norm_k", None) is None
            and all(isinstance(m, nn.Linear) for m in projections)
            and len({m.bias is None for m in projections}) == 1
            and not args
            and not kwargs
        )
        if not plain:
            from diffusers.models.attention_processor import AttnProcessor2_0

            fallback = AttnProcessor2_0()
            return fallback(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)
        residual = hidden_states
        b, c, h, w = hidden_states.shape
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states)
        x = hidden_states.reshape(b, c, h * w).transpose(1, 2)  # [B, N, C]
        weight = torch.cat([m.weight for m in projections])
        bias = None if attn.to_q.bias is None else torch.cat([m.bias for m in projections])
        q, k, v = F.linear(x, weight, bias).split([m.out_features for m in projections], dim=-1)
        q, k, v = (y.reshape(b, h * w, attn.heads, -1).transpose(1, 2) for y in (q, k, v))  # [B, heads, N, d]
        matmul = self.kernel == "matmul" or self.kernel == "auto" and use_matmul_attention(q)
        out = matmul_attention(q, k, v) if matmul else F.scaled_dot_product_attention(q, k, v)
        out = out.transpose(1, 2).reshape(b, h * w, -1).to(q.dtype)
        out = attn.to_out[1](attn.to_out[0](out))  # projection, dropout
        out = out.transpose(1, 2).reshape(b, c, h, w).contiguous()
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


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
        global_read: bool = False,
        time_modulation: str = "add",
        layout_read: int = 0,
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
            global_read=global_read,
            time_modulation=time_modulation,
            layout_read=layout_read,
        )
        if time_modulation not in ("add", "scale_shift"):
            raise CrossflowError(f"unknown time_modulation {time_modulation!r}; use add or scale_shift")
        if layout_read < 0:
            raise CrossflowError(f"model.unet_layout_read must be >= 0 channels, got {layout_read}")
        unet_channels, unet_attention = tuple(channels), tuple(attention)
        channels, height, width = latent_shape
        levels = len(unet_channels)
        self.factor = factor = 2 ** (levels - 1)
        self.cond_channels = cond_channels
        if height % factor or width % factor:
            raise CrossflowError(
                f"latent size {height}x{width} is not divisible by {factor}, which "
                f"{levels} U-Net levels (model.unet_channels) need: use fewer levels"
            )
        self.latent_shape = tuple(latent_shape)
        self.unet = UNet2DModel(
            sample_size=(height, width),
            in_channels=channels + cond_channels + layout_read,
            out_channels=channels,
            block_out_channels=unet_channels,
            layers_per_block=layers,
            down_block_types=tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in unet_attention),
            up_block_types=tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(unet_attention)),
            attention_head_dim=head_dim,
            norm_num_groups=_norm_groups(unet_channels),
            # with a global read the indicator embedding and the read are summed here and added
            # to the time embedding through diffusers' "identity" class embedding
            num_class_embeds=None if global_read else 2,
            class_embed_type="identity" if global_read else None,
            # "add": the embedding is a per-channel bias in each residual block; "scale_shift":
            # it scales and shifts the block's normalised features (AdaGN)
            resnet_time_scale_shift="default" if time_modulation == "add" else "scale_shift",
        )
        self.global_read: nn.Linear | None = None
        if global_read:
            embed_dim = 4 * unet_channels[0]  # UNet2DModel's time embedding width
            self.indicator_embedding = nn.Embedding(2, embed_dim)
            self.global_read = nn.Linear(channels * height * width, embed_dim)
            nn.init.zeros_(self.global_read.weight)  # starts as the plain U-Net
            nn.init.zeros_(self.global_read.bias)
        self.layout_read: nn.Linear | None = None
        if layout_read:
            self.layout_shape = (layout_read, height // factor, width // factor)
            self.layout_read = nn.Linear(channels * height * width, math.prod(self.layout_shape))
            nn.init.zeros_(self.layout_read.weight)  # starts as without it
            nn.init.zeros_(self.layout_read.bias)
        self.set_attention("auto")

    @property
    def reads_all_of_x(self) -> bool:
        """True when a Linear reads the whole x_t (global or layout read): the size is then fixed."""
        return self.global_read is not None or self.layout_read is not None

    def set_attention(self, kernel: str) -> None:
        """The attention blocks' processor: `SpatialAttention(kernel)` for "auto" (the default) /
        "sdpa" / "matmul", or "diffusers" for diffusers' own `AttnProcessor2_0` (a speed choice
        only: not saved, the weights are the same)."""
        from diffusers.models.attention_processor import Attention, AttnProcessor2_0

        processor = AttnProcessor2_0() if kernel == "diffusers" else SpatialAttention(kernel)
        for module in self.unet.modules():
            if isinstance(module, Attention):
                module.set_processor(processor)

    def accepts(self, height: int, width: int) -> str | None:
        """None when a latent of this size can pass the network, else why not."""
        if self.reads_all_of_x and (height, width) != self.latent_shape[1:]:
            size = "x".join(map(str, self.latent_shape[1:]))
            read = "global read (model.unet_global_read)"
            if self.global_read is None:
                read = "layout read (model.unet_layout_read)"
            return f"its {read} takes {size} latents only"
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
        if self.reads_all_of_x and (h, w) != self.latent_shape[1:]:
            raise CrossflowError(f"a {h}x{w} latent cannot pass this U-Net: {self.accepts(h, w)}")
        if self.global_read is not None:
            labels = self.indicator_embedding(indicator.long()) + self.global_read(x.flatten(1))
        else:
            labels = indicator.long()
        inputs = [x]
        if self.cond_channels:
            inputs.append(cond.to(x.dtype))
        if self.layout_read is not None:
            layout = self.layout_read(x.flatten(1)).reshape(b, *self.layout_shape)  # [B, K, H/f, W/f]
            inputs.append(F.interpolate(layout, scale_factor=self.factor, mode="nearest").to(x.dtype))
        if len(inputs) > 1:
            x = torch.cat(inputs, dim=1)
        return self.unet(x, 1000.0 * t, class_labels=labels).sample
