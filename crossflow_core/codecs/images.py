"""Target codec "pixels" / "vae": RGB images <-> the latents the flow generates.

Wraps a `LatentSpace` (pixels in [-1, 1], or a frozen diffusers AutoencoderKL). In training the
latent comes from the stored `latent.npy` when `prepare` precomputed it, else from the PNG.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from crossflow_core.codecs.base import RawSample, TargetCodec
from crossflow_core.encoders.latents import LatentSpace, to_model_range
from crossflow_core.errors import CrossflowError


class ImageTarget(TargetCodec):
    def __init__(self, space: LatentSpace) -> None:
        self.space = space
        self.kind = space.identity()["kind"]

    def train_fields(self, stored: tuple[str, ...]) -> tuple[str, ...]:
        return ("latent.npy",) if "latent.npy" in stored else ("png",)

    def precomputed_fields(self) -> tuple[str, ...]:
        return () if self.kind == "pixels" else ("latent.npy",)

    def precompute(self, samples: list[RawSample]) -> dict[str, np.ndarray]:
        if self.kind == "pixels":  # the PNG is the latent
            return {}
        return {"latent.npy": encode_float16(self.space, np.stack([s.image for s in samples]))}

    def latent_shape(self, size: int) -> tuple[int, int, int]:
        return tuple(self.space.latent_shape(size))  # type: ignore[return-value]

    def from_fields(self, fields: Any, idx: Tensor, device: torch.device) -> Tensor:
        if "latent.npy" in fields:
            return fields["latent.npy"][idx].to(device, torch.float32)
        return self.encode_images(fields["png"][idx], device)

    @torch.no_grad()
    def encode_images(self, images: Tensor | np.ndarray, device: torch.device) -> Tensor:
        """uint8 images [B, 3, H, W] or [B, H, W, 3] -> latents [B, C, h, w] float32."""
        return self.space.encode(to_model_range(images).to(device)).float()

    @torch.no_grad()
    def decode(self, latents: Tensor) -> Tensor:
        return ((self.space.decode(latents).float() + 1) / 2).clamp(0, 1).cpu()

    def identity(self) -> dict[str, Any]:
        return self.space.identity()


def encode_float16(space: LatentSpace, images: np.ndarray, batch_size: int = 32) -> np.ndarray:
    """uint8 [N, H, W, 3] -> float16 latents [N, C, h, w], `batch_size` at a time."""
    z = np.concatenate(
        [
            space.encode(to_model_range(images[i : i + batch_size])).cpu().numpy()
            for i in range(0, len(images), batch_size)
        ]
    ).astype(np.float16)
    if not np.isfinite(z).all():
        raise CrossflowError("image latents overflow float16: check target.scale_factor")
    return z
