"""Source codec "upsampled" (super-resolution, paper §5.3): the low-res image, upsampled.

Training pairs are made from the high-res image alone: low-res = anti-aliased bicubic
downsampling by `factor`, rounded to 8 bits (so training sees exactly what a low-res PNG on disk
gives at inference), then bicubic upsampling back to the high-res size, then the target's own
latent space (the identity in pixel space, the VAE encoder in latent space). The source then has
the target's shape, so no VE is needed: the flow carries one straight to the other, with no noise
and no concatenated conditioning.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from crossflow_core.codecs.base import RawSample, SourceBatch, SourceCodec
from crossflow_core.codecs.images import ImageTarget, encode_float16
from crossflow_core.encoders.latents import to_model_range, to_uint8
from crossflow_core.errors import CrossflowError


def downsample(images: Tensor, factor: int) -> Tensor:
    """Anti-aliased bicubic downsampling: float [B, C, H, W] in [-1, 1] -> [B, C, H/f, W/f]."""
    h, w = images.shape[-2:]
    if factor < 1 or h % factor or w % factor:
        raise CrossflowError(
            f"an image of {h}x{w} cannot be downsampled by {factor}: its sides must be multiples of {factor}"
        )
    out = F.interpolate(
        images.float(), size=(h // factor, w // factor), mode="bicubic", antialias=True, align_corners=False
    )
    return out.clamp(-1, 1)


def upsample(images: Tensor, factor: int) -> Tensor:
    """Bicubic upsampling (the bicubic baseline): float [B, C, h, w] in [-1, 1] -> [B, C, h*f, w*f]."""
    h, w = images.shape[-2:]
    out = F.interpolate(images.float(), size=(h * factor, w * factor), mode="bicubic", align_corners=False)
    return out.clamp(-1, 1)


def low_res(images_uint8: Tensor | np.ndarray, factor: int) -> Tensor:
    """uint8 high-res images [B, 3, H, W] (or [B, H, W, 3]) -> uint8 low-res [B, 3, H/f, W/f]."""
    return to_uint8(downsample(to_model_range(images_uint8), factor))


class UpsampledSource(SourceCodec):
    kind = "upsampled"

    def __init__(self, factor: int, target: ImageTarget) -> None:
        self.factor, self.target = int(factor), target

    def train_fields(self, stored: tuple[str, ...]) -> tuple[str, ...]:
        return ("source.npy",) if "source.npy" in stored else ("png",)

    def precomputed_fields(self) -> tuple[str, ...]:
        return () if self.target.kind == "pixels" else ("source.npy",)

    def precompute(self, samples: list[RawSample]) -> dict[str, np.ndarray]:
        if self.target.kind == "pixels":  # computed from the PNG at train time (cheap)
            return {}
        small = low_res(np.stack([s.image for s in samples]), self.factor)
        up = to_uint8(upsample(to_model_range(small), self.factor)).permute(0, 2, 3, 1).numpy()
        return {"source.npy": encode_float16(self.target.space, up)}

    def from_fields(self, fields: Any, idx: Tensor, device: torch.device) -> SourceBatch:
        if "source.npy" in fields:
            return SourceBatch(fields["source.npy"][idx].to(device, torch.float32))
        return self.from_low_res(low_res(fields["png"][idx], self.factor), device)

    def from_low_res(self, small: Tensor, device: torch.device) -> SourceBatch:
        """uint8 low-res images [B, 3, h, w] -> the source in the target's latent space."""
        up = upsample(to_model_range(small).to(device), self.factor)
        with torch.no_grad():
            return SourceBatch(self.target.space.encode(up).float())

    def encode(self, inputs: list[Any], device: torch.device) -> SourceBatch:
        """Low-res uint8 images [h, w, 3], all of one size -> `SourceBatch` [B, C, h*f, w*f]."""
        sizes = {tuple(np.asarray(im).shape) for im in inputs}
        if len(sizes) != 1:
            raise CrossflowError(f"one batch of low-res images must share one size, got {sorted(sizes)}")
        return self.from_low_res(torch.from_numpy(np.stack([np.asarray(im) for im in inputs])), device)

    def spec(self) -> dict[str, Any]:
        return {"factor": self.factor}

    def identity(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "factor": self.factor,
            "downsample": "bicubic-antialias-uint8",
            "upsample": "bicubic",
            "space": self.target.identity(),
        }
