"""Target codec "pixels" / "vae": RGB images <-> the latents the flow generates.

Wraps a `LatentSpace` (pixels in [-1, 1], or a frozen diffusers AutoencoderKL). For a VAE,
`prepare` stores the posterior's moments (`moments.npy`, float16 [2C, h, w]: mean, log-variance)
and training draws a latent from them every step (`target.posterior: sample`, the official code's
choice) or takes the mode; datasets prepared before moments were stored hold `latent.npy` (the
mode). Without stored features the latent is encoded from the PNG.
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
    """posterior "sample": a VAE latent is a fresh draw from q(z|x) (torch's global RNG); "mode": its mean."""

    def __init__(self, space: LatentSpace, posterior: str = "mode") -> None:
        self.space, self.posterior = space, posterior
        self.kind = space.identity()["kind"]

    def train_fields(self, stored: tuple[str, ...]) -> tuple[str, ...]:
        for name in ("moments.npy", "latent.npy"):
            if name in stored:
                return (name,)
        return ("png",)

    def precomputed_fields(self) -> tuple[str, ...]:
        return () if self.kind == "pixels" else ("moments.npy",)

    def precompute(self, samples: list[RawSample]) -> dict[str, np.ndarray]:
        if self.kind == "pixels":  # the PNG is the latent
            return {}
        images = np.stack([s.image for s in samples])
        moments = np.concatenate(
            [
                self.space.moments(to_model_range(images[i : i + 32])).cpu().numpy()  # type: ignore[attr-defined]
                for i in range(0, len(images), 32)
            ]
        ).astype(np.float16)
        if not np.isfinite(moments).all():
            raise CrossflowError("VAE moments overflow float16: check the VAE")
        return {"moments.npy": moments}

    def latent_shape(self, size: int) -> tuple[int, int, int]:
        return tuple(self.space.latent_shape(size))  # type: ignore[return-value]

    def from_fields(self, fields: Any, idx: Tensor, device: torch.device) -> Tensor:
        if "moments.npy" in fields:
            moments = fields["moments.npy"][idx].to(device, torch.float32)
            return self.space.from_moments(moments, sample=self.posterior == "sample")  # type: ignore[attr-defined]
        if "latent.npy" in fields:
            return fields["latent.npy"][idx].to(device, torch.float32)
        return self.encode_images(fields["png"][idx], device, sample=self.posterior == "sample")

    @torch.no_grad()
    def encode_images(
        self, images: Tensor | np.ndarray, device: torch.device, sample: bool = False
    ) -> Tensor:
        """uint8 images [B, 3, H, W] or [B, H, W, 3] -> latents [B, C, h, w] float32 (the mode, or a
        posterior draw with `sample`)."""
        return self.space.encode(to_model_range(images).to(device), sample=sample).float()

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
